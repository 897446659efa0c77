"""Moved to ``labvault.store.memory``, ``labvault.blobs.memory``; this path keeps working for one release."""

from labvault._compat import moved

__getattr__ = moved("labvault.backends.memory", "labvault.store.memory", "labvault.blobs.memory")
