"""The request bodies of the server's endpoints: pydantic models, from which the OpenAPI document's schemas
are generated (their class names are the schema names, so they stay as they are).

They carry no docstrings on purpose: a model's docstring becomes its schema's ``description`` in the
OpenAPI document. Every model refuses unknown fields (``extra="forbid"``).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt

__all__ = ["BATCH_ID_DOC", "ArtifactIn", "BatchIn", "BatchItem", "CompleteIn", "ExperimentIn", "FiniteFloat",
           "MetricsIn", "RoleIn", "RunIn", "RunPatch", "SearchIn", "SeriesIn", "TokenIn", "UploadIn",
           "UserIn"]

_MAX_INT64 = 2**63 - 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class ExperimentIn(_Model):
    name: str = Field(description="experiment name (unique within its project)")
    project: str = Field("default", description="project name")


class RunIn(_Model):
    id: str | None = Field(None, description="the run's id (kept across stores); generated if omitted")
    name: str | None = None
    parent_id: str | None = None
    start_time: FiniteFloat | None = Field(None, description="epoch seconds; the server's clock when omitted")
    params: dict[str, Any] = Field(default_factory=dict)
    tags: dict[str, Any] = Field(default_factory=dict)


class RunPatch(_Model):
    status: str | None = None
    end_time: FiniteFloat | None = None
    error: str | None = None
    heartbeat: FiniteFloat | None = None
    name: str | None = None
    clear: list[str] = Field(default_factory=list, description='fields to empty, e.g. ["end_time", "error"]')


class SearchIn(_Model):
    experiment_ids: list[str] = Field(default_factory=list, description="empty: every experiment")
    filter: str | None = Field(None, description="e.g. params.lr > 0.01 and metrics.acc >= 0.9")
    order_by: list[str] = Field(default_factory=list, description='e.g. ["metrics.acc desc", "params.lr"]')
    limit: int | None = Field(None, ge=0, le=_MAX_INT64)
    offset: int = Field(0, ge=0, le=_MAX_INT64)


class ArtifactIn(_Model):
    key: str
    size: int = Field(ge=0, le=_MAX_INT64)
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    created_at: FiniteFloat | None = None


class SeriesIn(_Model):
    key: str
    steps: list[StrictInt]
    values: list[float | str]
    timestamps: list[float | str]


#: The description of a metric batch's id (a body field and a query parameter).
BATCH_ID_DOC = ("the batch's id (1-32 letters, digits, _ or -): an append whose id the run holds already "
                 "is a no-op, so a batch re-sent after a timeout is stored once")


class MetricsIn(_Model):
    metrics: list[SeriesIn]
    batch_id: str | None = Field(None, description=BATCH_ID_DOC)


class BatchItem(_Model):
    run_id: str
    params: dict[str, Any] | None = None
    tags: dict[str, Any] | None = None
    results: dict[str, Any] | None = None
    metrics: list[SeriesIn] | None = None
    batch_id: str | None = Field(None, description=BATCH_ID_DOC + " (for this item's metrics)")


class BatchIn(_Model):
    items: list[BatchItem]


class UploadIn(_Model):
    size: int | None = Field(None, ge=0, le=_MAX_INT64,
                             description="total size, checked when the upload completes")


class CompleteIn(_Model):
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="expected digest")


class UserIn(_Model):
    name: str
    role: str


class RoleIn(_Model):
    role: str


class LoginIn(_Model):
    user: str
    password: str = Field(max_length=4096, repr=False)
    description: str | None = None
    expires_in: FiniteFloat | None = Field(None, gt=0, description="seconds until the token expires")


class TokenIn(_Model):
    user: str
    description: str | None = None
    expires_in: FiniteFloat | None = Field(None, gt=0, description="seconds until the token expires")

