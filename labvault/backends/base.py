"""Moved to ``labvault.store.abc``, ``labvault.store.feed``, ``labvault.blobs.abc``, ``labvault._uri``;
this path keeps working for one release."""

from labvault._compat import moved

__getattr__ = moved(
    "labvault.backends.base",
    "labvault.store.abc",
    "labvault.store.feed",
    "labvault.blobs.abc",
    "labvault._uri",
)
