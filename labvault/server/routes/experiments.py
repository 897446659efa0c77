"""Experiments: list them, get or create one by name, delete one with its runs (admin)."""

from __future__ import annotations

from fastapi import Request
from starlette.responses import Response

from labvault import wire
from labvault.server.deps import Admin, Reader, Writer, state_of
from labvault.server.models import ExperimentIn
from labvault.server.protocol import JSON, api_router

router = api_router()


@router.get("/experiments", tags=["experiments"])
def list_experiments(p: Reader, request: Request, project: str | None = None) -> Response:
    backend = state_of(request).backend
    return JSON([wire.experiment_out(e) for e in backend.list_experiments(project)])


@router.post("/experiments", tags=["experiments"], summary="Get or create an experiment")
def ensure_experiment(body: ExperimentIn, p: Writer, request: Request) -> Response:
    backend = state_of(request).backend
    return JSON(wire.experiment_out(backend.ensure_experiment(body.name, body.project)))


@router.delete("/experiments/{experiment_id}", tags=["experiments"], status_code=204,
               summary="Delete an experiment with its runs (admin)")
def delete_experiment(experiment_id: str, p: Admin, request: Request) -> Response:
    state_of(request).backend.delete_experiment(experiment_id)
    return Response(status_code=204)
