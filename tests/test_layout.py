"""The code's shape (issue 15): in-function imports only where they keep an import fast, each saying why
with a ``# lazy: <reason>`` comment; no module over 800 lines; no function over 80 lines; and a plain
``import labvault`` loads none of the heavy drivers.

Each check has an allow-list that starts empty: an entry needs a reason, and shows up in review.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "labvault"

MAX_MODULE_LINES = 800
MAX_FUNCTION_LINES = 80

#: ``"labvault/x.py::Class.method"`` -> why an import there may go without a ``# lazy:`` comment.
UNMARKED_IMPORT_ALLOWED: dict[str, str] = {}
#: ``"labvault/x.py"`` -> why the module may be longer than MAX_MODULE_LINES.
LONG_MODULE_ALLOWED: dict[str, str] = {}
#: ``"labvault/x.py::Class.method"`` -> why the function may be longer than MAX_FUNCTION_LINES.
LONG_FUNCTION_ALLOWED: dict[str, str] = {}
#: top-level package -> why a plain ``import labvault`` may load it.
HEAVY_AT_IMPORT_ALLOWED: dict[str, str] = {}

#: What ``import labvault`` must not load (the drivers and the big libraries load on first use).
HEAVY = ("pandas", "sqlalchemy", "redis", "boto3", "botocore", "httpx", "fastapi", "starlette", "uvicorn",
         "typer", "rich", "numpy", "argon2", "psycopg", "obstore", "jsonschema", "filelock", "pyarrow",
         "dulwich", "aimm", "hat")

_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def _modules(package: Path) -> Iterator[tuple[str, ast.Module, list[str]]]:
    """(path relative to the package's parent, parsed tree, source lines) of every module in ``package``."""
    for path in sorted(package.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        yield path.relative_to(package.parent).as_posix(), ast.parse(text, str(path)), text.splitlines()


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, scope: tuple[str, ...] = (), in_function: bool = False,
          ) -> Iterator[tuple[ast.AST, tuple[str, ...], bool]]:
    """Every node under ``node`` with its qualified scope and whether it sits inside a function body
    (``if TYPE_CHECKING:`` blocks skipped: they never run)."""
    for child in ast.iter_child_nodes(node):
        if _is_type_checking(child):
            continue
        yield child, scope, in_function
        if isinstance(child, (*_FUNCTIONS, ast.ClassDef)):
            yield from _walk(child, (*scope, child.name), in_function or isinstance(child, _FUNCTIONS))
        else:
            yield from _walk(child, scope, in_function)


def unmarked_imports(package: Path) -> list[tuple[str, str]]:
    """(``file::scope``, ``file:line ...``) of every import inside a function whose line (the first of a
    multi-line one) has no ``# lazy:`` comment."""
    found = []
    for rel, tree, lines in _modules(package):
        for node, scope, in_function in _walk(tree):
            if in_function and isinstance(node, (ast.Import, ast.ImportFrom)):
                line = lines[node.lineno - 1]
                if "# lazy:" not in line:
                    name = ".".join(scope)
                    found.append((f"{rel}::{name}", f"{rel}:{node.lineno} in {name}(): {line.strip()}"))
    return found


def long_modules(package: Path, limit: int = MAX_MODULE_LINES) -> list[tuple[str, str]]:
    return [(rel, f"{rel}:{len(lines)} has {len(lines)} lines (limit {limit})")
            for rel, _, lines in _modules(package) if len(lines) > limit]


def long_functions(package: Path, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, str]]:
    found = []
    for rel, tree, _ in _modules(package):
        for node, scope, _ in _walk(tree):
            if isinstance(node, _FUNCTIONS) and node.end_lineno is not None:
                size = node.end_lineno - node.lineno + 1
                name = ".".join((*scope, node.name))
                if size > limit:
                    message = f"{rel}:{node.lineno} {name}() has {size} lines (limit {limit})"
                    found.append((f"{rel}::{name}", message))
    return found


def heavy_after_import(root: Path, package: str, heavy: tuple[str, ...]) -> list[str]:
    """The packages of ``heavy`` a fresh interpreter has loaded after ``import <package>`` from ``root``."""
    code = textwrap.dedent(f"""
        import json, sys
        import {package}
        assert {package}.__file__.startswith({str(root)!r}), {package}.__file__
        print(json.dumps(sorted({{name.split(".")[0] for name in sys.modules}})))
    """)
    path = [str(root), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout.splitlines()[-1]))
    return [name for name in heavy if name in loaded]


# -- the checks on labvault ----------------------------------------------------------------------------------
def _not_allowed(found: list[tuple[str, str]], allowed: dict[str, str]) -> str:
    return "\n".join(message for key, message in found if key not in allowed)


def test_every_in_function_import_says_why_it_is_lazy() -> None:
    found = _not_allowed(unmarked_imports(PACKAGE), UNMARKED_IMPORT_ALLOWED)
    assert not found, ("imports inside functions without a '# lazy: <reason>' comment (move them to the "
                       f"module's top, or say what the delay saves):\n{found}")


def test_no_module_is_over_800_lines() -> None:
    found = _not_allowed(long_modules(PACKAGE), LONG_MODULE_ALLOWED)
    assert not found, f"modules to split:\n{found}"


def test_no_function_is_over_80_lines() -> None:
    found = _not_allowed(long_functions(PACKAGE), LONG_FUNCTION_ALLOWED)
    assert not found, f"functions to split:\n{found}"


def test_import_labvault_loads_no_heavy_package() -> None:
    found = [name for name in heavy_after_import(ROOT, "labvault", HEAVY)
             if name not in HEAVY_AT_IMPORT_ALLOWED]
    assert not found, f"labvault/__init__.py:1 a plain 'import labvault' loads {found}"


def test_allow_lists_hold_only_current_exceptions() -> None:
    """An entry whose module or function no longer breaks the rule goes; every entry gives a reason."""
    tables = [(UNMARKED_IMPORT_ALLOWED, {key for key, _ in unmarked_imports(PACKAGE)}),
              (LONG_MODULE_ALLOWED, {key for key, _ in long_modules(PACKAGE)}),
              (LONG_FUNCTION_ALLOWED, {key for key, _ in long_functions(PACKAGE)}),
              (HEAVY_AT_IMPORT_ALLOWED, set(heavy_after_import(ROOT, "labvault", HEAVY)))]
    stale = [key for allowed, current in tables for key in allowed if key not in current]
    assert not stale, f"allow-list entries that are no longer needed: {stale}"
    assert all(reason.strip() for allowed, _ in tables for reason in allowed.values())


# -- the checks catch what they are for (on a small package written here) -----------------------------------
def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    package = tmp_path / "pkg"
    for name, text in {"__init__.py": "", **files}.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(textwrap.dedent(text), encoding="utf-8")
    return package


def test_the_checks_find_violations(tmp_path: Path) -> None:
    package = _package(tmp_path, {
        "imports.py": """\
            from typing import TYPE_CHECKING

            import os

            if TYPE_CHECKING:
                import json


            def fine() -> None:
                import json  # lazy: the reason


            def wrapped() -> None:
                from os.path import (  # lazy: the reason
                    join,
                )


            class C:
                def method(self) -> None:
                    def inner() -> None:
                        from os import path
                    import sys
            """,
        "sub/long.py": "x = 1\n" * 801,
        "funcs.py": "def f():\n" + "    x = 1\n" * 80 + "\n\ndef g():\n" + "    x = 1\n" * 79,
    })
    assert unmarked_imports(package) == [
        ("pkg/imports.py::C.method.inner", "pkg/imports.py:22 in C.method.inner(): from os import path"),
        ("pkg/imports.py::C.method", "pkg/imports.py:23 in C.method(): import sys"),
    ]
    assert long_modules(package) == [("pkg/sub/long.py", "pkg/sub/long.py:801 has 801 lines (limit 800)")]
    assert long_functions(package) == [("pkg/funcs.py::f", "pkg/funcs.py:1 f() has 81 lines (limit 80)")]


def test_the_import_check_finds_a_heavy_package(tmp_path: Path) -> None:
    _package(tmp_path, {"__init__.py": "import fakeheavy\n"})
    (tmp_path / "fakeheavy.py").write_text("", encoding="utf-8")
    assert heavy_after_import(tmp_path, "pkg", ("fakeheavy", "otherheavy")) == ["fakeheavy"]
