"""Moved to ``labvault.store.file.backend``; this path keeps working for one release."""

from labvault._compat import moved

__getattr__ = moved("labvault.backends.file", "labvault.store.file.backend")
