"""Moved to ``labvault.store.search.runindex``; this path keeps working for one release."""

from labvault._compat import moved

__getattr__ = moved("labvault.backends.runindex", "labvault.store.search.runindex")
