"""Runs: start one, list, search and read them, change a run's status, log its params, tags and results."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Body, Query, Request
from starlette.responses import Response

from labvault import query, wire
from labvault.domain import now
from labvault.server.deps import Reader, Writer, state_of
from labvault.server.models import RunIn, RunPatch, SearchIn
from labvault.server.protocol import JSON, api_router

router = api_router()


@router.post("/experiments/{experiment_id}/runs", tags=["runs"], summary="Start a run")
def create_run(experiment_id: str, body: RunIn, p: Writer, request: Request) -> Response:
    info = state_of(request).backend.create_run(
        experiment_id, name=body.name, parent_id=body.parent_id,
        start_time=now() if body.start_time is None else body.start_time,
        params=body.params, tags=body.tags, run_id=body.id,
    )
    return JSON(wire.run_out(info))


@router.get("/runs", tags=["runs"], summary="Every run of the experiments")
def list_runs(p: Reader, request: Request, experiment_id: Annotated[list[str], Query()]) -> Response:
    return JSON([wire.run_out(r) for r in state_of(request).backend.list_runs(experiment_id)])


@router.post("/runs/search", tags=["runs"], summary="Filter, order and page runs")
def search_runs(body: SearchIn, p: Reader, request: Request) -> Response:
    backend = state_of(request).backend
    expr = query.parse(body.filter)
    order = query.parse_order_by(body.order_by)
    ids = body.experiment_ids or [e.id for e in backend.list_experiments()]
    found = backend.search_runs(ids, expr, order, body.limit, body.offset)
    return JSON([wire.run_out(r) for r in found])


@router.get("/runs/{run_id}", tags=["runs"])
def get_run(run_id: str, p: Reader, request: Request) -> Response:
    return JSON(wire.run_out(state_of(request).backend.get_run(run_id)))


@router.patch("/runs/{run_id}", tags=["runs"], status_code=204,
              summary="Change status, end time, error text, heartbeat or name; clear end time or error")
def update_run(run_id: str, body: RunPatch, p: Writer, request: Request) -> Response:
    state_of(request).backend.update_run(run_id, status=body.status, end_time=body.end_time,
                                         error=body.error, heartbeat=body.heartbeat, name=body.name,
                                         clear=body.clear)
    return Response(status_code=204)


@router.post("/runs/{run_id}/params", tags=["runs"], status_code=204, summary="Log params (write-once)")
def log_params(run_id: str, params: Annotated[dict[str, Any], Body()], p: Writer,
               request: Request) -> Response:
    state_of(request).backend.log_params(run_id, params)
    return Response(status_code=204)


@router.post("/runs/{run_id}/tags", tags=["runs"], status_code=204, summary="Set tags")
def set_tags(run_id: str, tags: Annotated[dict[str, Any], Body()], p: Writer, request: Request) -> Response:
    state_of(request).backend.set_tags(run_id, tags)
    return Response(status_code=204)


@router.post("/runs/{run_id}/results", tags=["runs"], status_code=204, summary="Log named results")
def log_results(run_id: str, results: Annotated[dict[str, Any], Body()], p: Writer,
                request: Request) -> Response:
    state_of(request).backend.log_results(run_id, results)
    return Response(status_code=204)
