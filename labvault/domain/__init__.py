"""Domain records and value rules, independent of any storage backend."""

from labvault.domain.model import (
    DELETED_TAG,
    EVENT_KINDS,
    MODEL_EVENT_KINDS,
    RUN_STATUSES,
    TERMINAL_STATUSES,
    ArtifactInfo,
    ChangeEvent,
    ExperimentInfo,
    MetricSeries,
    RunInfo,
    RunStatus,
    now,
)

__all__ = [
    "DELETED_TAG",
    "EVENT_KINDS",
    "MODEL_EVENT_KINDS",
    "RUN_STATUSES",
    "TERMINAL_STATUSES",
    "ArtifactInfo",
    "ChangeEvent",
    "ExperimentInfo",
    "MetricSeries",
    "RunInfo",
    "RunStatus",
    "now",
]
