"""Moved to ``labvault.store.objectstore``; this path keeps working for one release."""

from labvault._compat import moved

__getattr__ = moved("labvault.backends.objectstore", "labvault.store.objectstore")
