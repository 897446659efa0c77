"""The server itself: ``GET /health`` (liveness, no authentication) and ``GET /info`` (version, backend,
features, auth mode, limits, and who the caller is)."""

from __future__ import annotations

from fastapi import Request
from starlette.responses import Response

from labvault import wire
from labvault._version import version
from labvault.server.deps import Reader, state_of
from labvault.server.protocol import JSON, api_router

router = api_router()


@router.get("/health", tags=["server"], summary="Liveness (no authentication)")
async def health() -> Response:
    return JSON({"status": "ok"})


@router.get("/info", tags=["server"], summary="Server version, backend, features, auth mode")
def info(p: Reader, request: Request) -> Response:
    state = state_of(request)
    cls = type(state.backend)
    return JSON({
        "server": "labvault", "version": version(), "api": wire.API_VERSION,
        "backend": cls.scheme or cls.__name__,
        "features": {
            "events": True, "cross_process_events": bool(cls.supports_events),
            "persistent": bool(cls.persistent), "multiprocess": bool(cls.multiprocess),
            "resumable_uploads": True, "ranges": True, "metric_formats": ["json", "binary"],
            "batch": True, "metric_batch_ids": True,
        },
        "auth": "none" if state.auth is None else "token",
        "user": {"name": p.user, "role": p.role},
        "limits": {"max_request_size": state.config.max_request_size,
                   "max_upload_size": state.config.max_upload_size,
                   "max_chunk_size": state.config.max_chunk_size},
        "started": state.started,
    })
