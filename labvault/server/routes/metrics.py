"""Metrics: append points to a run (JSON, or the binary frame of ``labvault.wire.codecs``: every key of
a client's flush in one request, stored once per batch id) and read a run's metric histories."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from labvault import wire
from labvault.domain import MetricSeries
from labvault.errors import InvalidArgumentError
from labvault.server.deps import Reader, Writer, state_of
from labvault.server.models import BATCH_ID_DOC
from labvault.server.protocol import JSON, api_router
from labvault.store.abc import check_batch_id

router = api_router()

# The body is read by hand (JSON or the binary frame), so the document describes it here; ``MetricsIn``
# is added to the document's schemas by ``create_app``.
_METRICS_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/MetricsIn"}},
            wire.METRICS_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def _metrics_json(body: bytes) -> tuple[list[MetricSeries], str | None]:
    """The series and batch id of a JSON metrics body ``{"metrics": [...], "batch_id": ...}`` (or a bare
    list of series)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgumentError(f"metrics body is neither JSON nor a metric frame: {exc}") from exc
    items = doc.get("metrics") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise InvalidArgumentError('metrics body must be {"metrics": [{key, steps, values, timestamps}]}')
    batch_id = doc.get("batch_id") if isinstance(doc, dict) else None
    if batch_id is not None:
        check_batch_id(batch_id)
    return [wire.series_in_json(item) for item in items], batch_id


@router.post("/runs/{run_id}/metrics", tags=["metrics"], status_code=204, openapi_extra=_METRICS_BODY,
             summary="Append metric points (JSON or the binary frame), every key of a flush at once")
async def log_metrics(run_id: str, request: Request, p: Writer,
                      batch_id: Annotated[str | None, Query(description=BATCH_ID_DOC)] = None,
                      ) -> Response:
    body = await request.body()
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == wire.METRICS_MEDIA_TYPE:
        series = wire.decode_series(body)
    else:
        series, in_body = _metrics_json(body)
        if in_body is not None and batch_id is not None and in_body != batch_id:
            raise InvalidArgumentError(f"batch id {in_body[:40]!r} in the body differs from the query's "
                                       f"{batch_id[:40]!r}")
        batch_id = batch_id or in_body
    await run_in_threadpool(state_of(request).backend.log_metrics, run_id, series, batch_id=batch_id)
    return Response(status_code=204)


@router.get("/runs/{run_id}/metric-history", tags=["metrics"],
            summary="Every point of one or more metrics (JSON arrays or the binary frame)")
def metric_history(run_id: str, p: Reader, request: Request, key: Annotated[list[str], Query()],
                   format: Annotated[str, Query(pattern="^(json|binary)$")] = "json") -> Response:
    if len(key) > 1000:
        raise InvalidArgumentError("ask for at most 1000 metric keys at once")
    backend = state_of(request).backend
    series = [backend.metric_history(run_id, k) for k in key]
    if format == "binary":
        return Response(wire.encode_series(series), media_type=wire.METRICS_MEDIA_TYPE)
    return JSON({"metrics": [wire.series_out_json(s) for s in series]})
