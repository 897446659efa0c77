"""The server's endpoints, one module per resource, each an ``APIRouter`` of small handlers.

``include_routes(app)`` mounts them (each router under ``/api/v1``) in the order the OpenAPI document
lists them, each straight into the app: with FastAPI 0.165 a router included into a router that is
included in turn is matched once per level, which cost every request 15-60 us in a side-by-side
measurement (one level costs what the one router of every route did before the split).

Handlers take the role they need as a parameter (``p: Reader`` / ``Writer`` / ``Admin``, see
``labvault.server.deps``) and reach the server's state through their request (``state_of(request)``).
They carry no docstrings: FastAPI would publish a handler's docstring as its operation's description
(the document stays as it was); the route's path and ``summary=`` say what it does.

Blocking backend calls run in the thread pool: a plain ``def`` handler runs there whole; an ``async def``
one (streamed bodies, the event stream) sends each blocking call there with ``run_in_threadpool``.
"""

from __future__ import annotations

from fastapi import FastAPI

from labvault.server.routes import (
    artifacts,
    auth,
    batch,
    blobs,
    content,
    events,
    experiments,
    health,
    metrics,
    runs,
    uploads,
    users,
)

__all__ = ["MODULES", "include_routes"]

#: The resource modules, in the order of the OpenAPI document.
MODULES = (health, experiments, runs, metrics, batch, artifacts, content, uploads, blobs, events, users, auth)


def include_routes(app: FastAPI) -> None:
    """Serve every endpoint of ``app`` under ``/api/v1``."""
    for module in MODULES:
        app.include_router(module.router)
