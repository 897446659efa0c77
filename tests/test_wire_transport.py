"""``labvault.wire.transport.APIClient``: the one request method of the HTTP client, its retries (through
``labvault._retry``: 0.1 s doubling to 2 s, ``retries`` + 1 attempts) and its mapping of failures."""

from __future__ import annotations

import httpx
import pytest

from labvault import _retry
from labvault.errors import BackendUnavailableError, InvalidArgumentError, NotFoundError
from labvault.wire.transport import BACKOFF, RESUME_BACKOFF, APIClient


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    paused: list[float] = []
    monkeypatch.setattr(_retry.time, "sleep", paused.append)
    return paused


def _client(handler: httpx.MockTransport, retries: int = 2) -> APIClient:
    return APIClient("http://server", token="lv_t", retries=retries, transport=handler)


def test_idempotent_calls_are_retried_on_503_with_the_backoff(sleeps: list[float]) -> None:
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"])
        return httpx.Response(503, json={"error": "BackendUnavailableError", "message": "busy"})

    api = _client(httpx.MockTransport(answer), retries=3)
    with pytest.raises(BackendUnavailableError, match="busy"):
        api.request("GET", "/x", idempotent=True)
    assert seen == ["Bearer lv_t"] * 4
    assert len(sleeps) == 3
    for n, pause in enumerate(sleeps, 1):
        base = min(2.0, 0.1 * 2 ** (n - 1))
        assert base / 2 <= pause <= base
    assert (BACKOFF.first, BACKOFF.cap, RESUME_BACKOFF.first, RESUME_BACKOFF.cap) == (0.1, 2.0, 0.2, 2.0)


def test_a_call_that_may_have_been_handled_is_retried_only_when_idempotent(sleeps: list[float]) -> None:
    calls = 0

    def cut(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise httpx.ReadError("connection reset by peer")
        return httpx.Response(200, json={"ok": True})

    assert _client(httpx.MockTransport(cut)).json("GET", "/x", idempotent=True) == {"ok": True}
    assert calls == 2 and len(sleeps) == 1
    calls = 0
    with pytest.raises(BackendUnavailableError, match="unreachable"):
        _client(httpx.MockTransport(cut)).request("POST", "/x")
    assert calls == 1


def test_a_request_that_never_left_is_always_retried(sleeps: list[float]) -> None:
    calls = 0

    def refuse(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ConnectError("connection refused")

    with pytest.raises(BackendUnavailableError, match="unreachable"):
        _client(httpx.MockTransport(refuse), retries=1).request("POST", "/x")
    assert calls == 2 and len(sleeps) == 1


def test_error_answers_become_the_labvault_error_the_server_named_or_the_status_means() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/named"):
            return httpx.Response(404, json={"error": "NotFoundError", "message": "no run 'x'"})
        return httpx.Response(413, text="Request Entity Too Large")  # a proxy's answer

    api = _client(httpx.MockTransport(answer))
    with pytest.raises(NotFoundError, match="no run 'x'"):
        api.request("GET", "/named", idempotent=True)
    with pytest.raises(InvalidArgumentError, match="Request Entity Too Large"):
        api.request("GET", "/proxy", idempotent=True)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="timeout"):
        APIClient("http://server", timeout=0)
    with pytest.raises(InvalidArgumentError, match="retries"):
        APIClient("http://server", retries=21)
