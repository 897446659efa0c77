"""Which class serves which URI scheme: the one scheme table of backends and blob stores.

Built-in classes are named by import strings and imported only when a URI asks for them (fsspec's lazy
registry: ``import labvault`` stays fast and needs no driver). Third parties register in three ways:

* subclass with a keyword: ``class MyBackend(Backend, scheme="mine")`` (``BlobStore`` likewise);
* an entry point in the group ``labvault.backends`` (``mine = "pkg.module:MyBackend"``) or
  ``labvault.blobstores``;
* ``labvault.open(config={"module": "pkg.module", ...})`` (see ``labvault.store.registry``).

This module sits below every layer (it imports no backend or store at import time), so both
``BlobStore`` and ``Backend`` subclasses register here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from labvault.errors import AlreadyExistsError, InvalidArgumentError

if TYPE_CHECKING:
    from labvault.blobs.abc import BlobStore
    from labvault.store.abc import Backend


ENTRY_POINT_GROUP = "labvault.backends"


BLOB_ENTRY_POINT_GROUP = "labvault.blobstores"


_BUILTIN_BACKENDS: dict[str, str] = {
    "memory": "labvault.store.memory:MemoryBackend",
    "file": "labvault.store.file.backend:FileBackend",
    "sqlite": "labvault.store.sql.backend:SQLBackend",
    "postgresql": "labvault.store.sql.postgresql:PostgresBackend",
    "postgres": "labvault.store.sql.postgresql:PostgresBackend",
    "postgresql+psycopg": "labvault.store.sql.postgresql:PostgresBackend",
    "postgres+psycopg": "labvault.store.sql.postgresql:PostgresBackend",
    "redis": "labvault.store.redis.backend:RedisBackend",
    "rediss": "labvault.store.redis.backend:RedisBackend",
    "unix": "labvault.store.redis.backend:RedisBackend",
    "http": "labvault.store.http.backend:HTTPBackend",
    "https": "labvault.store.http.backend:HTTPBackend",
    "s3": "labvault.store.objectstore:S3Backend",
    "hat": "labvault.store.hat.backend:HatBackend",
}


_BUILTIN_BLOB_STORES: dict[str, str] = {
    "memory": "labvault.blobs.memory:MemoryBlobStore",
    "file": "labvault.blobs.local:FileBlobStore",
    "s3": "labvault.blobs.s3:S3BlobStore",
}


#: The extra (``pip install 'labvault[<extra>]'``) holding the driver of each built-in scheme that needs
#: one; every name here is an extra of pyproject.toml (tests/test_install_hints.py checks that).
SCHEME_EXTRAS: dict[str, str] = {
    "postgresql": "postgres", "postgres": "postgres", "postgresql+psycopg": "postgres",
    "postgres+psycopg": "postgres", "redis": "redis", "rediss": "redis", "unix": "redis",
    "http": "client", "https": "client", "s3": "s3", "hat": "hat",
}


def install_hint(scheme: str, exc: BaseException) -> str:
    """How to get what a scheme's class could not import: its extra for a built-in scheme, else the
    missing module by name."""
    extra = SCHEME_EXTRAS.get(scheme)
    if extra is not None:
        return f"install its extra: pip install 'labvault[{extra}]'"
    missing = getattr(exc, "name", None) or getattr(exc.__cause__, "name", None)
    return f"install the package that provides {missing or 'it'}"


# scheme -> class or "module:Class" import string
_backends: dict[str, type[Backend] | str] = dict(_BUILTIN_BACKENDS)


_blob_stores: dict[str, type[BlobStore] | str] = dict(_BUILTIN_BLOB_STORES)


_entry_points_loaded = False


def _register(table: dict[str, Any], kind: str, scheme: str, cls: Any, replace: bool) -> None:
    if not isinstance(scheme, str) or not scheme.replace("+", "").replace("-", "").isalnum():
        raise InvalidArgumentError(f"{kind} scheme {scheme!r} must be letters and digits")
    scheme = scheme.lower()
    current = table.get(scheme)
    if current is not None and not replace:
        same = current is cls or (
            isinstance(current, str) and current == f"{cls.__module__}:{cls.__qualname__}"
        )
        if not same:
            raise AlreadyExistsError(
                f"{kind} scheme {scheme!r} is already registered to {_describe(current)}; "
                "pass replace=True to override it"
            )
    table[scheme] = cls


def register_backend(scheme: str, cls: type[Backend] | str, *, replace: bool = False) -> None:
    """Serve URIs of ``scheme`` with ``cls`` (a class or a lazy ``"module:Class"`` string)."""
    _register(_backends, "backend", scheme, cls, replace)


def register_blob_store(scheme: str, cls: type[BlobStore] | str, *, replace: bool = False) -> None:
    """Serve blob URLs of ``scheme`` with ``cls`` (a class or a lazy ``"module:Class"`` string)."""
    _register(_blob_stores, "blob store", scheme, cls, replace)


def unregister_backend(scheme: str) -> None:
    """Forget a scheme (tests and plugins that clean up after themselves)."""
    _backends.pop(scheme.lower(), None)


def _describe(entry: object) -> str:
    return entry if isinstance(entry, str) else f"{entry.__module__}:{getattr(entry, '__qualname__', entry)}"


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points  # lazy: importlib.metadata costs ~25 ms

    for group, table in ((ENTRY_POINT_GROUP, _backends), (BLOB_ENTRY_POINT_GROUP, _blob_stores)):
        for ep in entry_points(group=group):
            table.setdefault(ep.name.lower(), ep.value)


def known_schemes() -> list[str]:
    """Every scheme a backend is registered for."""
    _load_entry_points()
    return sorted(_backends)


def known_blob_schemes() -> list[str]:
    """Every scheme a blob store is registered for."""
    _load_entry_points()
    return sorted(_blob_stores)


def import_object(target: str) -> Any:
    """Import ``"module:attr"`` (or a plain module name) and return the object."""
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidArgumentError(f"cannot import {module_name!r}: {exc}") from exc
    if not attr:
        return module
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise InvalidArgumentError(f"module {module_name!r} has no attribute {attr!r}") from exc
    return obj


def _resolve(table: dict[str, Any], kind: str, scheme: str, known: list[str]) -> Any:
    scheme = scheme.lower()
    entry = table.get(scheme)  # exactly: "git+file" is not "file" (nor "git"), it is unknown
    if entry is None:
        base, plus, variant = scheme.partition("+")
        hint = f" ({base!r} is known, but not {base}+{variant})" if plus and base in table else ""
        raise InvalidArgumentError(
            f"unknown {kind} scheme {scheme!r}{hint}; known schemes: {', '.join(known)}"
        )
    if isinstance(entry, str):
        try:
            entry = import_object(entry)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(
                f"the {kind} for {scheme!r} is not available ({exc}); {install_hint(scheme, exc)}"
            ) from exc
    return entry


def backend_class(scheme: str) -> type[Backend]:
    """The backend class for a URI scheme, importing it on first use."""
    _load_entry_points()
    cls: type[Backend] = _resolve(_backends, "backend", scheme, sorted(_backends))
    return cls


def blob_store_class(scheme: str) -> type[BlobStore]:
    """The blob store class for a URL scheme, importing it on first use."""
    _load_entry_points()
    cls: type[BlobStore] = _resolve(_blob_stores, "blob store", scheme, sorted(_blob_stores))
    return cls
