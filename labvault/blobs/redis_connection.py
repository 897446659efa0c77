"""The Redis connection shared by ``RedisBlobStore`` and ``RedisBackend``: settings, URIs, retries, errors.

Both the blob store (``labvault.blobs.redis``) and the backend (``labvault.store.redis``) talk to Redis
through one ``RedisConnection``: a lazily made client over a connection pool, the Lua scripts registered
on it, and ``call``, which every command goes through. It lives in ``labvault.blobs`` because the blob
layer sits below the store layer: the blob store may not import the backend, the backend imports this.

* ``parse_uri`` / ``settings_from_pool`` validate a ``redis://``, ``rediss://`` or ``unix://`` URI (or a
  ``redis.ConnectionPool``) and its options into ``RedisSettings`` (picklable, no I/O).
* ``RedisConnection.call(fn, what)`` runs ``fn(client)``; connection errors, timeouts and the "try again"
  replies (``BUSY``, ``LOADING``, ...) are retried with ``labvault._retry`` up to ``retries`` times, and
  every driver error is translated through this module's one error table (``_errors``), so no redis-py
  exception ever reaches a caller. Every operation of both users is idempotent, so a retry never
  duplicates data.
* The first call checks the vault's layout version (``P meta`` field ``format``).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import SplitResult, parse_qsl, quote, unquote, urlsplit

import redis
from redis import exceptions as rexc
from redis.backoff import NoBackoff
from redis.retry import Retry as DriverRetry

from labvault._retry import Backoff, Retry
from labvault._uri import bool_option, check_options, float_option, int_option
from labvault.errors import (
    AuthenticationError,
    BackendUnavailableError,
    CorruptDataError,
    ErrorTable,
    InvalidArgumentError,
    PermissionDeniedError,
    UnsupportedOperationError,
    translate,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE", "DEFAULT_PREFIX", "FORMAT_VERSION", "RedisConnection", "RedisSettings", "as_text",
    "parse_uri", "settings_from_pool", "validate_prefix",
]

T = TypeVar("T")

#: The key namespace of a vault when the URI names none.
DEFAULT_PREFIX = "labvault:"
#: The store layout this code reads and writes (``P meta`` field ``format``).
FORMAT_VERSION = "1"
#: Default artifact chunk size.
DEFAULT_CHUNK_SIZE = 1024 * 1024
_DEFAULT_RETRIES = 6
_DEFAULT_SOCKET_TIMEOUT = 10.0
_DEFAULT_CONNECT_TIMEOUT = 5.0
#: Error replies meaning "not executed, try again later".
_TRANSIENT = ("BUSY", "READONLY", "MASTERDOWN", "TRYAGAIN", "LOADING")
#: ``call``'s schedule: 0.1 s after the first failure, doubling up to 1 s (the schedule this loop had
#: before ``labvault._retry``; the default starts at 0.05 s and caps at 2 s).
_BACKOFF = Backoff(first=0.1, cap=1.0)

_PREFIX_RE = re.compile(r"[A-Za-z0-9_.\-]{1,100}:")
_CLIENT_NAME_RE = re.compile(r"[A-Za-z0-9_.\-:]{1,100}")
_KNOWN_OPTIONS = frozenset({
    "prefix", "db", "chunk_size", "retries", "socket_timeout", "socket_connect_timeout", "client_name",
    "max_connections", "ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname",
})
_POOL_OPTIONS = frozenset({"prefix", "chunk_size", "retries"})
_SSL_FILES = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
_PORTABLE_KWARGS = (
    "host", "port", "db", "path", "username", "password", "socket_timeout", "socket_connect_timeout",
    "socket_keepalive", "client_name", "health_check_interval", "protocol", "ssl_keyfile", "ssl_certfile",
    "ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_path", "ssl_check_hostname", "ssl_password",
)


def as_text(raw: bytes | str) -> str:
    """A reply (bytes: labvault reads replies undecoded) as text."""
    return raw.decode() if isinstance(raw, bytes) else raw


# -- settings and URIs ---------------------------------------------------------------------------------------
def validate_prefix(prefix: object) -> str:
    """Check a key namespace: letters, digits, ``_ - .`` and exactly one ``:``, at the end."""
    if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
        raise InvalidArgumentError(
            f"invalid Redis key prefix {prefix!r}: use 1 to 100 letters, digits, '_', '-' or '.' followed "
            "by one ':' (e.g. 'myvault:'); no wildcards (* ? [ ]), so a vault's keys never match another's"
        )
    return prefix


@dataclass(frozen=True)
class RedisSettings:
    """Everything a backend or blob store needs to (re)connect; picklable."""

    prefix: str
    chunk_size: int
    retries: int
    where: str  # host:port or the socket path, for messages
    identity: str  # canonical URI: equality and hashing
    connection_class: type[Any]
    pool_kwargs: Mapping[str, Any]


def _common_options(merged: Mapping[str, Any]) -> tuple[str, int, int]:
    prefix = validate_prefix(merged.get("prefix", DEFAULT_PREFIX))
    chunk = int_option("Redis", "chunk_size", merged.get("chunk_size", DEFAULT_CHUNK_SIZE), 1024,
                       512 * 1024 * 1024)
    retries = int_option("Redis", "retries", merged.get("retries", _DEFAULT_RETRIES), 0, 100)
    return prefix, chunk, retries


def _unix_names(path: str, db: Any, prefix: str) -> tuple[str, str]:
    """(where, identity) of a vault behind a Unix socket."""
    return f"unix socket {path}", f"unix://{quote(path)}?db={db}&prefix={prefix}"


def _tcp_names(scheme: str, host: str, port: Any, db: Any, prefix: str) -> tuple[str, str]:
    """(where, identity) of a vault on host:port."""
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}", f"{scheme}://{shown.lower()}:{port}/{db}?prefix={prefix}"


def _split_uri(uri: object, options: Mapping[str, Any]) -> tuple[SplitResult, int | None, dict[str, Any]]:
    """The URI's parts, its port and its query options merged with ``options`` (checked, no I/O)."""
    if not isinstance(uri, str) or "://" not in uri:
        raise InvalidArgumentError(f"{uri!r} is not a redis://, rediss:// or unix:// URI")
    if "\x00" in uri or any(ch.isspace() for ch in uri):
        raise InvalidArgumentError(f"{uri!r} contains a NUL or whitespace character")
    try:
        parts = urlsplit(uri)
        port = parts.port
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise InvalidArgumentError(f"malformed Redis URI {uri!r}: {exc}") from exc
    if parts.scheme.lower() not in ("redis", "rediss", "unix"):
        raise InvalidArgumentError(f"{uri!r} is not a redis://, rediss:// or unix:// URI")
    query: dict[str, str] = {}
    for name, value in pairs:
        if name in query:
            raise InvalidArgumentError(f"Redis URI {uri!r} gives option {name!r} twice")
        query[name] = value
    clash = sorted(set(query) & set(options))
    if clash:
        raise InvalidArgumentError(
            f"Redis option(s) {', '.join(clash)} given both in the URI and as arguments")
    merged: dict[str, Any] = {**query, **options}
    check_options("redis", merged, _KNOWN_OPTIONS)
    return parts, port, merged


def _client_kwargs(parts: SplitResult, merged: Mapping[str, Any]) -> dict[str, Any]:
    """The pool's socket, naming and credential arguments from the options and the URI's user info."""
    timeout = merged.get("socket_timeout", _DEFAULT_SOCKET_TIMEOUT)
    connect_timeout = merged.get("socket_connect_timeout", _DEFAULT_CONNECT_TIMEOUT)
    kwargs: dict[str, Any] = {
        "socket_timeout": float_option("Redis", "socket_timeout", timeout, 0, 3600, exclusive_low=True),
        "socket_connect_timeout": float_option("Redis", "socket_connect_timeout", connect_timeout, 0, 3600,
                                               exclusive_low=True),
    }
    if "client_name" in merged:
        name = merged["client_name"]
        if not isinstance(name, str) or not _CLIENT_NAME_RE.fullmatch(name):
            raise InvalidArgumentError(
                "Redis option client_name must be 1 to 100 letters, digits, '_', '-', '.', ':', "
                f"got {name!r}")
        kwargs["client_name"] = name
    if "max_connections" in merged:
        kwargs["max_connections"] = int_option("Redis", "max_connections", merged["max_connections"], 1,
                                               100_000)
    if parts.username:
        kwargs["username"] = unquote(parts.username)
    if parts.password:
        kwargs["password"] = unquote(parts.password)
    return kwargs


def _unix_target(uri: str, parts: SplitResult, db: int | None, prefix: str,
                 kwargs: dict[str, Any]) -> tuple[type[Any], str, str]:
    """(connection class, where, identity) of ``unix:///path``; the socket and db go into ``kwargs``."""
    if parts.hostname:
        raise InvalidArgumentError(
            f"Redis URI {uri!r} names a host {parts.hostname!r}: write unix:///absolute/path/redis.sock")
    path = unquote(parts.path)
    if not path.startswith("/") or path.endswith("/"):
        raise InvalidArgumentError(f"Redis URI {uri!r} names no socket path: write unix:///path/redis.sock")
    db = db or 0
    kwargs.update(path=path, db=db)
    return (redis.UnixDomainSocketConnection, *_unix_names(path, db, prefix))


def _tcp_target(uri: str, parts: SplitResult, port: int | None, db: int | None, prefix: str,
                merged: Mapping[str, Any], kwargs: dict[str, Any]) -> tuple[type[Any], str, str]:
    """(connection class, where, identity) of ``redis://`` / ``rediss://``; host, port, db and the TLS
    options go into ``kwargs``."""
    scheme = parts.scheme.lower()
    host = parts.hostname or "localhost"
    port = port or 6379
    raw_path = unquote(parts.path)
    if raw_path not in ("", "/"):
        digits = raw_path[1:]
        if not digits.isdigit():
            raise InvalidArgumentError(
                f"Redis URI {uri!r}: the path must be a database number (redis://host:port/0), "
                f"got {raw_path!r}")
        path_db = int(digits)
        if db is not None and db != path_db:
            raise InvalidArgumentError(f"Redis URI {uri!r} names database {path_db} and db={db}")
        db = path_db
    db = db or 0
    kwargs.update(host=host, port=port, db=db)
    connection_class: type[Any] = redis.Connection
    if scheme == "rediss":
        connection_class = redis.SSLConnection
        for name in _SSL_FILES:
            if name in merged:
                if not isinstance(merged[name], str) or not merged[name]:
                    raise InvalidArgumentError(f"Redis option {name} must be a non-empty string")
                kwargs[name] = merged[name]
        if "ssl_check_hostname" in merged:
            kwargs["ssl_check_hostname"] = bool_option("Redis", "ssl_check_hostname",
                                                        merged["ssl_check_hostname"])
    return (connection_class, *_tcp_names(scheme, host, port, db, prefix))


def parse_uri(uri: object, options: Mapping[str, Any]) -> RedisSettings:
    """Validate a ``redis://``, ``rediss://`` or ``unix://`` URI and its options (no I/O)."""
    parts, port, merged = _split_uri(uri, options)
    assert isinstance(uri, str)
    prefix, chunk, retries = _common_options(merged)
    kwargs = _client_kwargs(parts, merged)
    ssl_names = sorted(k for k in merged if k.startswith("ssl_"))
    if ssl_names and parts.scheme.lower() != "rediss":
        raise InvalidArgumentError(f"Redis option(s) {', '.join(ssl_names)} need a rediss:// URI")
    db = int_option("Redis", "db", merged["db"], 0, 1_000_000) if "db" in merged else None
    if parts.scheme.lower() == "unix":
        connection_class, where, identity = _unix_target(uri, parts, db, prefix, kwargs)
    else:
        connection_class, where, identity = _tcp_target(uri, parts, port, db, prefix, merged, kwargs)
    return RedisSettings(prefix, chunk, retries, where, identity, connection_class, kwargs)


def settings_from_pool(pool: Any, options: Mapping[str, Any]) -> RedisSettings:
    """The settings of a vault on an existing ``redis.ConnectionPool`` (its server, its socket options)."""
    check_options("redis (ConnectionPool)", options, _POOL_OPTIONS)
    prefix, chunk, retries = _common_options(options)
    given = pool.connection_kwargs
    # what a new pool needs to reach the same server (the given pool's internals are not picklable)
    kwargs = {k: given[k] for k in _PORTABLE_KWARGS if given.get(k) is not None}
    cls = pool.connection_class
    db = kwargs.get("db", 0) or 0
    if isinstance(cls, type) and issubclass(cls, redis.UnixDomainSocketConnection):
        where, identity = _unix_names(str(kwargs.get("path", "")), db, prefix)
    else:
        scheme = "rediss" if isinstance(cls, type) and issubclass(cls, redis.SSLConnection) else "redis"
        where, identity = _tcp_names(scheme, str(kwargs.get("host", "localhost")), kwargs.get("port", 6379),
                                     db, prefix)
    return RedisSettings(prefix, chunk, retries, where, identity, cls, kwargs)


# -- errors --------------------------------------------------------------------------------------------------
def _retryable(exc: BaseException) -> bool:
    """Whether the command did not run and may run again: the connection broke or timed out, or the
    server answered "busy with a script, failing over, loading, ..."."""
    if isinstance(exc, rexc.AuthenticationError | rexc.AuthorizationError):
        return False  # redis-py's ConnectionErrors too, but retrying cannot help
    if isinstance(exc, rexc.ConnectionError | rexc.TimeoutError | OSError):
        return True
    return isinstance(exc, rexc.ResponseError) and str(exc).startswith(_TRANSIENT)


def _errors(settings: RedisSettings, what: str, attempts: int) -> ErrorTable:
    """The one table of redis-py errors -> labvault errors for a failed ``what`` after ``attempts`` tries
    (first match wins: redis-py's AuthenticationError and AuthorizationError are ConnectionErrors, its
    NoPermissionError a ResponseError)."""
    where = settings.where

    def refused(exc: BaseException) -> AuthenticationError:
        return AuthenticationError(f"Redis at {where} refused the credentials: {exc}")

    def unavailable(exc: BaseException) -> BackendUnavailableError:
        return BackendUnavailableError(
            f"Redis at {where} is unavailable ({what} failed {attempts} times): {exc}")

    def rejected(exc: BaseException) -> CorruptDataError | BackendUnavailableError:
        text = str(exc)
        if text.startswith("WRONGTYPE"):
            return CorruptDataError(
                f"Redis at {where}: a key under prefix {settings.prefix!r} has an unexpected "
                f"type ({text}); is another program using this prefix?")
        return BackendUnavailableError(f"Redis at {where} rejected the {what}: {text}")

    return {
        rexc.AuthenticationError: refused,
        rexc.AuthorizationError: refused,
        rexc.ConnectionError: unavailable,
        rexc.TimeoutError: unavailable,
        OSError: unavailable,
        rexc.NoPermissionError: lambda exc: PermissionDeniedError(
            f"Redis at {where} denied the {what}: {exc}"),
        rexc.ResponseError: rejected,
        rexc.RedisError: lambda exc: BackendUnavailableError(f"Redis at {where} failed the {what}: {exc}"),
    }


# -- the connection ------------------------------------------------------------------------------------------
class RedisConnection:
    """A lazily made client, the Lua scripts registered on it, and the retrying, translating ``call``.

    ``scripts`` maps a name to its Lua source; ``script(name)`` is the registered script (redis-py sends
    ``EVALSHA`` and loads the source once when the server does not know it yet).
    """

    def __init__(self, settings: RedisSettings, scripts: Mapping[str, str], pool: Any = None) -> None:
        self.settings = settings
        self._sources = dict(scripts)
        self._pool = pool
        self._own_pool = pool is None
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._checked = False

    def client(self) -> Any:
        """The ``redis.Redis`` client (made, with its pool, on first use; thread-safe)."""
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is None:
                if self._pool is None:
                    # No retries inside redis-py: ``call`` retries whole idempotent operations itself.
                    kwargs = {**self.settings.pool_kwargs, "retry": DriverRetry(NoBackoff(), 0)}
                    self._pool = redis.ConnectionPool(connection_class=self.settings.connection_class,
                                                      **kwargs)
                client = redis.Redis(connection_pool=self._pool)
                self._scripts = {name: client.register_script(src) for name, src in self._sources.items()}
                self._client = client
            return self._client

    def script(self, name: str) -> Any:
        """The registered script ``name`` (call it with ``keys=``, ``args=``, ``client=``)."""
        self.client()
        return self._scripts[name]

    def call(self, fn: Callable[[Any], T], what: str = "request") -> T:
        """Run ``fn(client)``, retrying connection errors with backoff; translate driver errors."""
        retry: Retry | None = None  # made at the first failure: a call that succeeds pays nothing
        while True:
            try:
                client = self.client()
                if not self._checked:
                    self._check_format(client)
                return fn(client)
            except (rexc.RedisError, OSError) as exc:
                if _retryable(exc):
                    if retry is None:
                        retry = Retry(tries=self.settings.retries + 1, policy=_BACKOFF)
                    if retry.wait():
                        continue
                error = translate(exc, _errors(self.settings, what, retry.attempts if retry else 1))
                assert error is not None  # the table ends with RedisError and holds OSError
                raise error from exc

    def _check_format(self, client: Any) -> None:
        stored = client.hget(self.settings.prefix + "meta", "format")
        if stored is not None and as_text(stored) != FORMAT_VERSION:
            raise UnsupportedOperationError(
                f"the vault under prefix {self.settings.prefix!r} at Redis {self.settings.where} has layout "
                f"version {as_text(stored)}, this labvault reads version {FORMAT_VERSION}: upgrade labvault")
        self._checked = True

    def close(self) -> None:
        """Drop the client; disconnect the pool when this connection made it (a pool you gave stays open)."""
        with self._lock:
            pool, client = self._pool, self._client
            self._client = None
            self._scripts = {}
            if self._own_pool:
                self._pool = None
        if client is not None and self._own_pool and pool is not None:
            pool.disconnect()
