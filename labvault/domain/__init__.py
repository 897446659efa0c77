"""Domain records and value rules, independent of any storage backend."""

from labvault.domain.model import (
    RUN_STATUSES,
    TERMINAL_STATUSES,
    ArtifactInfo,
    ExperimentInfo,
    MetricSeries,
    RunInfo,
    RunStatus,
    now,
)

__all__ = [
    "RUN_STATUSES",
    "TERMINAL_STATUSES",
    "ArtifactInfo",
    "ExperimentInfo",
    "MetricSeries",
    "RunInfo",
    "RunStatus",
    "now",
]
