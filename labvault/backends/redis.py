"""Moved to ``labvault.store.redis.backend``; this path keeps working for one release."""

from labvault._compat import moved

__getattr__ = moved("labvault.backends.redis", "labvault.store.redis.backend")
