"""``HTTPBlobStore``: the blob store of a labvault server, seen through its REST API (what ``HTTPBackend``
keeps artifacts in).

Content goes up by content (``POST /content``: the server computes the sha256), files from
``resumable_threshold`` bytes on as resumable uploads (``/uploads``) that continue where the server
says they stand after a dropped connection; downloads stream, resume with ``Range`` where a connection
broke, and are verified against their digest. Raw ``put``/``delete`` by key (``/blobs``) need the admin
role. Every request goes through ``labvault.wire.transport.APIClient``.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import httpx
import orjson

from labvault._retry import Retry
from labvault.blobs.abc import CHUNK_SIZE, BlobSource, BlobStore, VerifyingReader, iter_source
from labvault.errors import BackendUnavailableError, ConflictError, InvalidArgumentError, NotFoundError
from labvault.wire.codecs import SHA256_HEADER
from labvault.wire.transport import CUT_OFF, RESUME_BACKOFF, APIClient

__all__ = ["RESUMABLE_THRESHOLD", "UPLOAD_CHUNK", "HTTPBlobStore"]

#: Files from this size on are sent as resumable uploads.
RESUMABLE_THRESHOLD = 32 * 1024 * 1024
#: Size of one part of a resumable upload.
UPLOAD_CHUNK = 16 * 1024 * 1024


def _quote_key(key: str) -> str:
    return quote(key, safe="/")


class _ResponseReader(io.RawIOBase):
    """A streamed download as a binary file; a dropped connection resumes with ``Range`` where it broke
    (``api.retries`` times over the whole download)."""

    def __init__(self, api: APIClient, path: str, resp: httpx.Response) -> None:
        self._api = api
        self._path = path
        self._resp = resp
        self._iter: Iterator[bytes] = resp.iter_bytes(CHUNK_SIZE)
        self._etag = resp.headers.get("etag")
        self._buf = b""
        self._pos = 0
        self._offset = 0  # bytes handed out so far
        self._resumes = Retry(tries=api.retries + 1, policy=RESUME_BACKOFF)

    def readable(self) -> bool:
        return True

    def _next_chunk(self) -> bytes:
        while True:
            try:
                return next(self._iter, b"")
            except CUT_OFF as exc:
                self._resp.close()
                if not self._resumes.wait():
                    raise BackendUnavailableError(
                        f"download of {self._path} broke after {self._offset} bytes: {exc}") from exc
                skipped = self._resume(exc)
                if skipped:
                    return skipped

    def _resume(self, exc: Exception) -> bytes:
        """Ask again from the first byte not handed out yet; what a server that ignored the range sent
        from there on (nothing when it honoured the range: reading goes on from ``_iter``)."""
        headers = {"Range": f"bytes={self._offset}-"}
        resp = self._api.request("GET", self._path, headers=headers, stream=True, idempotent=True)
        if self._etag is not None and resp.headers.get("etag") not in (None, self._etag):
            resp.close()
            raise BackendUnavailableError(f"{self._path} changed while it was being downloaded") from exc
        self._resp = resp
        self._iter = resp.iter_bytes(CHUNK_SIZE)
        if resp.status_code == 200:  # the server ignored the range: skip what we have
            skip = self._offset
            while skip:
                chunk = next(self._iter, b"")
                if not chunk:
                    break
                if len(chunk) > skip:
                    self._buf, self._pos = chunk[skip:], 0
                    return self._buf
                skip -= len(chunk)
        return b""

    def readinto(self, buffer: Any) -> int:
        if self._pos >= len(self._buf):
            self._buf, self._pos = self._next_chunk(), 0
            if not self._buf:
                return 0
        n = min(len(buffer), len(self._buf) - self._pos)
        buffer[:n] = self._buf[self._pos : self._pos + n]
        self._pos += n
        self._offset += n
        return n

    def close(self) -> None:
        self._resp.close()
        super().close()


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK_SIZE):
            yield chunk


class HTTPBlobStore(BlobStore):
    """The server's blob store seen through its API: content-addressed uploads and verified downloads;
    raw ``put``/``delete`` by key need the admin role.

    ``upload_chunk_size`` is the size of one part of a resumable upload, ``resumable_threshold`` the size
    from which a file or seekable stream goes as one.
    """

    def __init__(self, api: APIClient, *, upload_chunk_size: int = UPLOAD_CHUNK,
                 resumable_threshold: int = RESUMABLE_THRESHOLD) -> None:
        self.api = api
        self.upload_chunk_size = int(upload_chunk_size)
        self.resumable_threshold = int(resumable_threshold)

    def __repr__(self) -> str:
        return f"HTTPBlobStore({self.api.base_url!r})"

    # -- raw keys --------------------------------------------------------------------------------------------
    def _put(self, key: str, chunks: Iterator[bytes]) -> int:
        resp = self.api.request("PUT", f"/blobs/{_quote_key(key)}", content=lambda: chunks, retries=0,
                                headers={"Content-Type": "application/octet-stream"})
        return int(orjson.loads(resp.content)["size"])

    def _open(self, key: str) -> BinaryIO:
        path = f"/blobs/{_quote_key(key)}"
        resp = self.api.request("GET", path, stream=True, idempotent=True)
        return io.BufferedReader(_ResponseReader(self.api, path, resp), CHUNK_SIZE)

    def _exists(self, key: str) -> bool:
        return self._head(f"/blobs/{_quote_key(key)}")

    def _delete(self, key: str) -> None:
        self.api.request("DELETE", f"/blobs/{_quote_key(key)}", idempotent=True)

    def _list(self, prefix: str) -> Iterator[str]:
        keys = self.api.json("GET", "/blobs", params={"prefix": prefix}, idempotent=True)
        return iter(keys)

    def _head(self, path: str) -> bool:
        try:
            self.api.request("HEAD", path, idempotent=True)
        except NotFoundError:
            return False
        return True

    # -- content ---------------------------------------------------------------------------------------------
    def open_content(self, digest: str) -> BinaryIO:
        """Stream content by digest; reading to the end verifies it (``CorruptDataError`` otherwise)."""
        path = f"/content/{digest}"
        resp = self.api.request("GET", path, stream=True, idempotent=True)
        raw = _ResponseReader(self.api, path, resp)
        return io.BufferedReader(VerifyingReader(raw, digest, digest), CHUNK_SIZE)  # type: ignore[arg-type]

    def has_content(self, digest: str) -> bool:
        """Whether the server stores this content already."""
        return self._head(f"/content/{digest}")

    def put_content(self, data: BlobSource) -> tuple[str, int]:
        """Upload ``data`` (bytes, a path or a binary file) to the server, which hashes it while storing it.

        Large files and seekable streams go as resumable uploads (``upload(...)``); in-memory bytes
        the server already has are not sent again.
        """
        if isinstance(data, bytes | bytearray | memoryview):
            payload = bytes(data)
            digest = hashlib.sha256(payload).hexdigest()
            if len(payload) >= CHUNK_SIZE and self.has_content(digest):
                return digest, len(payload)
            if len(payload) >= self.resumable_threshold:
                return self.upload(io.BytesIO(payload), len(payload))
            return self._post_content(payload, digest)
        if isinstance(data, str | os.PathLike):
            path = Path(data)
            if not path.is_file():
                raise InvalidArgumentError(f"artifact source {str(path)!r} is not a readable file")
            size = path.stat().st_size
            if size >= self.resumable_threshold:
                with path.open("rb") as fh:
                    return self.upload(fh, size)
            return self._post_content(lambda: _file_chunks(path))
        seekable = getattr(data, "seekable", None)
        if callable(getattr(data, "read", None)) and callable(seekable) and seekable():
            stream: Any = data
            start = stream.tell()
            size = stream.seek(0, io.SEEK_END) - start
            stream.seek(start)
            if size >= self.resumable_threshold:
                return self.upload(stream, size)
        return self._post_content(iter_source(data), retry=False)

    def _post_content(self, body: bytes | Callable[[], Iterable[bytes]] | Iterator[bytes],
                      digest: str | None = None, retry: bool = True) -> tuple[str, int]:
        headers = {"Content-Type": "application/octet-stream"}
        if digest is not None:
            headers[SHA256_HEADER] = digest
        content: bytes | Callable[[], Iterable[bytes]]
        if isinstance(body, bytes) or callable(body):
            content = body
        else:
            chunks = body
            content = lambda: chunks  # noqa: E731 - a one-shot stream: sent once, never retried
        doc = self.api.json("POST", "/content", content=content, headers=headers, idempotent=retry,
                            retries=None if retry else 0)
        return str(doc["digest"]), int(doc["size"])

    # -- resumable uploads -------------------------------------------------------------------------------
    def upload(self, fh: BinaryIO, size: int, *, upload_id: str | None = None) -> tuple[str, int]:
        """Send ``size`` bytes of a seekable file from its position as a resumable upload.

        Parts of ``upload_chunk_size`` bytes go one request each; after a failure the client asks the
        server where the upload stands and continues from there (``retries`` failures in a row at the
        most). Pass ``upload_id`` to resume an upload started earlier (the file must be the same). The
        server checks the whole file's sha256.
        """
        api = self.api
        start = fh.tell()
        if upload_id is None:
            doc = api.json("POST", "/uploads", json_body={"size": size})
            upload_id = str(doc["upload_id"])
            offset = 0
        else:
            doc = api.json("GET", f"/uploads/{upload_id}", idempotent=True)
            offset = int(doc["offset"])
        chunk_max = int(doc.get("chunk_max") or self.upload_chunk_size)
        part = max(64 * 1024, min(self.upload_chunk_size, chunk_max))
        sha: Any = hashlib.sha256() if offset == 0 else None
        failing: Retry | None = None  # the failures in a row so far
        while offset < size:
            fh.seek(start + offset)
            chunk = fh.read(min(part, size - offset))
            if not chunk:
                raise InvalidArgumentError(f"the file ended at byte {offset} of the announced {size}")
            try:
                reply = api.json("PUT", f"/uploads/{upload_id}", params={"offset": offset}, content=chunk,
                                 headers={"Content-Type": "application/octet-stream"}, retries=0)
                new_offset = int(reply["offset"])
            except (BackendUnavailableError, ConflictError):
                failing = failing or Retry(tries=api.retries + 1, policy=RESUME_BACKOFF)
                if not failing.wait():
                    raise
                new_offset = int(api.json("GET", f"/uploads/{upload_id}", idempotent=True)["offset"])
            else:
                failing = None
            if new_offset == offset + len(chunk):
                if sha is not None:
                    sha.update(chunk)
            elif new_offset != offset:
                sha = None  # resumed somewhere else: the server's own digest is what counts
            offset = new_offset
        body = {"sha256": sha.hexdigest()} if sha is not None else {}
        done = api.json("POST", f"/uploads/{upload_id}/complete", json_body=body,
                        timeout=max(api.timeout, 600.0))
        return str(done["digest"]), int(done["size"])
