"""Moved to ``labvault.store.http.backend``; this path keeps working for one release."""

from labvault._compat import moved

__getattr__ = moved("labvault.backends.http", "labvault.store.http.backend")
