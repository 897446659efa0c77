"""labvault: keep everything an ML experiment produces behind one API with pluggable storage.

    import labvault
    with labvault.open() as vault:                     # ./labvault-data (SQLite + local blobs)
        exp = vault.experiment("mnist")
        with exp.start_run(params={"lr": 0.1}) as run:
            run.log_metric("loss", 0.3, step=1)

or, as MLflow and W&B users type it (the active run of the calling thread, see ``labvault.client.fluent``)::

    with labvault.start_run(experiment="mnist", params={"lr": 0.1}):
        labvault.log_metric("loss", 0.3)

``import labvault`` is cheap: numpy, SQLAlchemy, pandas and every driver load on first use.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from labvault import _version, errors
from labvault._defaults import DEFAULT_URI, EMBEDDED_DB_NAME
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
    from labvault.blobs.abc import BlobStore
    from labvault.client import Experiment, Run, RunList, Vault
    from labvault.client.fluent import (
        active_run,
        end_run,
        log_artifact,
        log_metric,
        log_metrics,
        log_param,
        log_params,
        log_result,
        set_tag,
        set_tags,
        start_run,
    )
    from labvault.store.abc import Backend
    from labvault.sync import SyncReport


__all__ = [
    "DEFAULT_URI",
    "EMBEDDED_DB_NAME",
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
    "active_run",
    "copy",
    "end_run",
    "errors",
    "log_artifact",
    "log_metric",
    "log_metrics",
    "log_param",
    "log_params",
    "log_result",
    "open",
    "open_backend",
    "set_tag",
    "set_tags",
    "start_run",
]

_LAZY = {"Vault": "labvault.client", "Experiment": "labvault.client", "Run": "labvault.client",
         "RunList": "labvault.client",
         # the module-level API (labvault.start_run, labvault.log_metric, ...): labvault.client.fluent
         **dict.fromkeys(("active_run", "end_run", "log_artifact", "log_metric", "log_metrics", "log_param",
                          "log_params", "log_result", "set_tag", "set_tags", "start_run"),
                         "labvault.client.fluent")}
#: Submodules reachable as ``labvault.<name>`` after a plain ``import labvault``, imported on first use.
_SUBMODULES = frozenset({"api", "backends", "blobs", "cli", "client", "domain", "gc", "query", "server",
                         "store", "sync", "testing", "wire"})


def __getattr__(name: str) -> Any:
    """Load the API classes and the submodules on first access (``import labvault`` stays cheap)."""
    if name == "__version__":  # from the installed distribution's metadata: one place (pyproject.toml)
        return _version.version()
    if name in _LAZY or name in _SUBMODULES:
        module = importlib.import_module(f"labvault.{name}" if name in _SUBMODULES else _LAZY[name])
        return module if name in _SUBMODULES else getattr(module, name)
    raise AttributeError(f"module 'labvault' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | _SUBMODULES)


def open_backend(
    uri: str | os.PathLike[str] | None = None,
    *,
    artifacts: str | BlobStore | None = None,
    config: Mapping[str, Any] | None = None,
    **options: Any,
) -> Backend:
    """Build the ``Backend`` a URI or config names, without wrapping it in a ``Vault`` (see ``open``)."""
    from labvault.store import registry  # lazy: import labvault loads no store module (+40 %)

    return registry.open_backend(uri, artifacts=artifacts, config=config, **options)


def open_blob_store(url: str, **options: Any) -> BlobStore:
    """Open a blob store by URL (``file:///path``, a bare path, ``memory://``, ``s3://bucket/prefix``);
    the same as ``labvault.blobs.open``."""
    from labvault import blobs  # lazy: the blob stores load numpy; import labvault does not

    return blobs.open(url, **options)


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
    from labvault.client import Vault  # lazy: the client loads numpy; import labvault does not

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
    from labvault import sync  # lazy: labvault.sync loads numpy; import labvault does not

    src = os.fspath(src_uri) if isinstance(src_uri, os.PathLike) else src_uri
    dst = os.fspath(dst_uri) if isinstance(dst_uri, os.PathLike) else dst_uri
    return sync.copy(src, dst, experiments, **kwargs)
