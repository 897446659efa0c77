"""The client's write buffer: what ``Run.log_metric`` appends to, and the background thread that writes it.

Metric logging is buffered: ``Run.log_metric`` appends to an in-memory buffer (``RunBuffer``, the base of
``Run``) and a background thread (``_flush_loop``, one per vault) writes buffers to the backend every
``flush_interval`` seconds (default 1 s) and beats the heartbeat of every live run. ``Run.flush()``, leaving
a ``with`` block, ``Vault.close()`` and normal interpreter exit (``atexit``: ``_flush_all_at_exit``) write
everything; a process killed with SIGKILL loses at most the points logged in the last ``flush_interval``.
Small in-memory artifacts are buffered the same way. Also here: the heartbeat check that marks a run
``killed`` when its writer died, the one error of a flush that failed for several runs, and the checks that
turn ``log_metric_series`` input into exact arrays.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import threading
import time
import traceback
import uuid
import weakref
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from labvault.domain import ArtifactInfo, MetricSeries, RunInfo, now
from labvault.domain import validation as v
from labvault.errors import InvalidArgumentError, LabvaultError

if TYPE_CHECKING:
    from labvault.client.run import Run
    from labvault.client.vault import Vault

#: In-memory artifacts up to this size, logged by the process running the run, are buffered and written
#: in batches by the background flush (like metric points); larger ones and files are written at once.
BUFFERED_ARTIFACT_SIZE = 64 * 1024
#: A run's artifact buffer is written as soon as it holds this many bytes.
BUFFERED_ARTIFACT_BYTES = 16 * 1024 * 1024

#: Every vault not yet closed, so that interpreter exit flushes and closes them.
_open_vaults: weakref.WeakSet[Vault] = weakref.WeakSet()
_log = logging.getLogger("labvault")


@atexit.register
def _flush_all_at_exit() -> None:
    """Close every open vault at interpreter exit (which writes their buffers); print what fails."""
    for vault in list(_open_vaults):
        try:
            vault.close()
        except Exception:
            traceback.print_exc()


def _warn_background(run: Run, what: str, exc: Exception) -> None:
    """Log a failure of the background flusher once per run and distinct error (it retries every
    interval; ``flush()`` and ``close()`` raise it to the owner)."""
    text = f"{type(exc).__name__}: {exc}"
    if run._flush_error != text:
        run._flush_error = text
        _log.warning("background %s of run %s failed (retried; flush() or close() raises it): %s",
                     what, run.id, text)


def _flush_loop(vault: Vault) -> None:
    """The body of a vault's flusher thread: every ``flush_interval`` seconds, flush each active run, beat
    its heartbeat every ``heartbeat_interval`` seconds and group-commit the backend, until the vault
    closes."""
    last_beat = time.monotonic()
    while not vault._closed:
        vault._wake.wait(vault.flush_interval)
        if vault._closed:
            return
        beat = time.monotonic() - last_beat >= vault.heartbeat_interval
        with vault._active_lock:
            runs = list(vault._active.values())
        for run in runs:
            try:
                run.flush()
                run._flush_error = None
            except Exception as exc:  # keep flushing the others; the owner sees it on flush()
                _warn_background(run, "flush", exc)
            if beat:  # a run whose flush fails is still alive: keep its heartbeat fresh
                try:
                    vault.backend.update_run(run.id, heartbeat=now())
                except Exception as exc:
                    _warn_background(run, "heartbeat", exc)
        try:
            vault.backend.sync()  # group commit: what this interval wrote survives a power loss
        except Exception:  # retried next interval, and raised by close()
            traceback.print_exc()
        if beat:
            last_beat = time.monotonic()


def _check_heartbeat(vault: Vault, info: RunInfo, run: Run | None = None) -> RunInfo:
    """Mark a ``running`` run ``killed`` when its heartbeat is older than the vault's ``heartbeat_timeout``.

    The writer's flusher refreshes the heartbeat every ``heartbeat_interval`` seconds, so a stale one
    means the writing process died without ending the run.
    """
    if (
        info.status == "running"
        and info.heartbeat is not None
        and now() - info.heartbeat > vault.heartbeat_timeout
        and (run is None or not run._active)
        and info.id not in vault._active
    ):
        vault.backend.update_run(info.id, status="killed", end_time=info.heartbeat,
                                 error="heartbeat stopped")
        info.status, info.end_time, info.error = "killed", info.heartbeat, "heartbeat stopped"
    return info


def _flush_failure(failures: Sequence[tuple[Run, Exception]]) -> LabvaultError:
    """One error for the runs whose flush failed: each run named with what failed. The class is theirs
    when they agree on one ``LabvaultError`` class, else ``LabvaultError``."""
    kinds = {type(exc) for _run, exc in failures}
    kind = kinds.pop() if len(kinds) == 1 else LabvaultError
    if not issubclass(kind, LabvaultError):
        kind = LabvaultError
    parts = [f"run {run.id} ({run.experiment.name}#{run.number}): {type(exc).__name__}: {exc}"
             for run, exc in failures]
    return kind(f"flushing {len(failures)} run(s) failed; their points stay buffered: " + "; ".join(parts))


class RunBuffer:
    """The buffered write path of a run (the base of ``Run``): metric points and small in-memory artifacts
    wait here and are written in batches, by ``flush()`` or the vault's background flusher.

    Writes of a run's buffers hold the vault's flush lock, so a flush that finds a buffer empty because
    another thread took it waits until that thread has stored it (read-your-writes).
    """

    __slots__ = (
        "_artifact_bytes",
        "_artifacts",
        "_flush_error",
        "_known_keys",
        "_lock",
        "_next_step",
        "_pending",
        "_stale",
        "_unsent",
    )

    if TYPE_CHECKING:  # provided by ``Run``
        vault: Vault

        @property
        def id(self) -> str:
            """The run's unique id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, list[tuple[float, int, float]]] = {}
        #: A batch whose write failed, with its batch id: the next flush re-sends it first (``_send``).
        self._unsent: tuple[str, list[MetricSeries]] | None = None
        self._next_step: dict[str, int] = {}
        self._known_keys: set[str] = set()
        self._flush_error: str | None = None
        #: Small in-memory artifacts logged but not yet written, by key (see ``Run.log_artifact``).
        self._artifacts: dict[str, tuple[ArtifactInfo, bytes]] | None = None
        self._artifact_bytes = 0
        #: The stored run changed through this object since its snapshot was loaded (``Run.info`` re-reads).
        self._stale = False

    def flush_key(self, key: str) -> None:
        """Write the buffered points of one metric (keeps ordering with direct array writes)."""
        with self.vault._flush_lock:
            self._send_unsent()
            with self._lock:
                bucket = self._pending.pop(key, None)
            if bucket:
                self._send([_to_series(key, bucket)])

    def _send(self, batch: list[MetricSeries]) -> None:
        """Write buffered points as one batch under a fresh batch id (under the vault's flush lock).

        When the write fails, the batch stays, with its id, and the next flush sends it again before
        anything newer: a write whose answer was lost (a timeout) but that did land is then a no-op for
        the backend, so no point is lost and none is stored twice."""
        self._unsent = (uuid.uuid4().hex, batch)
        self._send_unsent()

    def _send_unsent(self) -> None:
        """Re-send the batch whose write failed, under its batch id (a no-op when there is none)."""
        if self._unsent is not None:
            batch_id, batch = self._unsent
            self._stale = True
            self.vault.backend.log_metrics(self.id, batch, batch_id=batch_id)
            self._unsent = None

    def flush(self) -> None:
        """Write every buffered metric point and small artifact of this run to the backend now."""
        with self.vault._flush_lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        """``flush`` once the vault's flush lock is held: artifacts, the unsent batch, then the points."""
        if self._artifacts:
            self._flush_artifacts()
        self._send_unsent()
        if not self._pending:
            return
        with self._lock:
            pending, self._pending = self._pending, {}
        if pending:
            self._send([_to_series(k, pts) for k, pts in pending.items()])

    def _flush_artifacts(self) -> None:
        """Write the buffered small artifacts: their bytes in one batch, then their records in one."""
        with self.vault._flush_lock:
            with self._lock:
                pending, self._artifacts, self._artifact_bytes = self._artifacts, None, 0
            if not pending:
                return
            self._stale = True
            try:
                self.vault.backend.blobs.put_content_many([data for _info, data in pending.values()])
                self.vault.backend.add_artifacts(self.id, [info for info, _data in pending.values()])
            except BaseException:
                with self._lock:  # put them back (newer writes of a key win) so nothing is lost
                    self._artifacts = {**pending, **(self._artifacts or {})}
                    self._artifact_bytes = sum(len(d) for _i, d in self._artifacts.values())
                raise

    def _discard_buffer(self) -> None:
        """Drop everything buffered and unsent, writing nothing (as when the run's experiment is deleted)."""
        with self._lock:
            self._pending = {}
            self._unsent = None
            self._artifacts, self._artifact_bytes = None, 0

    def _buffer_artifact(self, key: str, data: bytes | bytearray | memoryview) -> ArtifactInfo:
        """Keep a small in-memory artifact for the next flush (newer writes of ``key`` replace it); write
        the artifact buffer at once when it holds ``BUFFERED_ARTIFACT_BYTES``."""
        raw = bytes(data)
        digest = hashlib.sha256(raw).hexdigest()
        info = ArtifactInfo(key=key, size=len(raw), digest=digest, created_at=now())
        with self._lock:
            if self._artifacts is None:
                self._artifacts = {}
            old = self._artifacts.pop(key, None)
            self._artifacts[key] = (info, raw)
            self._artifact_bytes += len(raw) - (len(old[1]) if old else 0)
            full = self._artifact_bytes >= BUFFERED_ARTIFACT_BYTES
        if full:
            self._flush_artifacts()
        return info


def _float_array(key: str, what: str, data: Any) -> np.ndarray[Any, Any]:
    """``data`` as a flat float64 array; ``InvalidArgumentError`` naming the metric when it is not real
    numbers (strings, even numeric ones, and bools, as ``log_metric`` refuses them; objects; ragged lists)
    or holds a number too large for a float."""
    try:
        raw = np.asarray(data)
        if raw.ndim == 0:
            raise TypeError("a single value is not a sequence of points")
        if raw.dtype.kind not in "fiuO":
            raise TypeError(f"{raw.dtype.name} is not a real number type")
        return raw.astype(np.float64, copy=False).reshape(-1)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidArgumentError(
            f"metric {key!r}: {what} must be real numbers, got {v.show(data)} "
            f"({type(exc).__name__}: {v.escape_error_text(str(exc))[:200]})") from None


def _to_series(key: str, points: list[tuple[float, int, float]]) -> MetricSeries:
    """A buffer of (value, step, timestamp) points as arrays; steps go straight to int64 (exact: never
    through float64, which rounds steps above 2**53)."""
    n = len(points)
    return MetricSeries(key, np.fromiter((p[1] for p in points), dtype=np.int64, count=n),
                        np.fromiter((p[0] for p in points), dtype=np.float64, count=n),
                        np.fromiter((p[2] for p in points), dtype=np.float64, count=n))


def _next_step_error(key: str, step: int) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"metric {key!r}: the default next step {step} is past 2**63 - 1 (the largest int64 step); "
        "pass step= explicitly"
    )


def _series_steps(key: str, steps: Iterable[int] | np.ndarray[Any, Any] | None, n: int,
                  start: int) -> np.ndarray[Any, np.dtype[np.int64]]:
    """The int64 steps of ``log_metric_series``: checked exactly against 0 .. 2**63 - 1, naming the first
    step that cannot be stored (``InvalidArgumentError``)."""
    if steps is None:
        if n and start + n - 1 > v.MAX_STEP:
            raise _next_step_error(key, max(start, v.MAX_STEP + 1))
        return np.arange(start, start + n, dtype=np.int64) if n else np.empty(0, dtype=np.int64)
    if not isinstance(steps, np.ndarray) and not hasattr(steps, "__len__"):
        steps = list(steps)  # a generator
    try:
        raw = np.asarray(steps)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidArgumentError(f"metric {key!r}: steps must be {n} integers: {exc}") from exc
    if raw.shape != (n,):
        raise InvalidArgumentError(f"metric {key!r}: steps must be {n} integers, got shape {raw.shape}")
    if not n:
        return np.empty(0, dtype=np.int64)
    if np.issubdtype(raw.dtype, np.unsignedinteger):
        bad = raw > v.MAX_STEP
    elif np.issubdtype(raw.dtype, np.signedinteger):
        bad = raw < 0
    else:
        # Floats, bools, objects: one by one, the first bad step named. A list is checked as given, since
        # numpy turns [1, 2**63] into floats and [2**64] into objects.
        items = raw.tolist() if isinstance(steps, np.ndarray) else list(steps)
        out = np.empty(n, dtype=np.int64)
        for i, x in enumerate(items):
            try:
                out[i] = v.validate_step(key, x)
            except InvalidArgumentError:
                raise v.step_error(key, x, f"steps[{i}]") from None
        return out
    if bad.any():
        first = int(np.argmax(bad))
        raise v.step_error(key, raw[first], f"steps[{first}]")
    return raw.astype(np.int64)
