"""Raw blobs by key: the ``BlobStore`` of HTTP clients (``labvault.blobs.http.HTTPBlobStore``). Anyone
may read; writes and deletes are admin-only. The parts of uploads in flight (``uploads/``) are their
uploader's business, reached through ``/uploads/{id}``: only admins see them here."""

from __future__ import annotations

from typing import BinaryIO

from fastapi import Request
from starlette.responses import Response

from labvault.domain import validation as v
from labvault.errors import NotFoundError
from labvault.server.auth import Principal
from labvault.server.deps import DIGEST_RE, UPLOADS, Admin, Reader, state_of
from labvault.server.protocol import JSON, api_router, binary_body
from labvault.server.streaming import send_blob, with_body

router = api_router()


def _visible(key: str, p: Principal) -> str:
    """``key`` when ``p`` may see it: the parts of in-flight uploads (``uploads/``) are the uploader's
    business, reached through ``/uploads/{id}``; only admins see them as blobs."""
    if key.startswith(UPLOADS) and not p.allows("admin"):
        raise NotFoundError(f"no blob {key[:200]!r}")
    return key


@router.get("/blobs", tags=["blobs"], summary="Blob keys under a prefix (uploads in flight: admins only)")
def list_blobs(p: Reader, request: Request, prefix: str = "") -> Response:
    keys = state_of(request).blobs.list(prefix)
    if not p.allows("admin"):
        keys = [k for k in keys if not k.startswith(UPLOADS)]
    return JSON(keys)


@router.head("/blobs/{key:path}", tags=["blobs"], summary="Whether a blob exists")
def has_blob(key: str, p: Reader, request: Request) -> Response:
    if not state_of(request).blobs.exists(_visible(key, p)):
        raise NotFoundError(f"no blob {key!r}")
    return Response(status_code=200)


@router.get("/blobs/{key:path}", tags=["blobs"], summary="Download a blob (Range supported)")
async def get_blob(key: str, request: Request, p: Reader) -> Response:
    v.validate_artifact_key(_visible(key, p))
    parts = key.split("/")
    digest = parts[-1] if parts[0] == "sha256" and DIGEST_RE.fullmatch(parts[-1]) else None
    return await send_blob(request, state_of(request).blobs, key, digest=digest)


@router.put("/blobs/{key:path}", tags=["blobs"], summary="Write a blob by key, streamed (admin)",
            openapi_extra=binary_body())
async def put_blob(key: str, request: Request, p: Admin) -> Response:
    state = state_of(request)
    v.validate_artifact_key(key)

    def store(fh: BinaryIO) -> int:
        return state.blobs.put(key, fh)

    size = await with_body(request, state.config.max_upload_size, "upload", store)
    return JSON({"key": key, "size": size})


@router.delete("/blobs/{key:path}", tags=["blobs"], status_code=204, summary="Delete a blob (admin)")
def delete_blob(key: str, p: Admin, request: Request) -> Response:
    state_of(request).blobs.delete(key)
    return Response(status_code=204)
