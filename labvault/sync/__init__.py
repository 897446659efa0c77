"""Offline-first sync between any two stores: push, pull, status and copy (``labvault.copy``).

Per run a content summary is compared with the last synced one (three-way), metrics are merged without
duplicates, blobs are sent only when missing; a push killed half way resumes where it stopped.
"""

from labvault._compat import forward
from labvault.sync.core import (
    HISTORY_BUDGET,
    LOCK_REFRESH,
    LOCK_STALE,
    POINTS_PER_BATCH,
    STATE_PREFIX,
    STATE_SAVE_INTERVAL,
    RunSnapshot,
    RunStatus,
    SyncLock,
    SyncReport,
    SyncState,
    Transfer,
    copy,
    known_remotes,
    revision_of,
    run_states,
    series_digest,
    snapshot,
    state_key,
    summarize,
)

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
    "revision_of",
    "run_states",
    "series_digest",
    "snapshot",
    "state_key",
    "summarize",
]

#: Private helpers tests reach (``sync._missing_points``) resolve in the modules below.
__getattr__ = forward("labvault.sync", "labvault.sync.core")
