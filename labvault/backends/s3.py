"""Moved to ``labvault.blobs.s3`` (its clients in ``labvault.blobs.s3client``, its streams in
``labvault.blobs.s3io``); this path keeps working for one release."""

from labvault._compat import moved

__getattr__ = moved("labvault.backends.s3", "labvault.blobs.s3", "labvault.blobs.s3client",
                    "labvault.blobs.s3io")
