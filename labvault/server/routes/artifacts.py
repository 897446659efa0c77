"""A run's artifacts: list them, index content uploaded before (``POST``), upload and index in one
streamed request (``PUT``), download one (``Range`` supported, its digest in ``X-Labvault-Sha256``)."""

from __future__ import annotations

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from labvault import wire
from labvault.blobs.abc import BlobStore
from labvault.domain import ArtifactInfo, now
from labvault.domain import validation as v
from labvault.errors import InvalidArgumentError, NotFoundError
from labvault.server.deps import Reader, Writer, state_of
from labvault.server.models import ArtifactIn
from labvault.server.protocol import JSON, api_router
from labvault.server.streaming import send_blob, stored_size, with_body

router = api_router()


@router.get("/runs/{run_id}/artifacts", tags=["artifacts"], summary="A run's artifacts under a prefix")
def list_artifacts(run_id: str, p: Reader, request: Request, prefix: str = "") -> Response:
    return JSON([wire.artifact_out(a) for a in state_of(request).backend.list_artifacts(run_id, prefix)])


@router.post("/runs/{run_id}/artifacts", tags=["artifacts"], status_code=204,
             summary="Index an uploaded blob as a run's artifact")
def add_artifact(run_id: str, body: ArtifactIn, p: Writer, request: Request) -> Response:
    state = state_of(request)
    v.validate_artifact_key(body.key)
    try:
        stored = stored_size(state.blobs, BlobStore.digest_key(body.digest))
    except NotFoundError:
        raise NotFoundError(f"blob {body.digest} is not in the server's store: upload it first") from None
    if stored != body.size:
        raise InvalidArgumentError(f"artifact {body.key!r}: size {body.size} does not match the {stored} "
                                   f"bytes of blob {body.digest}")
    created = now() if body.created_at is None else body.created_at
    state.backend.add_artifact(run_id, ArtifactInfo(body.key, body.size, body.digest, created))
    return Response(status_code=204)


@router.put("/runs/{run_id}/artifacts/{key:path}", tags=["artifacts"],
            summary="Upload an artifact's content (streamed) and index it")
async def put_artifact(run_id: str, key: str, request: Request, p: Writer) -> Response:
    state = state_of(request)
    v.validate_artifact_key(key)
    await run_in_threadpool(state.backend.get_run, run_id)
    digest, size = await with_body(request, state.config.max_upload_size, "upload", state.blobs.put_content)
    info = ArtifactInfo(key, size, digest, now())
    await run_in_threadpool(state.backend.add_artifact, run_id, info)
    return JSON(wire.artifact_out(info))


@router.get("/runs/{run_id}/artifacts/{key:path}", tags=["artifacts"],
            summary="Download an artifact (Range supported; X-Labvault-Sha256 carries its digest)")
async def get_artifact(run_id: str, key: str, request: Request, p: Reader) -> Response:
    state = state_of(request)
    v.validate_artifact_key(key)
    info = await run_in_threadpool(state.backend.get_artifact_info, run_id, key)
    return await send_blob(request, state.blobs, BlobStore.digest_key(info.digest), size=info.size,
                           digest=info.digest)
