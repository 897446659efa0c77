"""Opening backends: by URI (``open_backend``) or by configuration (``backend_from_config``).

The scheme table itself is ``labvault._registry`` (re-exported here). ``labvault.open(config=...)`` takes
``{"backend": "sqlite", "uri": ...}`` or ``{"module": "pkg.module", ...}`` naming a module that exposes
``create(config) -> Backend`` (aimm's contract) or ``"pkg.module:ClassName"`` naming a class; configs are
validated by JSON schema (the minimal one here, then the backend's own ``config_schema``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from labvault import blobs
from labvault._registry import (
    BLOB_ENTRY_POINT_GROUP,
    ENTRY_POINT_GROUP,
    backend_class,
    blob_store_class,
    import_object,
    known_blob_schemes,
    known_schemes,
    register_backend,
    register_blob_store,
    unregister_backend,
)
from labvault._uri import resolve_uri, without_secrets
from labvault.blobs.abc import BlobStore
from labvault.errors import InvalidArgumentError
from labvault.store.abc import Backend

MINIMAL_CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "module": {"type": "string", "minLength": 1},
        "backend": {"type": "string", "minLength": 1},
    },
    "oneOf": [{"required": ["module"]}, {"required": ["backend"]}],
}


























def validate_config(config: object, schema: Mapping[str, Any], what: str) -> None:
    """Validate a config mapping against a JSON schema, raising ``InvalidArgumentError`` on failure."""
    import jsonschema  # lazy: jsonschema costs ~60 ms; only config= needs it

    try:
        jsonschema.validate(config, dict(schema))
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise InvalidArgumentError(f"invalid {what} config at {where}: {exc.message}") from exc


def backend_from_config(config: Mapping[str, Any], artifacts: BlobStore | None) -> Backend:
    """Build a backend from ``{"module": "pkg.mod[:Class]", ...}`` or ``{"backend": "sqlite", ...}``."""
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


__all__ = [
    "BLOB_ENTRY_POINT_GROUP", "ENTRY_POINT_GROUP", "MINIMAL_CONFIG_SCHEMA", "backend_class",
    "backend_from_config", "blob_store_class", "import_object", "known_blob_schemes", "known_schemes",
    "open_backend",
    "register_backend", "register_blob_store", "unregister_backend", "validate_config",
]


def open_backend(
    uri: str | os.PathLike[str] | None = None,
    *,
    artifacts: str | BlobStore | None = None,
    config: Mapping[str, Any] | None = None,
    **options: Any,
) -> Backend:
    """Build the ``Backend`` a URI or config names, without wrapping it in a ``Vault``
    (``labvault.open_backend``; see ``labvault.open`` for the URI forms)."""
    blob_store = artifacts if artifacts is None or isinstance(artifacts, BlobStore) else blobs.open(artifacts)
    if config is not None:
        if uri is not None:
            raise InvalidArgumentError("pass either uri or config, not both")
        return backend_from_config(config, blob_store)
    if type(uri).__module__.split(".")[0] == "redis":  # a redis.ConnectionPool (daskperiment's form)
        from labvault.store.redis.backend import RedisBackend  # lazy: optional driver (extra [redis])

        return RedisBackend.from_pool(uri, artifacts=blob_store, **options)
    scheme, resolved = resolve_uri(uri)
    try:
        cls = backend_class(scheme)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"cannot open vault {without_secrets(resolved)!r}: {exc}") from exc
    return cls.from_uri(resolved, artifacts=blob_store, **options)
