"""The one retry policy (``labvault._retry``) and the one error-translation helper
(``labvault.errors.translating``)."""

from __future__ import annotations

import time

import pytest

from labvault._retry import Backoff, Retry
from labvault.errors import (
    BackendUnavailableError,
    InvalidArgumentError,
    LabvaultError,
    NotFoundError,
    translate,
    translating,
)


def test_backoff_doubles_to_the_cap_with_jitter_in_the_upper_half() -> None:
    plain = Backoff(first=0.1, cap=1.0, jitter=False)
    assert [plain.delay(n) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    jittered = Backoff(first=0.1, cap=1.0)
    for n in range(1, 7):
        for _ in range(50):
            assert plain.delay(n) / 2 <= jittered.delay(n) <= plain.delay(n)
    assert Backoff(jitter=False).delay(10_000) == Backoff().cap  # no overflow after many failures


def test_retry_counts_tries() -> None:
    retry = Retry(tries=3, policy=Backoff(first=0.001, cap=0.001))
    assert retry.attempts == 1
    assert retry.wait() and retry.attempts == 2
    assert retry.wait() and retry.attempts == 3
    assert not retry.wait() and retry.attempts == 3  # the third attempt was the last


def test_retry_keeps_trying_until_the_deadline_and_not_past_it() -> None:
    retry = Retry(timeout=0.05, policy=Backoff(first=0.02, cap=0.02, jitter=False))
    start = time.monotonic()
    waits = 0
    while retry.wait():
        waits += 1
    elapsed = time.monotonic() - start
    # 2 x 20 ms fit in 50 ms; the third pause is cut to the 10 ms left, so the last attempt comes at the
    # deadline (giving up at 40 ms would retry for less than the caller asked for)
    assert waits == 3 and 0.05 <= elapsed < 1.0, (waits, elapsed)


TABLE = {
    KeyError: NotFoundError,
    ConnectionError: lambda exc: BackendUnavailableError(f"down: {exc}"),
    OSError: BackendUnavailableError,
}


def test_translating_maps_the_first_matching_entry_and_chains() -> None:
    with pytest.raises(NotFoundError, match=r"^db: 'x'$") as info, translating(TABLE, where="db"):
        raise KeyError("x")
    assert isinstance(info.value.__cause__, KeyError)
    with pytest.raises(BackendUnavailableError, match=r"^down: refused$"), translating(TABLE):
        raise ConnectionRefusedError("refused")  # a ConnectionError: the lambda, before OSError


def test_translating_passes_labvault_errors_and_unknown_exceptions_through() -> None:
    with pytest.raises(InvalidArgumentError, match="mine"), translating(TABLE):
        raise InvalidArgumentError("mine")
    with pytest.raises(ZeroDivisionError), translating(TABLE):
        _ = 1 / 0
    assert translate(ValueError("v"), TABLE) is None


def test_translating_as_a_decorator() -> None:
    @translating(TABLE, where="store")
    def lookup() -> None:
        raise KeyError("k")

    with pytest.raises(LabvaultError, match="store"):
        lookup()
