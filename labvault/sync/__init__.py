"""Offline-first sync between any two stores: push, pull, status and copy (``labvault.copy``).

Per run a content summary is compared with the last synced one (three-way), metrics are merged without
duplicates, blobs are sent only when missing; a push killed half way resumes where it stopped.

The modules: ``summary`` (run summaries, revisions and what differs between two copies of a run),
``state`` (the sync state a local store keeps per remote, and the transfer lock), ``transfer`` (moving
runs from one store to another: planning, then one applier per field kind) and ``api`` (status, copy and
the choice of experiments to send). The constants below are copies: a module reads its own
(``labvault.sync.transfer.HISTORY_BUDGET``), so patch them there.
"""

from labvault._compat import forward
from labvault.sync.api import copy, run_states
from labvault.sync.state import (
    LOCK_REFRESH,
    LOCK_STALE,
    STATE_PREFIX,
    SyncLock,
    SyncState,
    known_remotes,
    remotes_of,
    state_key,
)
from labvault.sync.summary import RunSnapshot, RunStatus, revision_of, series_digest, snapshot, summarize
from labvault.sync.transfer import HISTORY_BUDGET, POINTS_PER_BATCH, STATE_SAVE_INTERVAL, SyncReport, Transfer

__all__ = [
    "HISTORY_BUDGET",
    "LOCK_REFRESH",
    "LOCK_STALE",
    "POINTS_PER_BATCH",
    "STATE_PREFIX",
    "STATE_SAVE_INTERVAL",
    "RunSnapshot",
    "RunStatus",
    "SyncLock",
    "SyncReport",
    "SyncState",
    "Transfer",
    "copy",
    "known_remotes",
    "remotes_of",
    "revision_of",
    "run_states",
    "series_digest",
    "snapshot",
    "state_key",
    "summarize",
]

#: Private helpers the client and tests reach (``sync._experiments``, ``sync._missing_points``) resolve in
#: the modules below.
__getattr__ = forward("labvault.sync", "labvault.sync.api", "labvault.sync.transfer", "labvault.sync.state",
                      "labvault.sync.summary")
