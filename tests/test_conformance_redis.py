"""The Redis backend runs the whole conformance suite, and the hook checks against its keys, on the real
server on 127.0.0.1:6379."""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
from raw_media import RedisKeys, RedisMedium

from labvault.testing import BackendHookTests, BackendTests
from labvault.testing.plugin import require_service

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
START_REDIS = (
    'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no '
    "--dir /var/lib/redis --logfile /var/log/redis/ci.log"
)


def redis_available() -> bool:
    """Whether a Redis server answers PING on the test address."""
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def fresh_redis_uri() -> Iterator[str]:
    """A URI with a prefix of its own; every key under it is deleted afterwards (nothing else is)."""
    require_service("Redis", redis_available(), START_REDIS)
    uri = f"redis://{REDIS_HOST}:{REDIS_PORT}/0?prefix=lvtest-{uuid.uuid4().hex[:12]}:"
    yield uri
    from labvault.store.redis.backend import RedisBackend

    with contextlib.closing(RedisBackend.from_uri(uri)) as backend:
        backend.destroy()


class TestRedisBackend(BackendTests):
    heavy = True

    @pytest.fixture
    def uri(self) -> Iterator[str]:
        yield from fresh_redis_uri()


class TestRedisBackendHooks(RedisKeys, BackendHookTests):
    @pytest.fixture
    def uri(self) -> Iterator[str]:
        yield from fresh_redis_uri()

    @pytest.fixture
    def raw(self, uri: str) -> Iterator[RedisMedium]:
        """A client on the test database and the URI's prefix."""
        import redis

        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0)
        yield RedisMedium(client, parse_qs(urlsplit(uri).query)["prefix"][0])
        client.close()
