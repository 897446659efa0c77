"""``S3BlobStore``: blobs in an S3 bucket (AWS S3, SeaweedFS, MinIO, ...) through boto3.

URL: ``s3://bucket/prefix?endpoint_url=http://127.0.0.1:8333&region=us-east-1&profile=dev``. The endpoint
comes from ``endpoint_url=``, else ``$AWS_ENDPOINT_URL_S3`` / ``$AWS_ENDPOINT_URL``, else AWS. Credentials
come from boto3's usual chain: ``$AWS_ACCESS_KEY_ID`` / ``$AWS_SECRET_ACCESS_KEY`` / ``$AWS_SESSION_TOKEN``,
``$AWS_PROFILE`` or ``profile=``, ``~/.aws/credentials``, instance roles. Never put secrets in the URL.

* The bucket is created on the first write that finds it missing (``create_bucket=false`` to refuse).
* Objects up to ``multipart_threshold`` (16 MiB) go in one PutObject; larger ones (or streams) as a
  multipart upload of ``part_size`` parts sent by ``max_concurrency`` threads, with at most that many
  parts in memory. The upload is completed only when every part is stored; any failure, including
  Ctrl-C, aborts it, so a partial object is never visible.
* Integrity: every PutObject / UploadPart carries its SHA-256 (``x-amz-checksum-sha256``), which the
  server verifies (``BadDigest`` -> ``CorruptDataError``); reads verify the full-object or composite
  (per-part) SHA-256 the server returns, and content-addressed blobs their digest as well.
* Conditional writes use the server's ``If-None-Match: *`` / ``If-Match`` on PutObject and
  CompleteMultipartUpload: atomic even between processes; a failed precondition is ``ConflictError``.
* Retries: botocore's retry modes (``retry_mode=adaptive`` by default, ``max_attempts=5``) handle
  throttling and 5xx; on top, connection errors and 5xx are retried with exponential backoff until
  ``retry_deadline`` seconds (default 60) have passed, then ``BackendUnavailableError``.
* ``put_many`` / ``get_many`` / ``put_content_many`` run requests on a thread pool (``workers=``). Small
  in-memory objects (up to ``multipart_threshold``) in ``put_many`` and ``put_content_many`` go through
  obstore (a Rust S3 client, installed with the ``s3`` extra) when it is importable: botocore spends
  0.7-0.9 ms of CPU on each request and obstore about 0.1-0.15 ms, which decides the rate when the client
  shares its cores with the server (measured: 965 vs 3,600+ PUTs of 1 KiB a second against SeaweedFS on
  2 cores). Credentials, endpoint, region and addressing style are resolved by boto3 as for every other
  request (``obstore.auth.boto3.Boto3CredentialProvider``); every PUT carries its SHA-256, checked by the
  server. ``put_content_many`` writes each blob with ``If-None-Match: *`` instead of a HEAD first, so a
  new blob costs one request; one found stored is checked (size) and touched as ``put_content`` does.

boto3 is imported on first use, so ``import labvault`` never needs it (``pip install 'labvault[s3]'``).
The two clients and the translation of their errors are in ``labvault.blobs.s3client``; the part
sources of uploads, the verifying reader and the parallel ranged download in ``labvault.blobs.s3io``.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import hashlib
import io
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from labvault._fs import atomic_writer
from labvault._retry import Backoff, Retry
from labvault._uri import bool_option, float_option, int_option, refuse_credentials
from labvault.blobs.abc import CHUNK_SIZE, BlobSource, BlobStore, VerifyingReader, iter_source
from labvault.blobs.s3client import (
    BUCKET_EXISTS,
    is_transient,
    make_boto3_client,
    make_obstore,
    translate_botocore,
    translate_obstore,
)
from labvault.blobs.s3io import Chunked, FileParts, PartSource, RangedDownload, S3Reader, b64
from labvault.domain import validation as v
from labvault.domain.model import BlobInfo
from labvault.errors import (
    BackendUnavailableError,
    ConflictError,
    CorruptDataError,
    InvalidArgumentError,
    NotFoundError,
)

MiB = 1024 * 1024
#: Objects up to this size are written with one PutObject.
DEFAULT_MULTIPART_THRESHOLD = 16 * MiB
#: Size of each part of a multipart upload (S3 wants 5 MiB .. 5 GiB, at most 10,000 parts).
DEFAULT_PART_SIZE = 16 * MiB
DEFAULT_MAX_CONCURRENCY = 8
#: A content-addressed blob found stored already is "touched" (LastModified refreshed) when older than
#: this, so ``labvault gc``'s grace period protects a blob a writer is about to reference again.
TOUCH_AFTER_SECONDS = 3600.0
_PART_SIZE_META = "labvault-part-size"
_MAX_COPY_OBJECT = 5 * 1024 * MiB
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_T = TypeVar("_T")
# The retry schedules these loops had before ``labvault._retry`` (its default is 0.05 s to 2 s, jittered):
#: ``_call``: 0.1 s doubling to 2 s, no jitter (botocore's own retry mode jitters the requests it retries).
_CALL_BACKOFF = Backoff(first=0.1, cap=2.0, jitter=False)
#: ``_writing``, waiting for a new bucket to be visible: 0.05 s doubling to 1 s, 6 tries.
_BUCKET_BACKOFF = Backoff(first=0.05, cap=1.0, jitter=False)
#: ``_abort``: 0.2 s, then 0.4 s, 3 tries.
_ABORT_BACKOFF = Backoff(first=0.2, cap=0.4, jitter=False)


def _bucket_missing(exc: NotFoundError) -> bool:
    """Whether a NotFoundError says the bucket (not an object) does not exist."""
    text = str(exc)
    return "bucket" in text and "does not exist" in text


def _size_option(name: str, value: object, low: int, high: int) -> int:
    """An integer byte count, also from URL text such as ``16MiB`` / ``8MB`` / ``1048576``."""
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*(|b|k|kb|kib|m|mb|mib|g|gb|gib)\s*", value.lower())
        if not m:
            raise InvalidArgumentError(f"S3 option {name}={value!r} is not a size such as 16MiB")
        unit = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": MiB, "mb": 10**6, "mib": MiB,
                "g": 1024 * MiB, "gb": 10**9, "gib": 1024 * MiB}[m.group(2)]
        value = int(m.group(1)) * unit
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidArgumentError(f"S3 option {name}={value!r} must be an integer from {low} to {high}")
    return value


class S3BlobStore(BlobStore, scheme="s3"):
    """Blobs as objects under ``prefix`` in an S3 bucket (see the module docstring)."""

    OPTIONS: ClassVar[tuple[str, ...]] = (
        "endpoint_url", "region", "profile", "part_size", "multipart_threshold", "max_concurrency",
        "max_attempts", "retry_mode", "retry_deadline", "connect_timeout", "read_timeout", "create_bucket",
        "addressing_style",
    )

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        part_size: int | str = DEFAULT_PART_SIZE,
        multipart_threshold: int | str = DEFAULT_MULTIPART_THRESHOLD,
        max_concurrency: int | str = DEFAULT_MAX_CONCURRENCY,
        max_attempts: int | str = 5,
        retry_mode: str = "adaptive",
        retry_deadline: float | str = 60.0,
        connect_timeout: float | str = 5.0,
        read_timeout: float | str = 60.0,
        create_bucket: bool | str = True,
        addressing_style: str | None = None,
    ) -> None:
        if not isinstance(bucket, str) or not _BUCKET_RE.fullmatch(bucket) or ".." in bucket:
            raise InvalidArgumentError(
                f"S3 bucket name {bucket!r} is invalid: 3-63 lowercase letters, digits, '.' and '-'"
            )
        if not isinstance(prefix, str):
            raise InvalidArgumentError(f"S3 prefix must be a string, got {prefix!r}")
        prefix = prefix.strip("/")
        if prefix:
            v.validate_artifact_key(prefix)
        if endpoint_url is not None and (not isinstance(endpoint_url, str)
                                         or not endpoint_url.startswith(("http://", "https://"))):
            raise InvalidArgumentError(f"S3 endpoint_url {endpoint_url!r} must start with http:// or https://")
        if retry_mode not in ("adaptive", "standard", "legacy"):
            raise InvalidArgumentError(f"S3 retry_mode {retry_mode!r} must be adaptive, standard or legacy")
        if addressing_style not in (None, "path", "virtual", "auto"):
            raise InvalidArgumentError(
                f"S3 addressing_style {addressing_style!r} must be path, virtual or auto"
            )
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.region = region
        self.profile = profile
        self.part_size = _size_option("part_size", part_size, 5 * MiB, 5 * 1024 * MiB)
        self.multipart_threshold = _size_option("multipart_threshold", multipart_threshold, 5 * MiB,
                                                5 * 1024 * MiB)
        self.max_concurrency = int_option("S3", "max_concurrency", max_concurrency, 1, 64)
        self.max_attempts = int_option("S3", "max_attempts", max_attempts, 1, 20)
        self.retry_mode = retry_mode
        self.retry_deadline = float_option("S3", "retry_deadline", retry_deadline, 0.0, 86400.0)
        self.connect_timeout = float_option("S3", "connect_timeout", connect_timeout, 0.1, 600.0)
        self.read_timeout = float_option("S3", "read_timeout", read_timeout, 0.1, 3600.0)
        self.create_bucket = bool_option("S3", "create_bucket", create_bucket)
        self.addressing_style = addressing_style
        self._client_obj: Any = None
        self._client_lock = threading.Lock()
        self._small_obj: Any = None  # obstore's store, False when unavailable (see _small_client)
        self._bucket_lock = threading.Lock()
        self._bucket_checked = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> S3BlobStore:
        """``s3://bucket[/prefix][?endpoint_url=...&region=...&profile=...&part_size=16MiB&...]``."""
        if not isinstance(url, str):
            raise InvalidArgumentError(f"S3 URL must be a string, got {url!r}")
        refuse_credentials(url, "S3 URLs", "credentials come from the AWS environment: "
                           "$AWS_ACCESS_KEY_ID / $AWS_SECRET_ACCESS_KEY, a profile or an instance role")
        parts = urlsplit(url)
        if parts.scheme.lower() != "s3" or not parts.netloc:
            raise InvalidArgumentError(f"{url!r} is not an S3 URL: write s3://bucket/prefix")
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        merged: dict[str, Any] = {**query, **options}
        if "region_name" in merged:
            merged["region"] = merged.pop("region_name")
        unknown = sorted(set(merged) - set(cls.OPTIONS))
        if unknown:
            raise InvalidArgumentError(
                f"unknown S3 option(s) {', '.join(unknown)} in {url!r} (known: {', '.join(cls.OPTIONS)})"
            )
        return cls(parts.netloc, unquote(parts.path), **merged)

    @property
    def url(self) -> str:
        """``s3://bucket/prefix`` (without options)."""
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def __repr__(self) -> str:
        endpoint = f", endpoint_url={self.endpoint_url!r}" if self.endpoint_url else ""
        return f"S3BlobStore({self.url!r}{endpoint})"

    # -- client and error translation ---------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """The boto3 S3 client (created on first use; thread-safe)."""
        if self._client_obj is None:
            with self._client_lock:
                if self._client_obj is None:
                    self._client_obj = make_boto3_client(self)
        return self._client_obj

    def _small_client(self) -> Any:
        """obstore's ``S3Store`` for many small objects (made on first use), or None without obstore."""
        if self._small_obj is None:
            client = self.client  # resolves endpoint, region and credentials (outside the lock below)
            with self._client_lock:
                if self._small_obj is None:
                    self._small_obj = make_obstore(self, client) or False
        return self._small_obj or None

    def _small_put(self, store: Any, key: str, body: bytes, mode: str = "overwrite") -> int:
        """One PutObject through obstore (creating the bucket when it is missing, as ``_writing`` does)."""
        import obstore  # lazy: optional driver (extra [s3])

        def put() -> int:
            try:
                obstore.put(store, self._full(key), body, mode=mode)  # type: ignore[arg-type]
            except Exception as exc:
                raise translate_obstore(self, exc, "put", key) from exc
            return len(body)

        return self._writing("put", key, put)

    def _small_put_content(self, store: Any, body: bytes) -> tuple[str, int]:
        """``put_content`` of a small in-memory blob through obstore: one conditional PUT when it is new."""
        import obstore  # lazy: optional driver (extra [s3])

        raw = hashlib.sha256(body).digest()
        key = self.digest_key(raw.hex())
        try:
            self._small_put(store, key, body, mode="create")
        except ConflictError:  # stored already (If-None-Match: * failed): the same bytes, by their address
            try:
                meta = obstore.head(store, self._full(key))
            except Exception as exc:
                raise translate_obstore(self, exc, "head", key) from exc
            if int(meta["size"]) != len(body):  # a damaged object at this address: replace it
                self._small_put(store, key, body)
            elif time.time() - meta["last_modified"].timestamp() > TOUCH_AFTER_SECONDS:
                self._touch(key)
        return raw.hex(), len(body)

    def _small_bytes(self, data: BlobSource) -> bytes | None:
        """``data`` as bytes when it is in memory and fits one PutObject (obstore's path), else None."""
        if isinstance(data, bytes | bytearray | memoryview):
            view = memoryview(data).cast("B")
            if 0 < len(view) <= self.multipart_threshold:
                return view.tobytes() if not isinstance(data, bytes) else data
        return None

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _where(self, key: str) -> str:
        return f"{self.url}/{key}" if key else self.url

    def _call(self, op: str, key: str, fn: Callable[..., _T], /, **kwargs: Any) -> _T:
        """Call a client method; retry connection errors and 5xx until ``retry_deadline``; translate."""
        from botocore.exceptions import BotoCoreError, ClientError  # lazy: optional driver (extra [s3])

        deadline = time.monotonic() + self.retry_deadline  # from the call's start, the first try included
        retry: Retry | None = None
        while True:
            try:
                return fn(**kwargs)
            except (BotoCoreError, ClientError) as exc:
                if is_transient(exc):
                    if retry is None:  # made at the first failure: a call that succeeds pays nothing
                        retry = Retry(timeout=max(0.0, deadline - time.monotonic()), policy=_CALL_BACKOFF)
                    if retry.wait():
                        continue
                raise translate_botocore(self, exc, op, key) from exc

    def _ensure_bucket(self) -> None:
        """Create the bucket (idempotent; several processes may race)."""
        if not self.create_bucket:
            raise NotFoundError(f"S3 bucket {self.bucket!r} does not exist and create_bucket is false")
        from botocore.exceptions import ClientError  # lazy: optional driver (extra [s3])

        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        region = self.client.meta.region_name
        if region and region != "us-east-1" and not self.endpoint_url:
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self._call("create bucket", "", self._create_bucket_raw, **kwargs)
        except ConflictError:
            pass  # BucketAlreadyExists from a racing creator
        except InvalidArgumentError as exc:
            cause = exc.__cause__
            if not (isinstance(cause, ClientError) and cause.response.get("Error", {}).get("Code") in
                    BUCKET_EXISTS):
                raise
        self._bucket_checked = True

    def _create_bucket_raw(self, **kwargs: Any) -> None:
        from botocore.exceptions import ClientError  # lazy: optional driver (extra [s3])

        try:
            self.client.create_bucket(**kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in BUCKET_EXISTS:
                raise

    def _writing(self, op: str, key: str, fn: Callable[[], _T]) -> _T:
        """Run a write; when the bucket is missing, create it (once) and run the write again.

        Concurrent writes (``put_many``) may all find it missing: one creates it, and each writes again,
        waiting briefly when the new bucket is not visible to the server's every request yet."""
        try:
            return fn()
        except NotFoundError as exc:
            if not _bucket_missing(exc):
                raise
        with self._bucket_lock:
            if not self._bucket_checked:
                self._ensure_bucket()
        retry = Retry(tries=6, policy=_BUCKET_BACKOFF)
        while True:
            try:
                return fn()
            except NotFoundError as exc:
                if not _bucket_missing(exc) or not retry.wait():
                    raise

    # -- writes -------------------------------------------------------------------------------------------
    def _put(self, key: str, chunks: Iterator[bytes]) -> int:
        return self._put_stream(key, Chunked(chunks), None, if_absent=False, if_match=None)

    def _put_if(self, key: str, chunks: Iterator[bytes], *, if_absent: bool, if_match: str | None) -> int:
        return self._put_stream(key, Chunked(chunks), None, if_absent=if_absent, if_match=if_match)

    def _write(self, key: str, data: BlobSource, *, if_absent: bool, if_match: str | None) -> int:
        if isinstance(data, bytes | bytearray | memoryview):
            view = memoryview(data).cast("B")
            return self._put_stream(key, Chunked(iter([view.tobytes()]) if len(view) else iter(())),
                                    len(view), if_absent=if_absent, if_match=if_match)
        if isinstance(data, str | os.PathLike):
            path = Path(data)
            with path.open("rb") as fh:
                return self._put_stream(key, FileParts(fh), os.fstat(fh.fileno()).st_size,
                                        if_absent=if_absent, if_match=if_match)
        return self._put_stream(key, FileParts(data), None, if_absent=if_absent, if_match=if_match)  # type: ignore[arg-type]

    def _put_stream(self, key: str, source: PartSource, size: int | None, *, if_absent: bool,
                    if_match: str | None, checksum: bytes | None = None) -> int:
        """PutObject when the content fits in one part, else a parallel multipart upload."""
        cond: dict[str, str] = {}
        if if_absent:
            cond["IfNoneMatch"] = "*"
        elif if_match is not None:
            cond["IfMatch"] = f'"{if_match.strip(chr(34))}"'
        threshold = self.multipart_threshold
        if size is not None and size <= threshold:
            body = source.read(size)
            if len(body) != size:
                raise InvalidArgumentError(f"blob source for {key!r} changed size while it was read")
            return self._put_object(key, body, cond, checksum)
        first = source.read(max(threshold + 1, self.part_size) if size is None else self.part_size)
        if size is None and len(first) <= threshold:
            return self._put_object(key, first, cond, checksum)
        held = [first]  # handed over, so the first part is freed once uploaded (not held to the end)
        del first
        return self._writing("upload", key, lambda: self._multipart(key, held, source, cond))

    def _put_object(self, key: str, body: bytes, cond: dict[str, str], checksum: bytes | None) -> int:
        digest = checksum or hashlib.sha256(body).digest()
        self._writing("put", key, lambda: self._call(
            "put", key, self.client.put_object, Bucket=self.bucket, Key=self._full(key), Body=body,
            ChecksumSHA256=b64(digest), **cond,
        ))
        return len(body)

    def _multipart(self, key: str, held: list[bytes], source: PartSource, cond: dict[str, str]) -> int:
        full = self._full(key)
        created = self._call(
            "start upload", key, self.client.create_multipart_upload, Bucket=self.bucket, Key=full,
            ChecksumAlgorithm="SHA256", Metadata={_PART_SIZE_META: str(self.part_size)},
        )
        upload_id = created["UploadId"]
        first = held.pop()
        pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="labvault-s3-part")
        done: dict[int, dict[str, Any]] = {}
        pending: set[Future[dict[str, Any]]] = set()
        total = 0
        try:
            number = 0
            buffer: bytes = first[: self.part_size]
            rest = first[self.part_size:]
            del first
            while buffer:
                number += 1
                if number > 10_000:
                    raise InvalidArgumentError(
                        f"blob {key!r} needs over 10,000 parts of {self.part_size} bytes: raise part_size"
                    )
                while len(pending) >= self.max_concurrency:  # bound the parts held in memory
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        part = fut.result()
                        done[part["PartNumber"]] = part
                pending.add(pool.submit(self._upload_part, key, upload_id, number, buffer))
                total += len(buffer)
                if rest:
                    buffer, rest = rest[: self.part_size], rest[self.part_size:]
                    if len(buffer) < self.part_size:
                        buffer += source.read(self.part_size - len(buffer))
                else:
                    buffer = source.read(self.part_size)
            for fut in pending:
                part = fut.result()
                done[part["PartNumber"]] = part
            pending = set()
            parts = [done[n] for n in sorted(done)]
            self._call(
                "complete upload", key, self.client.complete_multipart_upload, Bucket=self.bucket, Key=full,
                UploadId=upload_id, MultipartUpload={"Parts": parts}, **cond,
            )
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            self._abort(key, upload_id)
            raise
        finally:
            pool.shutdown(wait=True)
        return total

    def _upload_part(self, key: str, upload_id: str, number: int, body: bytes) -> dict[str, Any]:
        checksum = b64(hashlib.sha256(body).digest())
        answer = self._call(
            f"upload part {number} of", key, self.client.upload_part, Bucket=self.bucket, Key=self._full(key),
            UploadId=upload_id, PartNumber=number, Body=body, ChecksumSHA256=checksum,
        )
        return {"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": checksum}

    def _abort(self, key: str, upload_id: str) -> None:
        """Abort a multipart upload (best effort, briefly retried): its parts never become an object."""
        retry = Retry(tries=3, policy=_ABORT_BACKOFF)
        while True:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=self._full(key),
                                                   UploadId=upload_id)
                return
            except Exception:
                if not retry.wait():
                    break
        # The server is unreachable: the upload stays incomplete (invisible to readers) until a bucket
        # lifecycle rule or `list_multipart_uploads` clean-up removes its parts.

    def _copy(self, src: str, dst: str) -> int:
        info = self._info(src)
        source = {"Bucket": self.bucket, "Key": self._full(src)}
        if info.size <= _MAX_COPY_OBJECT:
            self._call("copy", src, self.client.copy_object, Bucket=self.bucket, Key=self._full(dst),
                       CopySource=source, MetadataDirective="COPY")
        else:
            self._call("copy", src, self.client.copy, CopySource=source, Bucket=self.bucket,
                       Key=self._full(dst))
        return info.size

    def _touch(self, key: str) -> None:
        """Refresh LastModified (copy onto itself with the same metadata)."""
        head = self._call("head", key, self.client.head_object, Bucket=self.bucket, Key=self._full(key))
        self._call("touch", key, self.client.copy_object, Bucket=self.bucket, Key=self._full(key),
                   CopySource={"Bucket": self.bucket, "Key": self._full(key)}, MetadataDirective="REPLACE",
                   Metadata=head.get("Metadata", {}))

    def _delete(self, key: str) -> None:
        with contextlib.suppress(NotFoundError):
            self._call("delete", key, self.client.delete_object, Bucket=self.bucket, Key=self._full(key))

    def _delete_many(self, keys: builtins.list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = keys[start:start + 1000]
            try:
                answer = self._call(
                    "delete", batch[0], self.client.delete_objects, Bucket=self.bucket,
                    Delete={"Objects": [{"Key": self._full(k)} for k in batch], "Quiet": True},
                )
            except NotFoundError:
                return
            errors = [e for e in answer.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if errors:
                first = errors[0]
                raise BackendUnavailableError(
                    f"S3 delete in {self.url}: {len(errors)} object(s) not deleted, e.g. "
                    f"{first.get('Key')!r}: {first.get('Code')}: {first.get('Message')}"
                )

    # -- content addressing -------------------------------------------------------------------------------
    def put_content(self, data: BlobSource) -> tuple[str, int]:
        """Store by sha256 (hashing first, then uploading only if the digest is not stored yet)."""
        if isinstance(data, bytes | bytearray | memoryview):
            body = memoryview(data).cast("B").tobytes()
            raw = hashlib.sha256(body).digest()
            self._store_content(raw, len(body), lambda: Chunked(iter([body]) if body else iter(())))
            return raw.hex(), len(body)
        if isinstance(data, str | os.PathLike):
            path = Path(data)
            if not path.is_file():
                raise InvalidArgumentError(f"artifact source {str(path)!r} is not a readable file")
            with path.open("rb") as fh:
                raw = hashlib.file_digest(fh, "sha256").digest()
                size = fh.tell()
                fh.seek(0)
                self._store_content(raw, size, lambda: FileParts(fh))
            return raw.hex(), size
        with tempfile.TemporaryFile() as spool:
            sha = hashlib.sha256()
            for chunk in iter_source(data):
                sha.update(chunk)
                spool.write(chunk)
            size = spool.tell()
            spool.seek(0)
            raw = sha.digest()
            self._store_content(raw, size, lambda: FileParts(spool))
        return raw.hex(), size

    def _store_content(self, raw: bytes, size: int, source: Callable[[], PartSource]) -> None:
        key = self.digest_key(raw.hex())
        try:
            head = self._call("head", key, self.client.head_object, Bucket=self.bucket, Key=self._full(key))
        except NotFoundError:
            head = None
        if head is not None and int(head.get("ContentLength", -1)) == size:
            modified = head["LastModified"].timestamp()
            if time.time() - modified > TOUCH_AFTER_SECONDS:
                self._touch(key)
            return
        # Single-part uploads send the content's own digest, so the server checks the address itself.
        self._put_stream(key, source(), size, if_absent=False, if_match=None,
                         checksum=raw if size <= self.multipart_threshold else None)

    def _put_content_many(
        self, items: builtins.list[BlobSource], workers: int | None
    ) -> builtins.list[tuple[str, int]]:
        store = self._small_client() if len(items) > 1 else None
        if store is None:
            return self._map(self.put_content, items, workers)

        def put(data: BlobSource) -> tuple[str, int]:
            body = self._small_bytes(data)
            return self.put_content(data) if body is None else self._small_put_content(store, body)

        return self._map(put, items, workers)

    def _put_many(
        self, pairs: builtins.list[tuple[str, BlobSource]], workers: int | None
    ) -> builtins.list[int]:
        store = self._small_client() if len(pairs) > 1 else None

        def put(pair: tuple[str, BlobSource]) -> int:
            key, data = pair
            body = self._small_bytes(data) if store is not None else None
            if body is None:
                return self._write(key, data, if_absent=False, if_match=None)
            return self._small_put(store, key, body)

        return self._map(put, pairs, workers)

    def _get_many(self, keys: builtins.list[str], workers: int | None) -> builtins.list[bytes]:
        def get(key: str) -> bytes:
            with self._open(key) as fh:
                return fh.read()

        return self._map(get, keys, workers)

    def _map(
        self, fn: Callable[[Any], _T], items: builtins.list[Any], workers: int | None
    ) -> builtins.list[_T]:
        if len(items) <= 1:
            return [fn(item) for item in items]
        count = min(len(items), workers or self.max_concurrency * 2)
        self.client  # noqa: B018 - create the client once, before the threads race for it
        with ThreadPoolExecutor(count, thread_name_prefix="labvault-s3") as pool:
            return list(pool.map(fn, items))

    # -- reads --------------------------------------------------------------------------------------------
    def _get_object(self, key: str) -> dict[str, Any]:
        answer: dict[str, Any] = self._call("get", key, self.client.get_object, Bucket=self.bucket,
                                            Key=self._full(key), ChecksumMode="ENABLED")
        return answer

    def _open(self, key: str) -> BinaryIO:
        return self._reader(key, verify=True)

    def _reader(self, key: str, *, verify: bool) -> BinaryIO:
        answer = self._get_object(key)
        checksum = answer.get("ChecksumSHA256") if verify else None
        part_size = answer.get("Metadata", {}).get(_PART_SIZE_META)
        raw = S3Reader(self._where(key), answer["Body"], int(answer.get("ContentLength", -1)), checksum,
                        int(part_size) if part_size and part_size.isdigit() else None)
        return io.BufferedReader(raw, CHUNK_SIZE)

    def open_content(self, digest: str) -> BinaryIO:
        """Open a content-addressed blob; reading it to the end verifies its sha256 (once)."""
        try:
            raw = self._reader(self.digest_key(digest), verify=False)
        except NotFoundError as exc:
            raise NotFoundError(f"blob {digest} is missing from {self.url}") from exc
        return io.BufferedReader(VerifyingReader(raw, digest, digest), CHUNK_SIZE)

    def get_content(self, digest: str) -> bytes:
        with self.open_content(digest) as fh:
            return fh.read()

    def copy_content_to(self, digest: str, dest: Path) -> int:
        """Download a content-addressed blob to the local file ``dest``, as fast as the server allows.

        Ranged GETs of ``part_size`` bytes run ``max_concurrency`` at a time (like boto3's
        ``download_file``), each written at its offset as it streams in; one more thread hashes the
        completed prefix back from the file (the page cache) meanwhile. ``dest`` appears, renamed from
        a temporary file, only once the sha256 matched. Memory stays at a few MiB whatever the size.
        """
        key = self.digest_key(digest)
        try:
            size = self._info(key).size
        except NotFoundError as exc:
            raise NotFoundError(f"blob {digest} is missing from {self.url}") from exc
        if size <= self.part_size:
            return super().copy_content_to(digest, dest)
        full = self._full(key)

        def get_range(start: int, end: int) -> Any:
            return self._call("get", key, self.client.get_object, Bucket=self.bucket, Key=full,
                              Range=f"bytes={start}-{end - 1}")

        with atomic_writer(dest, durable=False) as out:
            fd = out.fileno()
            os.ftruncate(fd, size)
            self.client  # noqa: B018 - create the client once, before the threads race for it
            download = RangedDownload(fd, size, self.part_size, get_range, self._where(key))
            actual = download.run(self.max_concurrency)
            if actual != digest:
                raise CorruptDataError(f"blob {digest} in {self.url} is corrupt: its sha256 is {actual}")
        return size

    def _exists(self, key: str) -> bool:
        try:
            self._call("head", key, self.client.head_object, Bucket=self.bucket, Key=self._full(key))
        except NotFoundError:
            return False
        return True

    def _info(self, key: str) -> BlobInfo:
        head = self._call("head", key, self.client.head_object, Bucket=self.bucket, Key=self._full(key),
                          ChecksumMode="ENABLED")
        etag = str(head.get("ETag", "")).strip('"')
        digest = self.key_digest(key)
        checksum = head.get("ChecksumSHA256")
        if digest is None and checksum and "-" not in checksum:
            digest = base64.b64decode(checksum).hex()
        modified = head["LastModified"].timestamp()
        return BlobInfo(key, int(head["ContentLength"]), digest or etag, modified, etag)

    def _objects(self, prefix: str) -> Iterator[dict[str, Any]]:
        full = self._full(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full, "MaxKeys": 1000}
            if token:
                kwargs["ContinuationToken"] = token
            try:
                page = self._call("list", prefix, self.client.list_objects_v2, **kwargs)
            except NotFoundError:
                return  # no bucket yet: nothing stored
            yield from page.get("Contents", [])
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")

    def _relative(self, full: str) -> str:
        return full[len(self.prefix) + 1:] if self.prefix else full

    def _list(self, prefix: str) -> Iterator[str]:
        for obj in self._objects(prefix):
            yield self._relative(obj["Key"])

    def _scan(self, prefix: str) -> Iterator[BlobInfo]:
        for obj in self._objects(prefix):
            key = self._relative(obj["Key"])
            etag = str(obj.get("ETag", "")).strip('"')
            yield BlobInfo(key, int(obj["Size"]), self.key_digest(key) or etag,
                           obj["LastModified"].timestamp(), etag)

    def incomplete_uploads(self) -> builtins.list[tuple[str, str]]:
        """(key, upload id) of multipart uploads started under the prefix and never completed/aborted."""
        out: builtins.list[tuple[str, str]] = []
        answer = self._call("list uploads", "", self.client.list_multipart_uploads, Bucket=self.bucket,
                            Prefix=f"{self.prefix}/" if self.prefix else "")
        for upload in answer.get("Uploads", []) or []:
            out.append((self._relative(upload["Key"]), upload["UploadId"]))
        return out

    def abort_incomplete_uploads(self) -> int:
        """Abort every incomplete multipart upload under the prefix; return how many."""
        uploads = self.incomplete_uploads()
        for key, upload_id in uploads:
            self._abort(key, upload_id)
        return len(uploads)

    def close(self) -> None:
        client, self._client_obj = self._client_obj, None
        self._small_obj = None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
