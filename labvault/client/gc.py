"""Garbage collection of artifact blobs no run references any more (``labvault gc``).

Artifacts are content-addressed (``sha256/ab/cd/<digest>``) and shared between runs, so deleting a run or
an experiment leaves its blobs behind. ``collect_garbage`` finds them through the public API only, so it
works on every backend and every blob store:

1. list the blobs under ``sha256/`` (``BlobStore.scan``: key, size, last write time);
2. collect the digests every run of every experiment references (``list_experiments`` ->
   ``list_runs`` -> ``list_artifacts``);
3. a blob is garbage when no run references it and it was last written more than ``grace_hours`` ago.

The grace period is what makes it safe beside a concurrent writer: ``log_artifact`` stores the blob
*before* it records the reference, and storing content that exists already refreshes the blob's time
(``BlobStore._touch``), so a blob a writer is about to reference is always "recent". Before deleting,
each candidate's time is read again. Deletion happens only with ``delete=True``; the default is a dry run.

A blob store shared by several vaults must be collected with all of them: pass every backend (or vault)
whose runs may reference it, or blobs only another vault uses will be deleted.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from labvault.blobs.abc import BlobStore
from labvault.domain.model import BlobInfo
from labvault.errors import InvalidArgumentError, NotFoundError
from labvault.store.abc import Backend

if TYPE_CHECKING:
    from labvault.client.vault import Vault

__all__ = ["DEFAULT_GRACE_HOURS", "GcReport", "collect_garbage", "referenced_digests"]

#: Blobs written less than this many hours ago are never collected.
DEFAULT_GRACE_HOURS = 24.0
_PREFIX = "sha256/"


@dataclass
class GcReport:
    """What a collection found (and, with ``deleted``, removed)."""

    #: Content-addressed blobs in the store.
    scanned: int = 0
    #: Distinct digests the runs reference.
    referenced: int = 0
    #: Unreferenced blobs older than the grace period: removed when ``deleted`` is true.
    garbage: list[BlobInfo] = field(default_factory=list)
    #: Unreferenced blobs kept because they were written within the grace period.
    recent: list[BlobInfo] = field(default_factory=list)
    #: Digests some run references but the store does not hold (broken artifacts; never "fixed" here).
    missing: list[str] = field(default_factory=list)
    deleted: bool = False

    @property
    def bytes_freed(self) -> int:
        """Bytes the garbage occupies (freed when ``deleted``)."""
        return sum(b.size for b in self.garbage)


def _backend_of(target: Any) -> Backend:
    backend = getattr(target, "backend", target)
    if not isinstance(backend, Backend):
        raise InvalidArgumentError(f"gc needs a Vault or a Backend, got {type(target).__name__}")
    return backend


def referenced_digests(backends: Iterable[Backend | Vault]) -> set[str]:
    """Every artifact digest a run of any experiment of these backends references."""
    digests: set[str] = set()
    for target in backends:
        backend = _backend_of(target)
        for exp in backend.list_experiments():
            for run in backend.list_runs([exp.id]):
                try:
                    digests.update(a.digest for a in backend.list_artifacts(run.id))
                except NotFoundError:
                    continue  # deleted while we walked
    return digests


def collect_garbage(
    targets: Backend | Vault | Sequence[Backend | Vault],
    *,
    blobs: BlobStore | None = None,
    grace_hours: float = DEFAULT_GRACE_HOURS,
    delete: bool = False,
    now: float | None = None,
) -> GcReport:
    """Find (and with ``delete=True`` remove) blobs that no run of ``targets`` references.

    ``targets`` is a vault or backend, or several sharing one blob store; ``blobs`` defaults to the
    first one's artifact store. Blobs written within ``grace_hours`` are kept (see the module docstring).
    """
    if isinstance(grace_hours, bool) or not isinstance(grace_hours, int | float) or not grace_hours >= 0:
        raise InvalidArgumentError(f"grace must be a number of hours >= 0, got {grace_hours!r}")
    if not isinstance(delete, bool):
        raise InvalidArgumentError(f"delete must be True or False, got {delete!r}")
    seq: list[Backend | Vault] = list(targets) if isinstance(targets, Sequence) else [targets]
    if not seq:
        raise InvalidArgumentError("gc needs at least one vault or backend")
    backends = [_backend_of(t) for t in seq]
    store = blobs if blobs is not None else backends[0].blobs
    if not isinstance(store, BlobStore):
        raise InvalidArgumentError(f"blobs must be a BlobStore, got {type(store).__name__}")
    current = time.time() if now is None else now
    cutoff = current - grace_hours * 3600.0

    # Blobs first, references second: a blob stored after the scan is not a candidate at all, and a
    # reference recorded before the reference walk is seen by it.
    stored = [b for b in store.scan(_PREFIX) if _is_content_key(b.key)]
    digests = referenced_digests(backends)
    report = GcReport(scanned=len(stored), referenced=len(digests))
    present = set()
    for blob in stored:
        digest = blob.key.rsplit("/", 1)[1]
        present.add(digest)
        if digest in digests:
            continue
        (report.garbage if blob.modified < cutoff else report.recent).append(blob)
    report.missing = sorted(digests - present)
    if delete and report.garbage:
        doomed: list[BlobInfo] = []
        for blob in report.garbage:
            try:
                fresh = store.info(blob.key)
            except NotFoundError:
                continue
            if fresh.modified < cutoff:  # not re-stored (touched) since the scan
                doomed.append(blob)
            else:
                report.recent.append(blob)
        store.delete_many([b.key for b in doomed])
        report.garbage = doomed
        report.deleted = True
    return report


def _is_content_key(key: str) -> bool:
    parts = key.split("/")
    return (len(parts) == 4 and parts[0] == "sha256" and len(parts[3]) == 64
            and parts[1] == parts[3][:2] and parts[2] == parts[3][2:4]
            and all(c in "0123456789abcdef" for c in parts[3]))
