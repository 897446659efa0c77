"""Content-addressed blobs: upload content (the server computes its sha256, and checks it against an
``X-Labvault-Sha256`` header when one is sent), ask whether a digest is stored, download by digest."""

from __future__ import annotations

import io
from typing import BinaryIO

from fastapi import Request
from starlette.responses import Response

from labvault import wire
from labvault.blobs.abc import CHUNK_SIZE, BlobStore
from labvault.errors import InvalidArgumentError, NotFoundError
from labvault.server.deps import DIGEST_RE, Reader, Writer, check_digest, state_of
from labvault.server.protocol import JSON, api_router, binary_body
from labvault.server.streaming import DigestCheckingReader, send_blob, with_body

router = api_router()


@router.post("/content", tags=["content"], summary="Upload content; the server computes its sha256",
             openapi_extra=binary_body())
async def put_content(request: Request, p: Writer) -> Response:
    state = state_of(request)
    expected = request.headers.get(wire.SHA256_HEADER)
    if expected is not None and not DIGEST_RE.fullmatch(expected.lower()):
        raise InvalidArgumentError(f"{wire.SHA256_HEADER} {expected[:80]!r} is not a sha256 hex digest")

    def store(body: BinaryIO) -> tuple[str, int]:
        if expected is None:
            return state.blobs.put_content(body)
        return state.blobs.put_content(io.BufferedReader(DigestCheckingReader(body, expected.lower()),
                                                         CHUNK_SIZE))

    digest, size = await with_body(request, state.config.max_upload_size, "upload", store)
    return JSON({"digest": digest, "size": size})


@router.head("/content/{digest}", tags=["content"], summary="Whether content is stored")
def has_content(digest: str, p: Reader, request: Request) -> Response:
    if not state_of(request).blobs.exists(BlobStore.digest_key(check_digest(digest))):
        raise NotFoundError(f"blob {digest} is not stored")
    return Response(status_code=200, headers={wire.SHA256_HEADER: digest})


@router.get("/content/{digest}", tags=["content"], summary="Download content by digest (Range supported)")
async def get_content(digest: str, request: Request, p: Reader) -> Response:
    check_digest(digest)
    return await send_blob(request, state_of(request).blobs, BlobStore.digest_key(digest), digest=digest)
