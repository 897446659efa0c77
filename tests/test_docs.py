"""The README and the docs site (docs/, mkdocs.yml) cannot drift from the code.

* Every ```python block of README.md and docs/**/*.md runs: each file's blocks in order, in one namespace, in
  a fresh subprocess whose working directory is a temporary directory, with ``LABVAULT_URI`` (and the other
  ``LABVAULT_*`` variables) unset. A block that cannot run here carries ``<!-- no-run: reason -->`` on the
  line before its fence; it is only compiled, and its test skips with that reason.
* Every ``labvault ...`` command in a shell block parses against the real command tree (unknown commands or
  options fail; nothing is run), every ``make`` target exists and every ``labvault[extra]`` is declared.
* Every relative link resolves (file and heading anchor), every page is in mkdocs.yml's nav, every nav entry
  exists, the command reference in docs/cli.md is what the command tree renders, and every function, class
  and method the API reference shows has a docstring.

``make docs`` (``mkdocs build --strict``) checks the site itself: links and anchors as rendered, the nav,
and docstrings mkdocstrings cannot parse.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import tomllib
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docs_cli
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted([ROOT / "README.md", *DOCS.rglob("*.md")])
NO_RUN = re.compile(r"^\s*<!--\s*no-run:\s*(?P<reason>.+?)\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[\w+-]*)")
SHELL_LANGS = {"bash", "sh", "shell", "console"}


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@dataclass(frozen=True)
class Block:
    """One fenced code block: its file, the 1-based line of its first code line, language and text."""

    path: Path
    line: int
    lang: str
    code: str
    no_run: str | None  # the reason given in <!-- no-run: ... --> on the line before the fence

    @property
    def where(self) -> str:
        return f"{rel(self.path)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file (nested fences inside a longer fence stay code)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        fence, indent = match["fence"], len(match["indent"])
        marker = NO_RUN.match(lines[i - 1]) if i else None
        end = i + 1
        while end < len(lines) and not re.match(rf"^[ \t]*{fence[0]}{{{len(fence)},}}[ \t]*$", lines[end]):
            end += 1
        code = textwrap.dedent("\n".join(line[indent:] if line[:indent].isspace() else line
                                         for line in lines[i + 1:end]))
        reason = marker["reason"] if marker else None
        out.append(Block(path, i + 2, match["lang"].lower(), code + "\n", reason))
        i = end + 1
    return out


def prose(path: Path) -> str:
    """The file without its fenced code blocks and inline code spans (where links and headings live)."""
    text = path.read_text(encoding="utf-8")
    for block in blocks(path):
        text = text.replace(block.code.rstrip("\n"), "")
    return re.sub(r"(`+)(?!`).*?(?<!`)\1(?!`)", "", text)


ALL_BLOCKS = [b for page in PAGES for b in blocks(page)]
PYTHON = [b for b in ALL_BLOCKS if b.lang in ("python", "py")]


# -- python blocks ------------------------------------------------------------------------------------------

#: Runs in the subprocess: each block compiled under its Markdown file name, padded so that a traceback's
#: line numbers are the Markdown file's; one namespace for the whole file, as a reader would type them.
RUNNER = """
import json, sys
namespace = {"__name__": "__main__"}
for block in json.load(sys.stdin):
    print(f"--- running {block['where']}", flush=True)
    code = compile("\\n" * (block["line"] - 1) + block["code"], block["path"], "exec")
    exec(code, namespace)
print("--- all blocks ran", flush=True)
"""


def _clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABVAULT_")}
    env["HOME"] = str(tmp_path / "home")  # credentials, auth stores: never the real account's
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return env


RUNNABLE_FILES = sorted({b.path for b in PYTHON if b.no_run is None})


@pytest.mark.parametrize("path", RUNNABLE_FILES, ids=rel)
def test_python_blocks_run(path: Path, tmp_path: Path) -> None:
    """Each file's runnable python blocks, in order, in one namespace; any exception fails the test."""
    work = tmp_path / "cwd"
    work.mkdir()
    (tmp_path / "home").mkdir()
    todo = [{"where": b.where, "path": str(b.path), "line": b.line, "code": b.code}
            for b in PYTHON if b.path == path and b.no_run is None]
    proc = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(todo), cwd=work,
                          env=_clean_env(tmp_path), capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or "--- all blocks ran" not in proc.stdout:
        pytest.fail(f"a python block of {rel(path)} failed (exit {proc.returncode}):\n"
                    f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}", pytrace=False)


@pytest.mark.parametrize("block", [b for b in PYTHON if b.no_run is not None], ids=lambda b: b.where)
def test_python_blocks_not_run(block: Block) -> None:
    """A block marked no-run still has to be valid Python; then it is skipped, saying why."""
    compile(block.code, block.where, "exec")
    pytest.skip(f"{block.where} not run: {block.no_run}")


def test_no_run_markers_sit_on_python_blocks() -> None:
    """A ``<!-- no-run -->`` comment applies to the fence right below it; a stray one is a mistake."""
    stray = []
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        marked = {b.line - 2 for b in blocks(page) if b.no_run is not None and b.lang in ("python", "py")}
        stray += [f"{rel(page)}:{n + 1}" for n, line in enumerate(lines) if NO_RUN.match(line) and n + 1
                  not in marked]
    assert not stray, f"no-run markers not directly above a ```python fence: {stray}"


def test_the_readme_quickstart_is_run() -> None:
    """The README's quickstart is the block a newcomer copies first: it must never be skipped."""
    readme = [b for b in PYTHON if b.path == ROOT / "README.md"]
    assert readme and all(b.no_run is None for b in readme)


# -- shell blocks -------------------------------------------------------------------------------------------

def shell_commands(block: Block) -> list[list[str]]:
    """The commands of a shell block as word lists (console blocks: only the ``$ `` lines), comments dropped;
    a ``$(...)`` substitution is a command of its own."""
    text = block.code.replace("\\\n", " ")
    lines = text.splitlines()
    if block.lang == "console":
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    out = []
    for line in lines:
        inner = re.findall(r"\$\(([^()]*)\)", line)
        for command in [re.sub(r"\$\([^()]*\)", "SUBSTITUTED", line), *inner]:
            words = shlex.split(command, comments=True)
            while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
                words.pop(0)  # VAR=value before the command
            if words[:1] == ["export"]:
                continue
            if words:
                out.append(words)
    return out


SHELL = [b for b in ALL_BLOCKS if b.lang in SHELL_LANGS]


def check_labvault_command(words: list[str]) -> str:
    """Parse ``labvault ...`` against the real command tree (nothing runs); return the command's path."""
    command, path, args = docs_cli.root_command(), ["labvault"], list(words)
    while True:
        ctx = command.make_context(" ".join(path), list(args))  # unknown options, bad values: errors
        commands = docs_cli.subcommands(command)
        rest = [*getattr(ctx, "_protected_args", ()), *ctx.args]  # click keeps the subcommand's name apart
        if not commands or not rest:
            return " ".join(path)
        name, args = rest[0], rest[1:]
        if name not in commands:
            raise AssertionError(f"{' '.join(path)} has no command {name!r} (it has {sorted(commands)})")
        command, path = commands[name], [*path, name]


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z][\w.-]*)\s*:(?!=)", text, re.M))


def _extras() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"])


def check_shell_command(words: list[str]) -> None:
    program = words[0]
    if program == "labvault" or program.endswith("/labvault"):
        check_labvault_command(words[1:])
    elif program == "make":
        missing = [w for w in words[1:] if not w.startswith("-") and w not in _make_targets()]
        assert not missing, f"no make target {missing}"
    elif program == "pip" or program.endswith("/pip"):
        for word in words:
            match = re.fullmatch(r"labvault\[([\w,-]+)\]", word)
            if match:
                missing = set(match[1].split(",")) - _extras()
                assert not missing, f"labvault has no extra {sorted(missing)}"


@pytest.mark.parametrize("block", [b for b in SHELL if any(shell_commands(b))], ids=lambda b: b.where)
def test_shell_commands_parse(block: Block) -> None:
    """``labvault`` commands and options in shell blocks exist (parsed with --help's parser, not run)."""
    failures = []
    for words in shell_commands(block):
        try:
            check_shell_command(words)
        except (AssertionError, Exception) as exc:  # click's UsageError and friends, or our own
            message = getattr(exc, "format_message", lambda e=exc: str(e))()
            failures.append(f"{shlex.join(words)}\n    -> {type(exc).__name__}: {message}")
    assert not failures, f"{block.where}: commands that do not parse:\n" + "\n".join(failures)


def test_every_extra_named_exists() -> None:
    """``labvault[x]`` anywhere in the README or the docs (prose, code, comments) is a declared extra."""
    named = {(rel(page), extra) for page in PAGES
             for match in re.finditer(r"labvault\[([\w,-]+)\]", page.read_text(encoding="utf-8"))
             for extra in match[1].split(",")}
    assert sorted(where for where in named if where[1] not in _extras()) == []


def test_the_readme_names_the_two_commands() -> None:
    """.ci/run calls `make test`: the README's two commands are `make demo` and `make test`."""
    readme = [b for b in SHELL if b.path == ROOT / "README.md"]
    assert shell_commands(readme[0]) == [["make", "demo"], ["make", "test"]]
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


# -- links, anchors, nav ------------------------------------------------------------------------------------

LINK = re.compile(r"(?<!!)\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")


def heading_slug(heading: str) -> str:
    """The id Python-Markdown's toc extension gives a heading (its default slugify on the heading's text)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: their text
    text = re.sub(r"[`*]", "", text)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    for block in blocks(path):
        text = text.replace(block.code.rstrip("\n"), "")
    return {heading_slug(m[1]) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M)}


def _generated(path: Path) -> bool:
    """Pages whose anchors come from a plugin (mkdocstrings) or an included file: mkdocs checks those."""
    text = path.read_text(encoding="utf-8")
    return "\n::: " in f"\n{text}" or "--8<--" in text


def test_relative_links_resolve() -> None:
    broken = []
    for page in PAGES:
        for match in LINK.finditer(prose(page)):
            target = match["target"]
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (page.parent / file_part).resolve() if file_part else page
            if not dest.exists():
                broken.append(f"{rel(page)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and not _generated(dest) and anchor not in anchors(dest):
                broken.append(f"{rel(page)}: {target} (no heading #{anchor} in {rel(dest)})")
            elif page.is_relative_to(DOCS) and not dest.is_relative_to(DOCS):
                broken.append(f"{rel(page)}: {target} (outside docs/: the site would not have it)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def _nav_pages(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [p for value in node.values() for p in _nav_pages(value)]
    if isinstance(node, list):
        return [p for item in node for p in _nav_pages(item)]
    return []


def mkdocs_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    return config


def test_every_page_is_in_the_nav() -> None:
    nav = _nav_pages(mkdocs_config()["nav"])
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(set(pages) - set(nav)) == [], "pages missing from mkdocs.yml's nav"
    assert sorted(set(nav) - set(pages)) == [], "nav entries without a page"
    assert len(nav) == len(set(nav)), "a page is in the nav twice"


def test_the_cli_reference_is_current() -> None:
    """docs/cli.md's generated part is what the command tree renders now (``python -m tests.docs_cli``)."""
    assert docs_cli.current() == docs_cli.render(), (
        "docs/cli.md is out of date: run PYTHONPATH=. .venv/bin/python -m tests.docs_cli")


# -- docstrings of the API reference ------------------------------------------------------------------------

DIRECTIVE = re.compile(r"^::: (?P<ident>[\w.]+)[ \t]*\n(?P<options>(?:[ \t]+.*\n|[ \t]*\n)*)", re.M)


def reference_directives() -> list[tuple[Path, str, dict[str, Any]]]:
    """Every ``::: identifier`` of docs/reference with its options merged over mkdocs.yml's defaults."""
    plugins = mkdocs_config()["plugins"]
    defaults = next(p["mkdocstrings"] for p in plugins if isinstance(p, dict) and "mkdocstrings" in p)
    base = defaults["handlers"]["python"]["options"]
    out = []
    for page in sorted((DOCS / "reference").glob("*.md")):
        for match in DIRECTIVE.finditer(page.read_text(encoding="utf-8")):
            local = yaml.safe_load(textwrap.dedent(match["options"])) or {}
            out.append((page, match["ident"], {**base, **local.get("options", {})}))
    return out


def _shown(obj: Any, options: dict[str, Any], names: list[str] | None) -> list[Any]:
    """The members mkdocstrings renders for ``obj`` under ``options`` (filters, members, inherited)."""
    members = dict(obj.members)
    if obj.is_class and options.get("inherited_members"):
        members = {**obj.inherited_members, **members}
    if obj.is_module and names is None:  # a module shows its __all__, else what it defines itself
        exports = None if obj.exports is None else {str(e) for e in obj.exports}
        members = {k: m for k, m in members.items()
                   if (k in exports if exports is not None else not m.is_alias)}
    if names is not None:
        members = {k: members[k] for k in names}
    else:
        for pattern in options.get("filters", []):
            negate, regex = pattern.startswith("!"), pattern.lstrip("!")
            members = {k: m for k, m in members.items() if bool(re.search(regex, k)) != negate}
    return [m.final_target if m.is_alias else m for m in members.values()]


def _undocumented(obj: Any, options: dict[str, Any], names: list[str] | None, depth: int = 0) -> list[str]:
    missing = []
    for member in _shown(obj, options, names):
        if member.is_attribute or member.name.startswith("__"):
            continue  # attributes show their annotation and value; dunders are not listed
        if member.name.startswith("_"):
            continue  # a backend's hooks: shown with their signatures, documented by the contract's text
        if not member.docstring or not member.docstring.value.strip():
            missing.append(member.path)
        if member.is_class and depth < 2:
            missing += _undocumented(member, options, None, depth + 1)
    return missing


def test_the_api_reference_has_a_docstring_for_every_function_class_and_method() -> None:
    """mkdocstrings silently leaves out what has no docstring; here that is a failure instead."""
    import griffe

    loader = griffe.GriffeLoader(search_paths=[str(ROOT)])
    package = loader.load("labvault")
    loader.resolve_aliases(implicit=False, external=False)
    missing = []
    for page, ident, options in reference_directives():
        obj = package if ident == "labvault" else package[ident.removeprefix("labvault.")]
        obj = obj.final_target if obj.is_alias else obj
        if not obj.docstring:
            missing.append(obj.path)
        names = options.get("members") if isinstance(options.get("members"), list) else None
        missing += [f"{rel(page)}: {path}" for path in _undocumented(obj, options, names)]
    assert not missing, "no docstring (write one; the API reference shows these):\n" + "\n".join(missing)
