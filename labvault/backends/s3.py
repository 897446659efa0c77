"""Moved to ``labvault.blobs.s3``; this path keeps working for one release."""

from labvault._compat import moved

__getattr__ = moved("labvault.backends.s3", "labvault.blobs.s3")
