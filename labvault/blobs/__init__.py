"""Blob stores on their own: bytes under keys, chosen by URL, the same API on every store.

    import labvault.blobs

    store = labvault.blobs.open("s3://bucket/prefix?endpoint_url=http://127.0.0.1:8333")
    store.put("data/train.csv", "train.csv")                  # bytes, a path or a binary file (streamed)
    store.put("state.json", b"{}", if_absent=True)            # ConflictError if it exists already
    info = store.info("state.json")                           # BlobInfo(key, size, digest, modified, etag)
    store.put("state.json", b'{"n": 1}', if_match=info.etag)  # compare-and-swap
    with store.open("data/train.csv") as fh: ...
    store.copy("data/train.csv", "archive/train.csv"); store.list("data/"); store.delete("state.json")

Built-in schemes: ``file`` (a directory; bare paths too: parents created, writes atomic), ``memory``
(process-private) and ``s3`` (``s3://bucket/prefix``; see ``labvault.blobs.s3``). Add one with::

    from labvault.blobs import BlobStore

    class MyStore(BlobStore, scheme="mine"):   # AlreadyExistsError if taken, unless replace=True
        ...                                    # implement _put/_open/_exists/_delete/_list, from_url

Keys are relative paths ("a/b.txt": no leading '/', no '..' or empty segments); a bad key raises
``InvalidArgumentError`` naming it. Every error is a ``labvault.errors`` exception.
"""

from __future__ import annotations

import builtins
from typing import Any

from labvault import _registry
from labvault._uri import uri_scheme
from labvault.blobs.abc import BlobSource, BlobStore
from labvault.domain.model import BlobInfo
from labvault.errors import InvalidArgumentError

__all__ = ["BlobInfo", "BlobSource", "BlobStore", "known_schemes", "open", "register", "split_location"]


def open(url: str, **options: Any) -> BlobStore:
    """Open the blob store a URL names: ``file:///dir`` or a bare path, ``memory://``, ``s3://bucket/prefix``.

    ``options`` go to the store's ``from_url`` (e.g. ``part_size=`` for S3). An unknown scheme raises
    ``InvalidArgumentError`` listing the known ones. Construction does no I/O.
    """
    if not isinstance(url, str) or not url:
        raise InvalidArgumentError(f"a blob store URL must be a non-empty string, got {url!r}")
    cls = _registry.blob_store_class(uri_scheme(url, "blob store URL") or "file")
    from_url = getattr(cls, "from_url", None)
    if from_url is None:
        raise InvalidArgumentError(f"blob store {cls.__name__} cannot be opened from a URL")
    store: BlobStore = from_url(url, **options)
    return store


def register(scheme: str, cls: type[BlobStore] | str, *, replace: bool = False) -> None:
    """Serve ``scheme://`` URLs with ``cls`` (a class or a lazy ``"module:Class"`` string)."""
    _registry.register_blob_store(scheme, cls, replace=replace)


def known_schemes() -> builtins.list[str]:
    """Every blob store scheme registered (built in, by subclassing, or by entry point)."""
    return _registry.known_blob_schemes()


def split_location(location: str) -> tuple[str, str] | None:
    """Split ``"URL#KEY"`` into (store URL, key); None for a plain local path (no ``#``).

    ``s3://bucket/prefix#data/x.csv`` -> (``s3://bucket/prefix``, ``data/x.csv``);
    ``file:///srv/blobs#a/b`` -> (``file:///srv/blobs``, ``a/b``). The key is validated by the store.
    """
    if not isinstance(location, str) or not location:
        raise InvalidArgumentError(f"a blob location must be a non-empty string, got {location!r}")
    if "#" not in location:
        return None
    url, _, key = location.rpartition("#")
    if not url or not key:
        raise InvalidArgumentError(f"blob location {location!r} must look like URL#KEY, e.g. s3://bucket#a/b")
    return url, key
