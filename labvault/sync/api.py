"""The entry points of sync that the client and ``labvault.copy`` call: status, copy, and the choice of
experiments a push or copy sends.

``Vault.push`` and ``Vault.pull`` run a ``Transfer`` (``labvault.sync.transfer``) with the local store's
``SyncState`` (``labvault.sync.state``); ``Vault.sync_status`` calls ``run_states``; ``labvault.copy``
calls ``copy``, which is the same transfer without a sync state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from labvault.domain import ExperimentInfo
from labvault.errors import InvalidArgumentError, NotFoundError
from labvault.store.abc import Backend
from labvault.store.registry import open_backend
from labvault.sync.state import SyncState
from labvault.sync.summary import RunStatus, compare, snapshot
from labvault.sync.transfer import OnConflict, Progress, SyncReport, Transfer, _ordered, _Side

if TYPE_CHECKING:
    from labvault.client.run import Experiment
    from labvault.client.vault import Vault


def run_states(local: Backend, remote: Backend, state: SyncState, name: str, project: str) -> list[RunStatus]:
    """Per run of experiment ``project/name``: in sync, ahead (local newer), behind or diverged."""
    lside, rside = _Side(local, "local"), _Side(remote, "remote")
    lruns = lside.runs(lside.find(name, project))
    rruns = rside.runs(rside.find(name, project))
    if not lruns and not rruns:
        raise NotFoundError(f"experiment {project}/{name} exists neither locally nor on the remote")
    out: list[RunStatus] = []
    merged = {**rruns, **lruns}
    for info in _ordered(merged):
        lsnap = snapshot(local, lruns[info.id])[0] if info.id in lruns else None
        rsnap = snapshot(remote, rruns[info.id])[0] if info.id in rruns else None
        st, changed, conflicts = compare(lsnap, rsnap, state.base(info.id))
        out.append(RunStatus(info.id, info.name, st, lsnap.revision if lsnap else None,
                             rsnap.revision if rsnap else None, sorted(changed), conflicts))
    return out


def _experiments(backend: Backend, names: Sequence[str | Experiment | ExperimentInfo] | None,
                 project: str | None = None) -> list[ExperimentInfo]:
    """The experiments to sync: all (``None``), or names, ``ExperimentInfo``s or ``Experiment`` objects
    (duck-typed: this layer does not import the client). An ``Experiment`` of another vault is matched by
    (project, name)."""
    if names is None:
        return backend.list_experiments(project)
    out: list[ExperimentInfo] = []
    for item in names:
        info = getattr(item, "info", None)
        if isinstance(item, ExperimentInfo):
            out.append(item)
        elif isinstance(info, ExperimentInfo):  # an Experiment
            same_store = getattr(getattr(item, "vault", None), "backend", None) is backend
            out.append(info if same_store else backend.find_experiment(info.name, info.project))
        else:
            out.append(backend.find_experiment(item, project))  # type: ignore[arg-type]
    return out


def copy(src_uri: str | Vault | Backend, dst_uri: str | Vault | Backend,
         experiments: Sequence[str] | None = None, *,
         project: str | None = None, on_conflict: OnConflict | None = None,
         progress: Progress | None = None, workers: int = 4) -> SyncReport:
    """Copy whole vaults (or the named experiments) from one store to another, any backend to any backend.

    Run ids are kept; metrics are merged without duplicates and blobs sent only when missing, so copying
    again sends nothing new. A run whose params or tags differ in both stores raises ``ConflictError``
    unless ``on_conflict="ours"`` (the source wins) or ``"theirs"``. ``workers`` runs are sent at once.
    """
    opened: list[Backend] = []

    def backend_of(x: str | Vault | Backend) -> Backend:
        if isinstance(x, str):
            fresh = open_backend(x)
            opened.append(fresh)
            return fresh
        flush = getattr(x, "flush", None)
        if callable(flush):
            flush()  # a Vault: its buffered points travel too
        backend: object = getattr(x, "backend", x)
        if not isinstance(backend, Backend):
            raise InvalidArgumentError(f"copy needs store URIs, vaults or backends, got {type(x).__name__}")
        return backend

    try:
        src, dst = backend_of(src_uri), backend_of(dst_uri)
        exps = _experiments(src, experiments, project)
        transfer = Transfer(src, dst, state=None, src_is_local=True,
                            on_conflict=on_conflict, progress=progress, direction="copy", workers=workers)
        return transfer.run(exps)
    finally:
        for backend in opened:
            backend.close()
