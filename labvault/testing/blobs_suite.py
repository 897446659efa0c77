"""Moved to ``labvault.testing.blob_suite``; this path keeps working for one release."""

from labvault._compat import moved

__getattr__ = moved("labvault.testing.blobs_suite", "labvault.testing.blob_suite")
