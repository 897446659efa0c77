"""Moved to ``labvault.store.search.columns``; this path keeps working for one release."""

from labvault._compat import moved

__getattr__ = moved("labvault.backends.columns", "labvault.store.search.columns")
