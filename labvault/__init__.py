"""labvault: keep everything an ML experiment produces behind one API with pluggable storage.

    import labvault
    with labvault.open() as vault:                     # ./labvault-data (SQLite + local blobs)
        exp = vault.experiment("mnist")
        with exp.start_run(params={"lr": 0.1}) as run:
            run.log_metric("loss", 0.3, step=1)

``import labvault`` is cheap: numpy, SQLAlchemy, pandas and every driver load on first use.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from labvault import errors
from labvault.errors import (
    AlreadyExistsError,
    AuthenticationError,
    BackendUnavailableError,
    ConflictError,
    CorruptDataError,
    InvalidArgumentError,
    LabvaultError,
    NotFoundError,
    PermissionDeniedError,
    UnsupportedOperationError,
)

if TYPE_CHECKING:
    from labvault.api import Experiment, Run, RunList, Vault
    from labvault.backends.base import Backend, BlobStore
    from labvault.sync import SyncReport

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_URI",
    "AlreadyExistsError",
    "AuthenticationError",
    "BackendUnavailableError",
    "ConflictError",
    "CorruptDataError",
    "Experiment",
    "InvalidArgumentError",
    "LabvaultError",
    "NotFoundError",
    "PermissionDeniedError",
    "Run",
    "RunList",
    "UnsupportedOperationError",
    "Vault",
    "__version__",
    "copy",
    "errors",
    "open",
    "open_backend",
]

#: Where ``labvault.open()`` keeps data when neither a URI nor ``$LABVAULT_URI`` is given.
DEFAULT_URI = "./labvault-data"
#: Inside a directory, this file marks the embedded default layout (SQLite metadata + local blobs).
EMBEDDED_DB_NAME = "labvault.db"

_LAZY = {"Vault": "labvault.api", "Experiment": "labvault.api", "Run": "labvault.api",
         "RunList": "labvault.api"}
#: Submodules reachable as ``labvault.<name>`` after a plain ``import labvault``, imported on first use.
_SUBMODULES = frozenset({"api", "backends", "blobs", "domain", "gc", "query", "server", "sync", "testing"})


def __getattr__(name: str) -> Any:
    """Load the API classes and the submodules on first access (``import labvault`` stays cheap)."""
    if name in _LAZY or name in _SUBMODULES:
        import importlib

        module = importlib.import_module(f"labvault.{name}" if name in _SUBMODULES else _LAZY[name])
        return module if name in _SUBMODULES else getattr(module, name)
    raise AttributeError(f"module 'labvault' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | _SUBMODULES)


def _resolve_uri(uri: str | os.PathLike[str] | None) -> tuple[str, str]:
    """Return (scheme, uri) for what the user passed, applying the defaults."""
    from pathlib import Path

    from labvault._uri import uri_scheme

    if uri is None:
        uri = os.environ.get("LABVAULT_URI") or None
    if uri is None:
        return "sqlite", _embedded_sqlite_uri(Path(DEFAULT_URI))
    if isinstance(uri, os.PathLike):
        uri = os.fspath(uri)
    if not isinstance(uri, str):
        raise InvalidArgumentError(f"uri must be a string or a path, got {type(uri).__name__}")
    if not uri or uri.strip() != uri or "\x00" in uri:
        raise InvalidArgumentError(f"invalid vault URI {uri!r}: empty, padded or containing NUL")
    scheme = uri_scheme(uri, "vault URI")
    if scheme is not None:
        return scheme, uri
    path = Path(uri).expanduser()
    if (path / EMBEDDED_DB_NAME).is_file():
        return "sqlite", _embedded_sqlite_uri(path)
    return "file", uri


def _embedded_sqlite_uri(directory: Any) -> str:
    return f"sqlite:///{directory / EMBEDDED_DB_NAME}"


def open_backend(
    uri: str | os.PathLike[str] | None = None,
    *,
    artifacts: str | BlobStore | None = None,
    config: Mapping[str, Any] | None = None,
    **options: Any,
) -> Backend:
    """Build the ``Backend`` a URI or config names, without wrapping it in a ``Vault``."""
    from labvault._uri import without_secrets
    from labvault.backends import registry
    from labvault.backends.base import BlobStore

    blob_store: BlobStore | None
    if artifacts is None or isinstance(artifacts, BlobStore):
        blob_store = artifacts
    else:
        blob_store = open_blob_store(artifacts)
    if config is not None:
        if uri is not None:
            raise InvalidArgumentError("pass either uri or config, not both")
        return registry.backend_from_config(config, blob_store)
    if type(uri).__module__.split(".")[0] == "redis":  # a redis.ConnectionPool (daskperiment's form)
        from labvault.backends.redis import RedisBackend

        return RedisBackend.from_pool(uri, artifacts=blob_store, **options)
    scheme, resolved = _resolve_uri(uri)
    try:
        cls = registry.backend_class(scheme)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"cannot open vault {without_secrets(resolved)!r}: {exc}") from exc
    return cls.from_uri(resolved, artifacts=blob_store, **options)


def open_blob_store(url: str, **options: Any) -> BlobStore:
    """Open a blob store by URL (``file:///path``, a bare path, ``memory://``, ``s3://bucket/prefix``);
    ``options`` go to the store's ``from_url``. An unknown scheme raises ``InvalidArgumentError``."""
    from labvault._uri import uri_scheme
    from labvault.backends import registry

    if not isinstance(url, str) or not url:
        raise InvalidArgumentError(f"a blob store URL must be a non-empty string, got {url!r}")
    cls = registry.blob_store_class(uri_scheme(url, "blob store URL") or "file")
    from_url = getattr(cls, "from_url", None)
    if from_url is None:
        raise InvalidArgumentError(f"blob store {cls.__name__} cannot be opened from a URL")
    store: BlobStore = from_url(url, **options)
    return store


def open(
    uri: str | os.PathLike[str] | None = None,
    *,
    artifacts: str | BlobStore | None = None,
    token: str | None = None,
    config: Mapping[str, Any] | None = None,
    flush_interval: float = 1.0,
    heartbeat_timeout: float = 120.0,
    remote: str | None = None,
    **options: Any,
) -> Vault:
    """Open a vault.

    ``uri`` picks the backend: ``None`` uses ``$LABVAULT_URI`` or else the embedded default
    ``./labvault-data`` (SQLite + local blobs, no server); ``"./dir"`` or ``"file://dir"`` is the file
    backend; ``"sqlite:///path.db"``; ``"memory://"``. ``artifacts`` puts blobs in another store.
    ``config={"backend": "sqlite", "uri": ...}`` or ``{"module": "pkg.mod", ...}`` selects a backend by
    configuration (validated by JSON schema). ``flush_interval`` bounds how long a logged metric point
    stays in memory before it is written (seconds). ``remote`` (default ``$LABVAULT_REMOTE``) is the store
    ``vault.push()`` / ``vault.pull()`` / ``vault.sync_status()`` talk to; it is not contacted on open.
    """
    from labvault.api import Vault

    if token is not None:
        options["token"] = token
    if remote is None:
        remote = os.environ.get("LABVAULT_REMOTE") or None
    backend = open_backend(uri, artifacts=artifacts, config=config, **options)
    return Vault(backend, flush_interval=flush_interval, heartbeat_timeout=heartbeat_timeout, remote=remote)


def copy(
    src_uri: str | os.PathLike[str] | Vault,
    dst_uri: str | os.PathLike[str] | Vault,
    experiments: Sequence[str] | None = None,
    **kwargs: Any,
) -> SyncReport:
    """Copy a whole vault (or the named experiments) from one store to another, any backend to any backend.

    Run ids are kept, metrics merged without duplicates, blobs sent only when missing: copying again
    sends nothing new. Keyword arguments (``project``, ``on_conflict``, ``progress``) are those of
    ``labvault.sync.copy``.
    """
    from labvault import sync

    src = os.fspath(src_uri) if isinstance(src_uri, os.PathLike) else src_uri
    dst = os.fspath(dst_uri) if isinstance(dst_uri, os.PathLike) else dst_uri
    return sync.copy(src, dst, experiments, **kwargs)
