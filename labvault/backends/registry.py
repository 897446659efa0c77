"""Moved to ``labvault.store.registry``, ``labvault._registry``; this path keeps working for one release."""

from labvault._compat import moved

__getattr__ = moved("labvault.backends.registry", "labvault.store.registry", "labvault._registry")
