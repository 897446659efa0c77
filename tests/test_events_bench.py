"""Smoke test of the events benchmark (``python -m benchmarks.events_bench``): a few writes from a writer
process to a subscriber here, on a file store. Checks that every event is counted, not how fast."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root holds ``benchmarks``
from benchmarks import events_bench


def test_every_event_of_the_writer_is_counted(tmp_path: Path) -> None:
    out = tmp_path / "EVENTS.md"
    events_bench.main(["--events", "5", "--interval", "0.01", "--stores", "file", "--output", str(out)])
    text = out.read_text()
    row = next(ln for ln in text.splitlines() if ln.startswith("| file |"))
    assert "| 5 / 5 |" in row and "lost" not in row, row
    assert "git " in text and "## What the numbers mean" in text


def test_an_unknown_store_is_refused(tmp_path: Path) -> None:
    try:
        events_bench.bench_store("nope", tmp_path, 1, 0.01)
    except SystemExit as exc:
        assert "unknown store" in str(exc)
    else:
        raise AssertionError("an unknown store kind was accepted")
