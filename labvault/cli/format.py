"""How the command line shows values: times, durations, sizes, numbers, run statuses, strict JSON and the
artifact table.

Every command module formats through these helpers, so a value looks the same wherever it is printed.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from labvault.domain import ArtifactInfo

#: Run ids are shown shortened to this many characters in tables.
SHORT_ID = 8

_STATUS_STYLE = {"finished": "green", "running": "yellow", "failed": "red", "killed": "magenta"}


def fmt_time(ts: float | None, seconds: bool = True) -> str:
    """A local date and time with its zone, e.g. ``2026-12-07 09:30:05 CET`` (``-`` for None), with or
    without the seconds: a time without its zone is ambiguous on a shared machine or in a pasted log."""
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S %Z" if seconds else "%Y-%m-%d %H:%M %Z", time.localtime(ts))


def iso_utc(ts: float | None) -> str:
    """An ISO 8601 UTC time with milliseconds for machine-readable output (CSV), e.g.
    ``2026-12-07T08:30:05.123Z``; empty for None."""
    if ts is None:
        return ""
    whole = math.floor(ts)
    millis = min(999, round((ts - whole) * 1000))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def csv_cell(value: Any) -> str:
    """A param / tag / metric / result value as one CSV cell: text as is, numbers as Python writes them
    (full precision), booleans lower-case, lists and dicts as compact JSON, None empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return repr(value) if isinstance(value, float) and math.isfinite(value) else str(value)
    return json.dumps(jsonable(value), separators=(",", ":"), ensure_ascii=False)


def write_csv(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """CSV (RFC 4180, a header line then one line per row) on stdout; cells through :func:`csv_cell`."""
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([csv_cell(cell) for cell in row])


def fmt_duration(start: float, end: float | None, status: str) -> str:
    """How long a run took (``1.25s``, ``3m07s``, ``2h05m``); a running run counts until now."""
    if end is None:
        if status != "running":
            return "-"
        end = time.time()
    seconds = max(0.0, end - start)
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, sec = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def fmt_size(size: int) -> str:
    """A byte count in binary units: ``512 B``, ``1.5 KiB``, ... ``2.0 TiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover


def fmt_value(value: Any, width: int = 60) -> str:
    """Any param / tag / result value on one line of at most ``width`` characters (compact JSON)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.6g}"
    text = value if isinstance(value, str) else json.dumps(jsonable(value), separators=(",", ":"))
    return text if len(text) <= width else text[: width - 1] + "…"


def fmt_number(value: Any) -> str:
    """Short numbers for tables (5 significant digits)."""
    if isinstance(value, float):
        return f"{value:.5g}"
    return fmt_value(value, 40)


def status_text(status: str) -> Text:
    """A run status, coloured: finished green, running yellow, failed red, killed magenta."""
    return Text(status, style=_STATUS_STYLE.get(status, ""))


def jsonable(value: Any) -> Any:
    """Strict JSON: non-finite floats become null, tuples lists, unknown objects their str()."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


def dumps(value: Any) -> str:
    """One line of strict JSON (see :func:`jsonable`), non-ASCII characters kept as they are."""
    return json.dumps(jsonable(value), allow_nan=False, ensure_ascii=False)


def print_artifacts(out: Console, artifacts: Sequence[ArtifactInfo], title: str = "artifacts") -> None:
    """A table of artifacts (key, size, digest, time), or ``<title>: none``."""
    if not artifacts:
        out.print(Text(f"{title}: none", style="dim"))
        return
    table = Table(title=title, title_justify="left")
    for column in ("key", "size", "digest", "created"):
        table.add_column(column, justify="right" if column == "size" else "left")
    for art in artifacts:
        table.add_row(Text(art.key), fmt_size(art.size), Text(art.digest[:12]), fmt_time(art.created_at))
    out.print(table)
