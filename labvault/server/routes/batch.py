"""``POST /batch``: params, tags, results and metrics of many runs in one request. Every item is checked
before anything is written, so a malformed item fails the whole batch before any write (the message
names the item)."""

from __future__ import annotations

from fastapi import Request
from starlette.responses import Response

from labvault import wire
from labvault.domain import MetricSeries
from labvault.domain import validation as v
from labvault.errors import LabvaultError
from labvault.server.deps import Writer, state_of
from labvault.server.models import BatchIn, BatchItem
from labvault.server.protocol import JSON, api_router
from labvault.store.abc import check_batch_id, check_metric_batch, check_run_id

router = api_router()


def _checked_item(i: int, item: BatchItem) -> tuple[BatchItem, list[MetricSeries]]:
    """A batch item whose values all pass the backend's checks, with its metrics parsed."""
    try:
        check_run_id(item.run_id)
        for values, what in ((item.params, "param"), (item.results, "result")):
            if values:
                v.validate_params(values, what)
        if item.tags:
            v.validate_tags(item.tags)
        if item.batch_id is not None:
            check_batch_id(item.batch_id)
        series = check_metric_batch(wire.series_in_json(s.model_dump()) for s in item.metrics or ())
    except LabvaultError as exc:
        raise type(exc)(f"batch item {i} (run {item.run_id[:80]!r}): {exc}") from exc
    return item, series


@router.post("/batch", tags=["metrics"], summary="Params, tags, results and metrics of many runs at once")
def batch(body: BatchIn, p: Writer, request: Request) -> Response:
    backend = state_of(request).backend
    items = [_checked_item(i, item) for i, item in enumerate(body.items)]  # all valid before any write
    for i, (item, series) in enumerate(items):
        try:
            if item.params:
                backend.log_params(item.run_id, item.params)
            if item.tags:
                backend.set_tags(item.run_id, item.tags)
            if item.results:
                backend.log_results(item.run_id, item.results)
            if series:
                backend.log_metrics(item.run_id, series, batch_id=item.batch_id)
        except LabvaultError as exc:
            raise type(exc)(f"batch item {i} (run {item.run_id}): {exc}") from exc
    return JSON({"applied": len(items)})
