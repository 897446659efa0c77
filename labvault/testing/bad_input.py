"""The bad-input table of the conformance suite: every public entry point, fed junk, on every backend.

Each ``BadCase`` is one refused call: a name, key, value, step, text, URI, filter, ``order_by``, artifact key
or artifact source that labvault must turn away with the documented error class (``InvalidArgumentError``
unless stated), with a message that identifies the offending input (``named``: every fragment must appear
in it; for a value inside a mapping or a series that is its key, plus the value where it is printable),
and with a message that is itself valid text (so it can be printed, logged and sent over HTTP). After the
call nothing in the store may have changed: the whole store (experiments, runs with their status,
params, tags, results and latest metrics, every metric history, every artifact list) is compared before
and after, once the run's buffers are flushed (a refused point must not sit in a buffer either).

The whole table runs on one vault per backend class: the before/after snapshot makes sharing it safe, and
opening a fresh store per case (a PostgreSQL schema, an S3 prefix) would cost seconds per backend.

The table itself (data) is ``labvault.testing.bad_input_cases``; the shared store and the snapshot are
``labvault.testing.bad_input_context``. This module runs a case (``check_case``) and holds the test mixin
``BadInputTests``; it re-exports the names of both (their import path before the split).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from labvault.client.vault import Vault
from labvault.errors import InvalidArgumentError, LabvaultError
from labvault.testing.bad_input_cases import (
    BAD_ARTIFACT_KEYS,
    BAD_FILTERS,
    BAD_IDS,
    BAD_INPUT_CASES,
    BAD_JSON_VALUES,
    BAD_KEYS,
    BAD_METRIC_VALUES,
    BAD_NAMES,
    BAD_OPEN_OPTIONS,
    BAD_ORDER_BY,
    BAD_PAGING,
    BAD_PREFIXES,
    BAD_STEPS,
    BAD_TAG_VALUES,
    BAD_TIMESTAMPS,
    BAD_URIS,
    BadCase,
    Call,
    Named,
    Row,
)
from labvault.testing.bad_input_context import BadInputContext, store_snapshot

__all__ = [  # the table's names too: this was their home before the split
    "BAD_ARTIFACT_KEYS", "BAD_FILTERS", "BAD_IDS", "BAD_INPUT_CASES", "BAD_JSON_VALUES", "BAD_KEYS",
    "BAD_METRIC_VALUES", "BAD_NAMES", "BAD_OPEN_OPTIONS", "BAD_ORDER_BY", "BAD_PAGING", "BAD_PREFIXES",
    "BAD_STEPS", "BAD_TAG_VALUES", "BAD_TIMESTAMPS", "BAD_URIS", "BadCase", "BadInputContext",
    "BadInputTests", "Call", "Named", "Row", "store_snapshot",
]


# ------------------------------------------------------------------------------------------------------
# running a case
def _refusal(ctx: BadInputContext, case: BadCase) -> LabvaultError:
    """Make the call; return the error it raised, which must be exactly ``case.error``."""
    try:
        case.call(ctx)
    except LabvaultError as exc:
        if type(exc) is not case.error:
            raise AssertionError(f"{case.label}: raised {type(exc).__name__} ({exc!r:.300}), "
                                 f"not {case.error.__name__}") from exc
        return exc
    except Exception as exc:
        raise AssertionError(f"{case.label}: raised {type(exc).__name__} ({exc!r:.300}), "
                             f"not {case.error.__name__}") from exc
    raise AssertionError(f"{case.label}: accepted; expected {case.error.__name__}")


def _check_message(ctx: BadInputContext, case: BadCase, exc: LabvaultError) -> None:
    message = str(exc)
    try:
        message.encode("utf-8")
    except UnicodeEncodeError:
        raise AssertionError(f"{case.label}: the message is not valid text: {message!r:.300}") from None
    for named in case.named:
        fragment = named if isinstance(named, str) else named(ctx)
        assert fragment in message, f"{case.label}: {message[:300]!r} does not name {fragment!r}"


def check_case(ctx: BadInputContext, case: BadCase) -> None:
    """Run one case: the exact error class, a message naming the input, the store unchanged."""
    ctx.prepare()
    before = store_snapshot(ctx.vault.backend)
    ctx.dirty = True  # until the case is proven clean
    _check_message(ctx, case, _refusal(ctx, case))
    try:
        ctx.settle()
    except Exception as exc:
        raise AssertionError(f"{case.label}: the refused call left a buffered write that failed later: "
                             f"{type(exc).__name__}: {exc!r:.300}") from exc
    after = store_snapshot(ctx.vault.backend)
    assert after == before, f"{case.label}: the refused call changed the store"
    ctx.dirty = False


class BadInputTests:
    """The bad-input table as a part of ``BackendTests`` (which subclasses this)."""

    def test_bad_input_rejected_and_nothing_written(
        self, vault: Vault, uri: str, tmp_path: Path, subtests: pytest.Subtests
    ) -> None:
        labels = [case.label for case in BAD_INPUT_CASES]
        assert len(labels) == len(set(labels)) and len(labels) >= 150, len(labels)
        ctx = BadInputContext(vault, uri, tmp_path)
        for case in BAD_INPUT_CASES:
            with subtests.test(msg=case.label):
                check_case(ctx, case)
        for run in (ctx.run, ctx.spare):
            run._discard_buffer()

    def test_bad_input_checker_sees_every_kind_of_write(self, vault: Vault, uri: str, tmp_path: Path) -> None:
        """The table cannot pass vacuously: a "refused" call that wrote a param, buffered a metric point,
        logged an artifact or ended a run is caught; a clean refusal right after each still passes."""

        def refusing(write: Call) -> Call:
            def call(c: BadInputContext) -> None:
                write(c)
                raise InvalidArgumentError("refused 'x'")
            return call

        writes: list[Call] = [
            lambda c: c.run.log_params({"sneaky": 1}),
            lambda c: c.run.log_metric("loss", 9.0),
            lambda c: c.run.log_artifact("z.txt", b"z"),
            lambda c: c.spare.end("killed"),
            lambda c: c.vault.experiment("sneaky"),
        ]
        ctx = BadInputContext(vault, uri, tmp_path)
        for i, write in enumerate(writes):
            with pytest.raises(AssertionError, match="changed the store"):
                check_case(ctx, BadCase(f"write {i}", refusing(write), ("'x'",)))
            check_case(ctx, BadCase(f"clean {i}", refusing(lambda c: None), ("'x'",)))
        with pytest.raises(AssertionError, match="does not name"):
            check_case(ctx, BadCase("unnamed", refusing(lambda c: None), ("'y'",)))
        with pytest.raises(AssertionError, match="not InvalidArgumentError"):
            check_case(ctx, BadCase("wrong class", lambda c: int("x"), ("'x'",)))
        ctx.run._discard_buffer()
