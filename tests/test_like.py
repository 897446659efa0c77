"""``LIKE`` / ``ILIKE`` in Python: linear time on hostile patterns, and the same answers as SQLite's LIKE.

Every path that evaluates filters in Python (the run index of SQLite / PostgreSQL / Redis, the file
backend's columns, the memory backend) calls ``query._like``; the search-level test in the conformance
suite (``test_like_is_linear_on_every_backend``) checks it through each backend.
"""

from __future__ import annotations

import signal
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labvault import query
from labvault.errors import InvalidArgumentError
from labvault.query import _like


def _finishes(func: object, deadline: float = 10.0) -> bool:
    """Whether ``func()`` returns within ``deadline`` seconds (a hang guard, not a speed measurement:
    the backtracking matcher this replaced took hours on these inputs). An interval timer interrupts
    it: the regex engine holds the GIL, so a watchdog thread could not, but it does check for signals."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, deadline)
    try:
        func()  # type: ignore[operator]
        return True
    except TimeoutError:
        return False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


HOSTILE = [
    "%a%a%a%a%a%b",
    "%a%a%a%a%a%a%a%a%a%a%a%a%a%a%a%a%a%a%a%a%a%a%a%a%b",
    "%" + "a_" * 400 + "b%",
    "%" + "_%" * 300 + "b",
    "%" + "_" * 1000 + "b",
    "a%" * 500 + "b",
]


@pytest.mark.parametrize("pattern", HOSTILE, ids=range(len(HOSTILE)))
@pytest.mark.parametrize("ci", [False, True], ids=["like", "ilike"])
def test_hostile_patterns_on_64_kib_finish(pattern: str, ci: bool) -> None:
    text = "a" * 65536
    results: list[bool] = []
    assert _finishes(lambda: results.append(_like(text, pattern, ci)))
    assert results == [False]


def test_examples() -> None:
    assert _like("abc", "abc", False) and not _like("abc", "ab", False)
    assert _like("abc", "a%", False) and _like("abc", "%c", False) and _like("abc", "%b%", False)
    assert _like("abc", "a_c", False) and not _like("ac", "a_c", False)
    assert _like("", "%", False) and not _like("", "_", False) and _like("", "", False)
    assert _like("a%b", "a\\%b", False) and not _like("axb", "a\\%b", False)
    assert _like("a_b", "a\\_b", False) and not _like("axb", "a\\_b", False)
    assert _like("a\\b", "a\\\\b", False)
    assert _like("aXb", "a\\Xb", False)
    assert _like("ABC", "a%c", True) and not _like("ABC", "a%c", False)
    assert not _like("\u00c9", "\u00e9", True)  # ASCII-only folding, like SQLite's lower()
    assert _like("abab", "%ab", False) and _like("aab", "a%ab", False) and not _like("ab", "a%ab", False)


def test_pattern_length_is_bounded() -> None:
    long = "a" * (query.MAX_LIKE_PATTERN_LENGTH + 1)
    with pytest.raises(InvalidArgumentError, match="at most 1024 characters"):
        query.parse(f"tags.t LIKE '{long}'")
    query.parse(f"tags.t LIKE '{long[1:]}'")


_ALPHABET = st.sampled_from(list("aAbB%_\\\u00e9\u00c9x"))
_TEXT = st.text(alphabet=st.sampled_from(list("aAbB%_\\\u00e9\u00c9x")), max_size=12)


def _sqlite_like(conn: sqlite3.Connection, text: str, pattern: str, ci: bool) -> bool:
    sql = "SELECT lower(?) LIKE lower(?) ESCAPE '\\'" if ci else "SELECT ? LIKE ? ESCAPE '\\'"
    return bool(conn.execute(sql, (text, pattern)).fetchone()[0])


@pytest.fixture(scope="module")
def sqlite_conn() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    conn.execute("PRAGMA case_sensitive_like = ON")
    return conn


@settings(max_examples=2000, deadline=None)
@given(text=_TEXT, pattern=st.lists(_ALPHABET, max_size=10).map("".join), ci=st.booleans())
def test_agrees_with_sqlite(sqlite_conn: sqlite3.Connection, text: str, pattern: str, ci: bool) -> None:
    trailing = len(pattern) - len(pattern.rstrip("\\"))
    if trailing % 2:  # the parser refuses a pattern ending in a lone escape
        pattern += "\\"
    assert _like(text, pattern, ci) == _sqlite_like(sqlite_conn, text, pattern, ci), (text, pattern, ci)


@settings(max_examples=500, deadline=None)
@given(pieces=st.lists(st.text(alphabet="ab", max_size=4), min_size=1, max_size=6), text=st.text("ab"))
def test_agrees_with_sqlite_on_many_wildcards(
    sqlite_conn: sqlite3.Connection, pieces: list[str], text: str
) -> None:
    pattern = "%".join(pieces).replace("b", "_", 1)
    assert _like(text, pattern, False) == _sqlite_like(sqlite_conn, text, pattern, False), (text, pattern)
