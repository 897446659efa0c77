"""The sync state a local store keeps per remote, and the lock that keeps two transfers apart.

The local store remembers, per remote, the summary of each run on both sides as of the last sync (the
*base*). It keeps that in its own blob store under ``labvault-sync/<hash of the remote URI>.json`` (gc only
collects ``sha256/``), so it works for every local backend. A small lock document next to the state
(``.lock`` instead of ``.json``) keeps two transfers between the same local store and remote from running
at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from labvault._uri import redact
from labvault.blobs.abc import BlobStore
from labvault.errors import ConflictError, CorruptDataError, NotFoundError
from labvault.sync.summary import revision_of

STATE_PREFIX = "labvault-sync/"
_STATE_VERSION = 1
_T = TypeVar("_T")
#: A transfer's lock is refreshed this often (seconds) and taken over when older than ``LOCK_STALE``.
LOCK_REFRESH = 5.0
LOCK_STALE = 60.0


def _redact(uri: str) -> str:
    """``uri`` with its secrets hidden (see :func:`labvault._uri.redact`)."""
    return redact(uri)


def state_key(remote_uri: str) -> str:
    """The blob key under which a local store keeps its sync state for ``remote_uri``."""
    return f"{STATE_PREFIX}{hashlib.sha256(remote_uri.encode()).hexdigest()[:32]}.json"


class SyncState:
    """What a local store remembers about one remote: per run, the base summaries of both sides."""

    def __init__(self, blobs: BlobStore | None, remote_uri: str) -> None:
        self.blobs = blobs
        self.remote = remote_uri
        self.key = state_key(remote_uri)
        self.runs: dict[str, dict[str, Any]] = {}
        if blobs is not None and blobs.exists(self.key):
            try:
                doc = json.loads(blobs.get(self.key))
                self.runs = dict(doc.get("runs") or {})
            except (ValueError, AttributeError) as exc:
                raise CorruptDataError(f"sync state {self.key!r} for remote {_redact(remote_uri)!r} is "
                                       f"unreadable: {exc}") from exc

    def base(self, run_id: str) -> tuple[dict[str, str], dict[str, str]] | None:
        """(local summary, remote summary) at the last sync of the run, or None if never synced."""
        entry = self.runs.get(run_id)
        if entry is None:
            return None
        return dict(entry["local"]), dict(entry["remote"])

    def record(self, run_id: str, local: Mapping[str, str], remote: Mapping[str, str]) -> None:
        """Remember both sides of a run as just synced (saved by ``save``)."""
        self.runs[run_id] = {"local": dict(local), "remote": dict(remote),
                             "local_revision": revision_of(local), "remote_revision": revision_of(remote),
                             "time": time.time()}

    def forget(self, run_ids: Iterable[str]) -> None:
        """Drop the runs (after their experiment was deleted on one side)."""
        for run_id in run_ids:
            self.runs.pop(run_id, None)

    def save(self) -> None:
        """Write the state to the local store (atomically: a blob put)."""
        if self.blobs is None:
            return
        doc = {"version": _STATE_VERSION, "remote": _redact(self.remote), "runs": self.runs}
        self.blobs.put(self.key, json.dumps(doc, separators=(",", ":")).encode())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


class SyncLock:
    """One push or pull at a time between a local store and a remote.

    Two transfers of the same runs at once could both find a point missing and both send it; the lock
    (a small document next to the sync state, written with ``put(if_absent=True)``) prevents that. The
    holder refreshes it every ``LOCK_REFRESH`` seconds from a thread; a lock not refreshed for
    ``LOCK_STALE`` seconds, or held by a dead process on this host (a killed push), is taken over with a
    compare-and-swap on its etag.
    """

    def __init__(self, blobs: BlobStore, remote_uri: str) -> None:
        self._blobs = blobs
        self.remote = remote_uri
        self.key = state_key(remote_uri)[: -len(".json")] + ".lock"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _doc(self) -> bytes:
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}).encode()

    def _stale(self, holder: Mapping[str, Any]) -> bool:
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int) \
                and not _pid_alive(holder["pid"]):
            return True
        return time.time() - float(holder.get("time") or 0) > LOCK_STALE

    def acquire(self) -> None:
        """Take the lock or raise ``ConflictError`` naming the process that holds it."""
        for _attempt in range(3):
            try:
                self._blobs.put(self.key, self._doc(), if_absent=True)
                break
            except ConflictError:
                pass
            try:
                etag = self._blobs.info(self.key).etag
                holder = json.loads(self._blobs.get(self.key))
            except NotFoundError:
                continue  # released meanwhile
            except ValueError:
                holder = {}
            if not self._stale(holder):
                raise ConflictError(
                    f"another push or pull with {_redact(self.remote)!r} is running (process "
                    f"{holder.get('pid')} on {holder.get('host')!r}); try again when it has finished"
                ) from None
            try:
                self._blobs.put(self.key, self._doc(), if_match=etag)
                break
            except ConflictError:
                continue  # someone else took it over first: look again
        else:
            raise ConflictError(f"could not take the sync lock {self.key!r} for {_redact(self.remote)!r}")
        self._thread = threading.Thread(target=self._refresh, name="labvault-sync-lock", daemon=True)
        self._thread.start()

    def _refresh(self) -> None:
        while not self._stop.wait(LOCK_REFRESH):
            with contextlib.suppress(Exception):  # the next refresh tries again
                self._blobs.put(self.key, self._doc())

    def release(self) -> None:
        """Give the lock up (safe to call twice)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
            with contextlib.suppress(Exception):
                self._blobs.delete(self.key)

    def __enter__(self) -> SyncLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _each_state(blobs: BlobStore, describe: Callable[[str, dict[str, Any]], _T | None]) -> Iterator[_T]:
    """``describe(remote, runs)`` of every sync-state document in ``blobs`` (the remote's URI without its
    password, and its ``runs`` map), where it is not None; a document that is unreadable, deleted meanwhile
    or that ``describe`` cannot make sense of is passed over."""
    for key in blobs.list(STATE_PREFIX):
        if not key.endswith(".json"):
            continue
        try:
            doc = json.loads(blobs.get(key))
            item = describe(str(doc.get("remote")), doc.get("runs") or {})
        except (ValueError, AttributeError, TypeError, NotFoundError):
            continue  # unreadable or deleted meanwhile
        if item is not None:
            yield item


def remotes_of(blobs: BlobStore, run_ids: Iterable[str]) -> list[str]:
    """The remotes (URIs without their password) holding any of these runs after a push or pull, most
    recently synced first: where an experiment's runs have gone (``Experiment.remote_urls``)."""
    wanted = set(run_ids)

    def latest(remote: str, runs: dict[str, Any]) -> tuple[float, str] | None:
        mine = [r for run_id, r in runs.items() if run_id in wanted]
        return (max(float(r.get("time") or 0) for r in mine), remote) if mine else None

    return [remote for _, remote in sorted(_each_state(blobs, latest), reverse=True)]


def known_remotes(blobs: BlobStore) -> list[dict[str, Any]]:
    """The remotes a local store has synced with: ``{"remote", "runs", "last_sync"}`` each (the URI without
    its password), most recent first."""

    def describe(remote: str, runs: dict[str, Any]) -> dict[str, Any]:
        last = max((float(r.get("time") or 0) for r in runs.values()), default=None)
        return {"remote": remote, "runs": len(runs), "last_sync": last}

    return sorted(_each_state(blobs, describe), key=lambda r: -(r["last_sync"] or 0))
