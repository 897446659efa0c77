"""Install hints name extras that exist: a missing driver says which ``pip install 'labvault[...]'`` brings
it, and ``to_frame()`` without pandas raises a labvault error naming its extra.

"Missing" is real here: each case runs in a fresh interpreter where the driver's module is blocked
(``sys.modules[name] = None`` makes ``import name`` raise ImportError, as on a machine without it).
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from labvault._registry import _BUILTIN_BACKENDS, SCHEME_EXTRAS

ROOT = Path(__file__).resolve().parents[1]


def extras() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def test_every_hinted_extra_exists() -> None:
    assert set(SCHEME_EXTRAS.values()) <= extras(), set(SCHEME_EXTRAS.values()) - extras()
    assert set(SCHEME_EXTRAS) <= set(_BUILTIN_BACKENDS)
    assert "client" in extras()
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    client = optional["client"]
    assert [d.split(">")[0] for d in client] == ["httpx"]  # light: scripts that only talk to a server


def without(module: str, code: str) -> subprocess.CompletedProcess[str]:
    script = f"import sys\nsys.modules[{module!r}] = None\n" + code
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          check=False)


@pytest.mark.parametrize(("module", "uri", "extra"), [
    ("httpx", "http://127.0.0.1:9", "client"),
    ("httpx", "https://example.invalid", "client"),
    ("redis", "rediss://127.0.0.1:9/0", "redis"),
    ("redis", "unix:///tmp/redis.sock", "redis"),
    ("psycopg", "postgresql://postgres@127.0.0.1:9/x?retry_timeout=0", "postgres"),
    ("hat", "hat://127.0.0.1:9?timeout=1", "hat"),
])
def test_a_missing_driver_names_its_extra(module: str, uri: str, extra: str) -> None:
    code = ("import labvault\n"
            "try:\n"
            f"    labvault.open({uri!r}).experiments()\n"
            "except labvault.LabvaultError as exc:\n"
            "    print(type(exc).__name__, exc)\n")
    proc = without(module, code)
    assert proc.returncode == 0, proc.stderr
    assert f"pip install 'labvault[{extra}]'" in proc.stdout, proc.stdout


def test_to_frame_without_pandas_names_the_extra() -> None:
    code = ("import labvault\n"
            "with labvault.open('memory://') as v:\n"
            "    with v.experiment('e').start_run():\n"
            "        pass\n"
            "    try:\n"
            "        v.search_runs('e').to_frame()\n"
            "    except labvault.UnsupportedOperationError as exc:\n"
            "        print('refused:', exc)\n")
    proc = without("pandas", code)
    assert proc.returncode == 0, proc.stderr
    assert "refused: RunList.to_frame() needs pandas: pip install 'labvault[pandas]'" in proc.stdout


def test_import_labvault_does_not_load_pandas() -> None:
    proc = subprocess.run([sys.executable, "-c", "import sys, labvault, labvault.client\n"
                           "print('pandas' in sys.modules)"], capture_output=True, text=True, timeout=60,
                          check=True)
    assert proc.stdout.strip() == "False"
