"""Which class serves which URI scheme.

Built-in backends are named by import strings and imported only when a URI asks for them (so
``import labvault`` stays fast and needs no driver). Third parties register in three ways:

* subclass with a keyword: ``class MyBackend(Backend, scheme="mine")``;
* an entry point in the group ``labvault.backends`` (``mine = "pkg.module:MyBackend"``);
* ``labvault.open(config={"module": "pkg.module", ...})`` naming a module that exposes
  ``create(config) -> Backend`` (aimm's contract) or ``"pkg.module:ClassName"`` naming a class.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from labvault.errors import AlreadyExistsError, InvalidArgumentError

if TYPE_CHECKING:
    from labvault.backends.base import Backend, BlobStore

ENTRY_POINT_GROUP = "labvault.backends"
BLOB_ENTRY_POINT_GROUP = "labvault.blobstores"

_BUILTIN_BACKENDS: dict[str, str] = {
    "memory": "labvault.backends.memory:MemoryBackend",
    "file": "labvault.backends.file:FileBackend",
    "sqlite": "labvault.backends.sql:SQLBackend",
    "postgresql": "labvault.backends.postgresql:PostgresBackend",
    "postgres": "labvault.backends.postgresql:PostgresBackend",
    "postgresql+psycopg": "labvault.backends.postgresql:PostgresBackend",
    "postgres+psycopg": "labvault.backends.postgresql:PostgresBackend",
    "redis": "labvault.backends.redis:RedisBackend",
    "rediss": "labvault.backends.redis:RedisBackend",
    "unix": "labvault.backends.redis:RedisBackend",
    "http": "labvault.backends.http:HTTPBackend",
    "https": "labvault.backends.http:HTTPBackend",
    "s3": "labvault.backends.objectstore:S3Backend",
}
_BUILTIN_BLOB_STORES: dict[str, str] = {
    "memory": "labvault.backends.memory:MemoryBlobStore",
    "file": "labvault.backends.localfs:FileBlobStore",
    "s3": "labvault.backends.s3:S3BlobStore",
}

# scheme -> class or "module:Class" import string
_backends: dict[str, type[Backend] | str] = dict(_BUILTIN_BACKENDS)
_blob_stores: dict[str, type[BlobStore] | str] = dict(_BUILTIN_BLOB_STORES)
_entry_points_loaded = False

MINIMAL_CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "module": {"type": "string", "minLength": 1},
        "backend": {"type": "string", "minLength": 1},
    },
    "oneOf": [{"required": ["module"]}, {"required": ["backend"]}],
}


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
    from importlib.metadata import entry_points

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
                f"the {kind} for {scheme!r} is not available ({exc}); install its extra, "
                f"e.g. pip install 'labvault[{scheme}]'"
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


def validate_config(config: object, schema: Mapping[str, Any], what: str) -> None:
    """Validate a config mapping against a JSON schema, raising ``InvalidArgumentError`` on failure."""
    import jsonschema

    try:
        jsonschema.validate(config, dict(schema))
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise InvalidArgumentError(f"invalid {what} config at {where}: {exc.message}") from exc


def backend_from_config(config: Mapping[str, Any], artifacts: BlobStore | None) -> Backend:
    """Build a backend from ``{"module": "pkg.mod[:Class]", ...}`` or ``{"backend": "sqlite", ...}``."""
    from labvault.backends.base import Backend

    if not isinstance(config, Mapping):
        raise InvalidArgumentError(f"config must be a mapping, got {type(config).__name__}")
    validate_config(dict(config), MINIMAL_CONFIG_SCHEMA, "backend")
    if "backend" in config:
        cls = backend_class(str(config["backend"]))
        validate_config(dict(config), cls.config_schema, f"{config['backend']!r} backend")
        return cls.from_config(config, artifacts=artifacts)
    target = str(config["module"])
    obj = import_object(target)
    if isinstance(obj, type) and issubclass(obj, Backend):
        validate_config(dict(config), obj.config_schema, f"{target!r} backend")
        return obj.from_config(config, artifacts=artifacts)
    if isinstance(obj, type):
        raise InvalidArgumentError(f"{target!r} is not a labvault Backend subclass")
    schema = getattr(obj, "CONFIG_SCHEMA", None)
    if schema is not None:
        validate_config(dict(config), schema, f"{target!r} backend")
    create = getattr(obj, "create", None)
    if not callable(create):
        raise InvalidArgumentError(
            f"module {target!r} must expose create(config) -> Backend (or name a class as 'module:Class')"
        )
    backend = create(dict(config))
    if not isinstance(backend, Backend):
        raise InvalidArgumentError(f"{target}.create() returned {type(backend).__name__}, not a Backend")
    return backend
