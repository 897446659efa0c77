"""The S3 store's two clients and their errors: boto3 for every request, obstore for many small PUTs.

``make_boto3_client`` / ``make_obstore`` build the clients from an ``S3BlobStore``'s options (endpoint,
region, addressing style, timeouts, botocore's retry mode); both resolve credentials through boto3's
chain. ``translate_botocore`` and ``translate_obstore`` map each client's exceptions to the same
labvault errors, keyed by the S3 error code the server sent (one table of codes below, shared by both);
``is_transient`` says which botocore failures ``S3BlobStore._call`` retries. boto3 and obstore are imported
on first use, so ``import labvault`` never needs them.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import TYPE_CHECKING, Any

from labvault.blobs.abc import precondition_failed
from labvault.errors import (
    AuthenticationError,
    BackendUnavailableError,
    ConflictError,
    CorruptDataError,
    InvalidArgumentError,
    LabvaultError,
    NotFoundError,
    PermissionDeniedError,
)

if TYPE_CHECKING:
    from labvault.blobs.s3 import S3BlobStore

__all__ = [
    "BUCKET_EXISTS", "endpoint_and_style", "is_transient", "make_boto3_client", "make_obstore",
    "translate_botocore", "translate_obstore",
]

# The S3 error codes, by what they mean to a caller (both clients' translations read these).
_NOT_FOUND = {"NoSuchKey", "NotFound", "404", "NoSuchUpload"}
_AUTH = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
         "TokenRefreshRequired", "AuthorizationHeaderMalformed", "InvalidClientTokenId"}
_DENIED = ("AccessDenied", "AllAccessDisabled", "AccountProblem")
_CORRUPT = {"BadDigest", "XAmzContentSHA256Mismatch", "InvalidDigest", "InvalidChecksum"}
#: What CreateBucket answers when the bucket exists (ours, or created by a racing process).
BUCKET_EXISTS = ("BucketAlreadyOwnedByYou", "BucketAlreadyExists")
_TRANSIENT = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
              "InternalError", "ServiceUnavailable", "OperationAborted", "503", "500", "502", "504"}


# -- clients -------------------------------------------------------------------------------------------------
def endpoint_and_style(store: S3BlobStore) -> tuple[str | None, str]:
    """The endpoint (``endpoint_url=``, else ``$AWS_ENDPOINT_URL_S3`` / ``$AWS_ENDPOINT_URL``, else None
    for AWS) and the addressing style (path-style for a custom endpoint unless set) of both clients."""
    endpoint = (store.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
                or os.environ.get("AWS_ENDPOINT_URL") or None)
    return endpoint, store.addressing_style or ("path" if endpoint else "auto")


def make_boto3_client(store: S3BlobStore) -> Any:
    """The boto3 S3 client for ``store``'s options."""
    try:
        import boto3  # lazy: optional driver (extra [s3]), boto3 ~150 ms
        from botocore.config import Config  # lazy: optional driver (extra [s3])
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise BackendUnavailableError(
            "the S3 blob store needs boto3: pip install 'labvault[s3]'"
        ) from exc
    from botocore.exceptions import BotoCoreError  # lazy: optional driver (extra [s3])

    endpoint, style = endpoint_and_style(store)
    region = (store.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
              or ("us-east-1" if endpoint else None))
    retries: Any = {"max_attempts": store.max_attempts, "mode": store.retry_mode}
    s3_options: Any = {"addressing_style": style}
    config = Config(
        region_name=region,
        retries=retries,
        connect_timeout=store.connect_timeout,
        read_timeout=store.read_timeout,
        max_pool_connections=max(10, store.max_concurrency * 2 + 2),
        s3=s3_options,
        # We send and check SHA-256 ourselves; botocore's default CRC trailers would hash twice.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        tcp_keepalive=True,
    )
    try:
        session = boto3.session.Session(profile_name=store.profile)
        return session.client("s3", endpoint_url=endpoint, config=config)
    except BotoCoreError as exc:
        raise InvalidArgumentError(f"cannot configure the S3 client for {store.url}: {exc}") from exc


def make_obstore(store: S3BlobStore, client: Any) -> Any:
    """obstore's ``S3Store`` on the same bucket, endpoint, region and credentials as ``client`` (boto3's),
    or None without obstore (or when it cannot take these options: boto3 then does it all)."""
    try:
        import boto3  # lazy: optional driver (extra [s3]), boto3 ~150 ms
        from obstore.auth.boto3 import Boto3CredentialProvider  # lazy: optional driver (extra [s3])
        from obstore.store import S3Store  # lazy: optional driver (extra [s3])
    except ImportError:
        return None

    endpoint, style = endpoint_and_style(store)
    options: dict[str, Any] = {
        "region": client.meta.region_name or "us-east-1",
        "virtual_hosted_style_request": style == "virtual" or (style == "auto" and not endpoint),
        "checksum_algorithm": "SHA256",
    }
    if endpoint:
        options["endpoint"] = endpoint
    try:
        provider = Boto3CredentialProvider(boto3.session.Session(profile_name=store.profile))
        return S3Store(
            store.bucket, credential_provider=provider,
            client_options={"allow_http": bool(endpoint and endpoint.startswith("http://")),
                            "connect_timeout": dt.timedelta(seconds=store.connect_timeout),
                            "timeout": dt.timedelta(seconds=store.read_timeout)},
            retry_config={"max_retries": store.max_attempts,
                          "retry_timeout": dt.timedelta(seconds=max(store.retry_deadline, 1.0))},
            **options,
        )
    except Exception:  # no credentials, an option obstore does not take, ...: boto3 does it all
        return None


# -- errors --------------------------------------------------------------------------------------------------
def translate_botocore(store: S3BlobStore, exc: BaseException, op: str, key: str) -> LabvaultError:
    """Map a botocore exception to the labvault error a caller can handle."""
    from botocore.exceptions import (  # lazy: optional driver (extra [s3])
        ClientError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    where = store._where(key)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return AuthenticationError(
            f"S3 {op} {where}: no AWS credentials ({exc}); set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
        )
    if not isinstance(exc, ClientError):
        return BackendUnavailableError(f"S3 {op} {where} failed: {type(exc).__name__}: {exc}")
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    message = str(error.get("Message", "")) or str(exc)
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if code == "NoSuchBucket":
        return NotFoundError(f"S3 bucket {store.bucket!r} does not exist ({op} {where})")
    if code in _NOT_FOUND or status == 404:
        return NotFoundError(f"no blob {key!r} in {store.url}" if key else f"S3 {op} {where}: not found")
    if code == "PreconditionFailed" or status == 412:
        return precondition_failed(key, f"the S3 server answered 412 PreconditionFailed to {op}")
    if code == "ConditionalRequestConflict" or (status == 409 and code != "BucketAlreadyOwnedByYou"):
        return ConflictError(f"S3 {op} {where}: {code}: {message} (a concurrent write won; retry)")
    if code in _AUTH:
        return AuthenticationError(f"S3 {op} {where}: {code}: {message}")
    if code in _DENIED or status == 403:
        return PermissionDeniedError(f"S3 {op} {where}: access denied ({code}: {message})")
    if code in _CORRUPT:
        return CorruptDataError(f"S3 {op} {where}: the server rejected the data's checksum ({code})")
    if code in _TRANSIENT or status >= 500:
        return BackendUnavailableError(f"S3 {op} {where}: server error ({code or status}: {message})")
    if 400 <= status < 500:
        return InvalidArgumentError(f"S3 {op} {where}: {code}: {message}")
    return BackendUnavailableError(f"S3 {op} {where}: {code or status}: {message}")


def translate_obstore(store: S3BlobStore, exc: BaseException, op: str, key: str) -> LabvaultError:
    """Map an obstore exception to the labvault error ``translate_botocore`` gives for botocore's."""
    from obstore import exceptions as oe  # lazy: optional driver (extra [s3])

    where = store._where(key)
    text = str(exc)
    if "NoSuchBucket" in text:
        return NotFoundError(f"S3 bucket {store.bucket!r} does not exist ({op} {where})")
    if isinstance(exc, FileNotFoundError | oe.NotFoundError):
        return NotFoundError(f"no blob {key!r} in {store.url}")
    if isinstance(exc, oe.AlreadyExistsError | oe.PreconditionError):
        return precondition_failed(key, f"the S3 server answered 412 PreconditionFailed to {op}")
    if isinstance(exc, oe.UnauthenticatedError) or any(code in text for code in _AUTH):
        code = next((c for c in _AUTH if c in text), "unauthenticated")
        return AuthenticationError(f"S3 {op} {where}: the server refused the credentials ({code})")
    if isinstance(exc, oe.PermissionDeniedError | PermissionError):
        return PermissionDeniedError(f"S3 {op} {where}: access denied")
    if any(code in text for code in _CORRUPT):
        return CorruptDataError(f"S3 {op} {where}: the server rejected the data's checksum")
    return BackendUnavailableError(f"S3 {op} {where} failed: {type(exc).__name__}: "
                                   f"{text.splitlines()[0] if text else ''}")


def is_transient(exc: BaseException) -> bool:
    """Whether a botocore failure may pass by itself: no connection, a 5xx, throttling."""
    from botocore.exceptions import (  # lazy: optional driver (extra [s3])
        ClientError,
        ConnectionError,
        HTTPClientError,
    )

    if isinstance(exc, ConnectionError | HTTPClientError):
        return True
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return code in _TRANSIENT or status >= 500
    return False
