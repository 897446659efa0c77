"""Moved to ``labvault.store.http`` (``backend``, ``credentials``) and ``labvault.blobs.http``; this path
keeps working for one release."""

from labvault._compat import moved

__getattr__ = moved("labvault.backends.http", "labvault.store.http.backend",
                    "labvault.store.http.credentials", "labvault.blobs.http")
