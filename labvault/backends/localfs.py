"""Moved to ``labvault.blobs.local``, ``labvault._fs``; this path keeps working for one release."""

from labvault._compat import moved

__getattr__ = moved("labvault.backends.localfs", "labvault.blobs.local", "labvault._fs")
