"""Smoke test of the server load test (``python -m benchmarks.load``): a few clients for a few seconds
against a real ``labvault server`` over a throwaway PostgreSQL database. Checks the counting, not speed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from labvault.testing.plugin import require_service

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root holds ``benchmarks``
from benchmarks import load

START = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"


def _pg_up() -> bool:
    try:
        load.pg_admin("SELECT 1")
    except Exception:
        return False
    return True


@pytest.fixture(scope="module", autouse=True)
def postgres() -> None:
    require_service("PostgreSQL", _pg_up(), START)


def _databases() -> set[str]:
    import psycopg

    user, _, hostport = load.PG_SERVER.partition("@")
    host, _, port = hostport.partition(":")
    with psycopg.connect(host=host, port=int(port or 5432), user=user, dbname="postgres") as conn:
        return {str(r[0]) for r in conn.execute("SELECT datname FROM pg_database").fetchall()}


def test_load_database_is_created_and_dropped() -> None:
    with load.load_database() as uri:
        name = uri.rsplit("/", 1)[-1]
        assert name.startswith("labvault_load_")
        assert name in _databases()
    assert name not in _databases()


def test_short_load_run_counts_every_point_and_artifact(tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "LOAD.md"
    out.write_text("# results\n\n## Other section\n\nkept\n")
    code = load.main(["--clients", "3", "--duration", "2", "--workers", "1", "--points", "20",
                      "--artifact-every", "2", "--artifact-size", "2048", "--output", str(out)])
    text = out.read_text()
    assert code == 0, text
    assert "## Other section\n\nkept" in text
    assert "**PASS**" in text
    assert "| errors | 0 |" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("| points read back"))
    stored, expected = line.split("| ")[2].split(" acknowledged")[0].split(" of ")
    assert stored == expected and int(expected.replace(",", "")) > 0
    assert "problems: 0 (lost" in line
    # a second run replaces its own section instead of appending another
    assert load.main(["--clients", "2", "--duration", "1", "--workers", "1", "--artifact-every", "0",
                      "--output", str(out)]) == 0
    assert out.read_text().count(load.SECTION) == 1


def test_library_clients(tmp_path: Path) -> None:
    """The same counting with real ``labvault.open(url)`` clients in threads."""
    out = tmp_path / "LOAD.md"
    assert load.main(["--clients", "2", "--duration", "2", "--workers", "1", "--client", "library",
                      "--points", "10", "--artifact-every", "2", "--output", str(out)]) == 0, out.read_text()
    text = out.read_text()
    assert "**PASS**" in text and "run.log_artifact" in text
    assert text.startswith("# ") and f"{load.SECTION}: labvault.open clients" in text


def test_write_section_replaces_only_its_own(tmp_path: Path) -> None:
    path = tmp_path / "R.md"
    path.write_text("# t\n\n## A\n\nold a\n\n## B\n\nb\n")
    load.write_section(path, "## A\n\nnew a\n", "## A")
    assert path.read_text() == "# t\n\n## A\n\nnew a\n\n## B\n\nb\n"
    load.write_section(path, "## C\n\nc\n", "## C")
    assert path.read_text().endswith("## B\n\nb\n\n## C\n\nc\n")
