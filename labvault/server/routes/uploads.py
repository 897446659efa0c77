"""Resumable uploads: start one, send its bytes in parts at the offset the server says it stands at
(after a dropped connection the client asks and resumes from there), assemble the parts into
content-addressed content, or abort.

The parts live in the blob store under ``uploads/<id>/`` (so any worker of a server may take the next
part): ``meta.json`` (owner, announced size), one blob ``c<offset>`` per part and, once a part is stored
whole, an empty marker ``m<offset>-<size>``; the offset is where the markers stop being contiguous from 0.
An upload is visible to its owner (and admins) only.
"""

from __future__ import annotations

import io
import json
import re
import time
import uuid
from collections.abc import Mapping
from typing import Annotated, Any, BinaryIO

from fastapi import Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from labvault.blobs.abc import CHUNK_SIZE, BlobStore
from labvault.errors import ConflictError, InvalidArgumentError, NotFoundError
from labvault.server.auth import Principal
from labvault.server.deps import UPLOADS, Writer, state_of
from labvault.server.models import CompleteIn, UploadIn
from labvault.server.protocol import JSON, api_router, binary_body, error_response
from labvault.server.state import ServerConfig
from labvault.server.streaming import ConcatReader, with_body

router = api_router()

_UPLOAD_RE = re.compile(r"[0-9a-f]{32}")
_MARKER_RE = re.compile(r"m(\d{16})-(\d{16})")


def _key(upload_id: str, name: str) -> str:
    """The blob key of one file of an upload (``name`` empty: the upload's prefix)."""
    return f"{UPLOADS}{upload_id}/{name}"


def _upload(blobs: BlobStore, upload_id: str, p: Principal) -> dict[str, Any]:
    """The upload's metadata, when ``p`` may see it (``NotFoundError`` otherwise)."""
    if not _UPLOAD_RE.fullmatch(upload_id):
        raise InvalidArgumentError(f"{upload_id[:80]!r} is not an upload id")
    try:
        meta: dict[str, Any] = json.loads(blobs.get(_key(upload_id, "meta.json")))
    except (NotFoundError, FileNotFoundError):
        raise NotFoundError(f"no upload {upload_id} (finished, aborted or never started)") from None
    if meta.get("user") != p.user and not p.allows("admin"):
        raise NotFoundError(f"no upload {upload_id} (finished, aborted or never started)")
    return meta


def _parts(blobs: BlobStore, upload_id: str) -> tuple[int, list[str]]:
    """(offset, part keys in order): the parts that are complete and contiguous from 0."""
    sizes: dict[int, int] = {}
    for key in blobs.list(_key(upload_id, "")):
        match = _MARKER_RE.fullmatch(key.rsplit("/", 1)[-1])
        if match:
            sizes[int(match.group(1))] = int(match.group(2))
    offset, keys = 0, []
    while offset in sizes:
        keys.append(_key(upload_id, f"c{offset:016d}"))
        offset += sizes[offset]
    return offset, keys


def _upload_doc(config: ServerConfig, upload_id: str, meta: Mapping[str, Any], offset: int) -> dict[str, Any]:
    return {"upload_id": upload_id, "offset": offset, "size": meta.get("size"),
            "chunk_max": config.max_chunk_size}


def _drop_upload(blobs: BlobStore, upload_id: str) -> None:
    for key in blobs.list(_key(upload_id, "")):
        if not key.endswith("meta.json"):
            blobs.delete(key)
    blobs.delete(_key(upload_id, "meta.json"))


@router.post("/uploads", tags=["uploads"], summary="Start a resumable upload")
def start_upload(body: UploadIn, p: Writer, request: Request) -> Response:
    state = state_of(request)
    upload_id = uuid.uuid4().hex
    meta = {"user": p.user, "size": body.size, "created": time.time()}
    state.blobs.put(_key(upload_id, "meta.json"), json.dumps(meta).encode())
    return JSON(_upload_doc(state.config, upload_id, meta, 0))


@router.get("/uploads/{upload_id}", tags=["uploads"], summary="Where an upload stands (its offset)")
def upload_status(upload_id: str, p: Writer, request: Request) -> Response:
    state = state_of(request)
    meta = _upload(state.blobs, upload_id, p)
    return JSON(_upload_doc(state.config, upload_id, meta, _parts(state.blobs, upload_id)[0]))


@router.put("/uploads/{upload_id}", tags=["uploads"], summary="Send the bytes at the server's `offset`",
            openapi_extra=binary_body())
async def upload_chunk(upload_id: str, request: Request, p: Writer,
                       offset: Annotated[int, Query(ge=0)]) -> Response:
    state = state_of(request)
    blobs = state.blobs
    meta = await run_in_threadpool(_upload, blobs, upload_id, p)
    current, _ = await run_in_threadpool(_parts, blobs, upload_id)
    if offset != current:
        return error_response(
            409, "ConflictError",
            f"upload {upload_id} is at offset {current}, not {offset}: resume from there")
    key = _key(upload_id, f"c{offset:016d}")

    def store(fh: BinaryIO) -> int:
        return blobs.put(key, fh)

    size = await with_body(request, state.config.max_chunk_size, "upload chunk", store)
    total = meta.get("size")
    if total is not None and offset + size > total:
        await run_in_threadpool(blobs.delete, key)
        raise InvalidArgumentError(f"upload {upload_id} was announced as {total} bytes; "
                                   f"this chunk would end at {offset + size}")
    if size:
        marker = _key(upload_id, f"m{offset:016d}-{size:016d}")
        await run_in_threadpool(blobs.put, marker, b"")
    return JSON(_upload_doc(state.config, upload_id, meta, offset + size))


@router.post("/uploads/{upload_id}/complete", tags=["uploads"],
             summary="Assemble the parts into content-addressed content")
def complete_upload(upload_id: str, body: CompleteIn, p: Writer, request: Request) -> Response:
    blobs = state_of(request).blobs
    meta = _upload(blobs, upload_id, p)
    offset, keys = _parts(blobs, upload_id)
    if meta.get("size") is not None and offset != meta["size"]:
        raise ConflictError(f"upload {upload_id} has {offset} of its {meta['size']} bytes: send the rest")
    with ConcatReader(blobs, keys) as reader:
        digest, size = blobs.put_content(io.BufferedReader(reader, CHUNK_SIZE))
    if body.sha256 is not None and body.sha256 != digest:
        raise InvalidArgumentError(f"uploaded content has sha256 {digest}, not {body.sha256}")
    _drop_upload(blobs, upload_id)
    return JSON({"digest": digest, "size": size})


@router.delete("/uploads/{upload_id}", tags=["uploads"], status_code=204, summary="Abort an upload")
def abort_upload(upload_id: str, p: Writer, request: Request) -> Response:
    blobs = state_of(request).blobs
    _upload(blobs, upload_id, p)
    _drop_upload(blobs, upload_id)
    return Response(status_code=204)
