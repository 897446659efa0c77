"""The bad-input table as data: every public entry point of labvault, fed junk (``BAD_INPUT_CASES``).

Each ``BadCase`` is one refused call: a name, key, value, step, text, URI, filter, ``order_by``, artifact key
or artifact source that labvault must turn away with the documented error class (``InvalidArgumentError``
unless stated), with a message containing every ``named`` fragment (for a value inside a mapping or a
series that is its key, plus the value where it is printable). The ``BAD_*`` tables hold the junk of one
kind (label, bad input, the text the message must contain); the ``_*_cases`` builders aim each table, or
a ``_pick`` of its rows, at the calls that take that kind of input. ``labvault.testing.bad_input`` runs
them (``check_case``: the exact error class, the message, the store unchanged).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from labvault.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    LabvaultError,
    NotFoundError,
    UnsupportedOperationError,
)
from labvault.testing.bad_input_context import BadInputContext

__all__ = [
    "BAD_ARTIFACT_KEYS", "BAD_FILTERS", "BAD_IDS", "BAD_INPUT_CASES", "BAD_JSON_VALUES", "BAD_KEYS",
    "BAD_METRIC_VALUES", "BAD_NAMES", "BAD_OPEN_OPTIONS", "BAD_ORDER_BY", "BAD_PAGING", "BAD_PREFIXES",
    "BAD_STEPS", "BAD_TAG_VALUES", "BAD_TIMESTAMPS", "BAD_URIS", "BadCase", "Call", "Named", "Row",
]


#: A case's call, made against the shared store (it must raise).
Call = Callable[[BadInputContext], object]
#: Text the message must contain, or a function of the context giving it (e.g. the id of the target run).
Named = str | Callable[[BadInputContext], str]


@dataclass(frozen=True)
class BadCase:
    """One refused call: ``call`` must raise ``error`` whose message contains every ``named`` fragment."""

    label: str
    call: Call
    named: tuple[Named, ...]
    error: type[LabvaultError] = InvalidArgumentError


def _case(label: str, call: Call, *named: Named,
          error: type[LabvaultError] = InvalidArgumentError) -> BadCase:
    return BadCase(label, call, named, error)


#: A table row: (label, the bad input, the text (or texts) the message must contain).
Row = tuple[str, Any, str | tuple[str, ...]]


#: (label, name, text the message must contain) for experiment, project and run names.
BAD_NAMES: list[Row] = [
    ("empty", "", "empty"),
    ("too long", "x" * 129, "xxxxxxxx"),
    ("traversal", "../etc", "'../etc'"),
    ("dotdot", "a..b", "'a..b'"),
    ("absolute", "/abs", "'/abs'"),
    ("NUL", "a\x00b", "'a\\x00b'"),
    ("SQL", "x'; DROP TABLE runs; --", "DROP TABLE runs"),
    ("glob", "exp*", "'exp*'"),
    ("percent", "100%", "'100%'"),
    ("not str", 42, "42"),
    ("None", None, "None"),
    ("lone surrogate", "a\udcff", "'a\\udcff'"),
    ("high surrogate", "\ud800", "'\\ud800'"),
    ("trailing space", "a ", "'a '"),
    ("newline", "a\nb", "'a\\nb'"),
    ("backslash", "a\\b", "'a\\\\b'"),
]

#: (label, key, text the message must contain) for param, tag, result and metric keys.
BAD_KEYS: list[Row] = [
    ("empty", "", "empty"),
    ("traversal", "../x", "'../x'"),
    ("leading slash", "/lr", "'/lr'"),
    ("NUL", "l\x00r", "'l\\x00r'"),
    ("quote", "lr'", "lr'"),
    ("too long", "k" * 251, "kkkkkkkk"),
    ("glob", "a[0]", "'a[0]'"),
    ("SQL", "a;b", "'a;b'"),
    ("lone surrogate", "l\udcffr", "'l\\udcffr'"),
    ("high surrogate", "\ud800", "'\\ud800'"),
    ("not str", 42, "42"),
    ("trailing slash", "a/", "'a/'"),
    ("double slash", "a//b", "'a//b'"),
    ("newline", "a\nb", "'a\\nb'"),
    ("percent", "lr%", "'lr%'"),
]

#: (label, id, text the message must contain) for run ids.
BAD_IDS: list[Row] = [
    ("punctuation", "not-an-id!", "'not-an-id!'"),
    ("empty", "", "''"),
    ("too long", "a" * 65, "aaaaaaaa"),
    ("traversal", "../etc", "'../etc'"),
    ("NUL", "ab\x00cd", "'ab\\x00cd'"),
    ("lone surrogate", "ab\udcffcd", "'ab\\udcffcd'"),
    ("non-ASCII", "abc\u00e9", "'abc\u00e9'"),
    ("not str", 42, "42"),
    ("space", "ab cd", "'ab cd'"),
]

def _nested(depth: int) -> list[Any]:
    """A list nested ``depth`` levels deep."""
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


#: (label, value, fragments besides the key) for JSON values: params and results.
BAD_JSON_VALUES: list[Row] = [
    ("NaN", math.nan, ("nan",)),
    ("inf", math.inf, ("inf",)),
    ("-inf", -math.inf, ("inf",)),
    ("nested NaN", [1.0, math.nan], ("nan",)),
    ("object", object(), ("object",)),
    ("set", {1, 2}, ("set",)),
    ("bytes", b"raw", ("bytes",)),
    ("complex", 1j, ("complex",)),
    ("non-string dict key", {1: "a"}, ("key 1",)),
    ("nested too deep", _nested(70), ("deep",)),
    ("too large", "x" * 70_000, ("65536",)),
    ("NUL", "a\x00b", ()),
    ("NUL nested in list", ["ok", "a\x00"], ()),
    ("NUL in a nested dict key", {"a\x00b": 1}, ()),
    ("lone surrogate", "\udcff", ()),
    ("high surrogate", "x\ud800", ()),
    ("lone surrogate nested in list", ["ok", "\udcff"], ()),
    ("lone surrogate in a nested dict key", {"\udcff": 1}, ()),
    # Integers are kept exactly up to 4,300 digits (Python's int/str limit); longer ones are refused.
    ("10**5000", 10**5000, ("4300",)),
    ("-10**5000", -(10**5000), ("4300",)),
    ("10**5000 nested", {"n": [1, 10**5000]}, ("4300",)),
]

#: (label, value, fragments besides the key) for tag values.
BAD_TAG_VALUES: list[Row] = [
    ("NUL", "v\x00", ("'v\\x00'",)),
    ("list", [1], ("[1]",)),
    ("dict", {"a": 1}, ("dict",)),
    ("None", None, ("None",)),
    ("bytes", b"x", ("bytes",)),
    ("NaN", math.nan, ("nan",)),
    ("inf", math.inf, ("inf",)),
    ("too long", "x" * 8001, ("8000",)),
    ("10**5000", 10**5000, ()),
    ("lone surrogate", "\udcff", ()),
    ("high surrogate", "a\ud800b", ()),
    ("object", object(), ("object",)),
]


def _pick(table: Sequence[Row], *labels: str) -> list[Row]:
    """The rows of ``table`` with these labels (a typo in the table fails at import)."""
    found = [row for row in table if row[0] in labels]
    assert len(found) == len(labels), f"unknown labels in {labels}"
    return found


def _each(prefix: str, rows: Sequence[Row], make: Callable[[Any], Call], *extra: Named,
          error: type[LabvaultError] = InvalidArgumentError) -> list[BadCase]:
    """One case per row: ``make(value)`` is the call; the message must hold ``extra`` and the row's text."""
    out = []
    for label, value, named in rows:
        texts = (named,) if isinstance(named, str) else named
        out.append(BadCase(f"{prefix} {label}", make(value), (*extra, *texts), error))
    return out


def _name_cases() -> list[BadCase]:
    def experiment(n: Any) -> Call:
        return lambda c: c.vault.experiment(n)

    def project(n: Any) -> Call:
        return lambda c: c.vault.experiment("fine", project=n)

    def listing(n: Any) -> Call:
        return lambda c: c.vault.experiments(project=n)

    def run_name(n: Any) -> Call:
        return lambda c: c.exp.start_run(name=n)

    def delete(n: Any) -> Call:
        return lambda c: c.vault.delete_experiment(n)

    return [
        *_each("experiment name", BAD_NAMES, experiment),
        *_each("project name", _pick(BAD_NAMES, "empty", "traversal", "NUL", "lone surrogate", "not str"),
               project),
        *_each("experiments(project)", _pick(BAD_NAMES, "traversal", "lone surrogate", "not str"), listing),
        *_each("run name", _pick(BAD_NAMES, "empty", "traversal", "NUL", "lone surrogate", "too long",
                                 "not str"), run_name),
        *_each("delete_experiment name", _pick(BAD_NAMES, "traversal", "NUL", "lone surrogate", "not str"),
               delete),
        _case("delete_experiment missing", lambda c: c.vault.delete_experiment("no-such-exp"),
              "'no-such-exp'", error=NotFoundError),
        _case("delete_experiment mode", lambda c: c.vault.delete_experiment("valid", mode=_any("sideways")),
              "'sideways'"),
        _case("delete_experiment remote without one",
              lambda c: c.vault.delete_experiment("valid", mode="remote"), "remote",
              error=UnsupportedOperationError),
        _case("delete_experiment project", lambda c: c.vault.delete_experiment("valid", project="../p"),
              "'../p'"),
    ]


def _any(value: Any) -> Any:
    """``value`` typed as ``Any``: the table passes wrong types on purpose."""
    return value


def _id_cases() -> list[BadCase]:
    def get(i: Any) -> Call:
        return lambda c: c.vault.get_run(i)

    def parent(i: Any) -> Call:
        return lambda c: c.exp.start_run(parent=i)

    def create(i: Any) -> Call:
        return lambda c: c.vault.backend.create_run(c.exp.id, name=None, parent_id=None, start_time=1.0,
                                                     params={}, tags={}, run_id=c.run.id if i is None else i)

    return [
        *_each("get_run id", BAD_IDS, get),
        _case("get_run missing", lambda c: c.vault.get_run("f" * 32), "f" * 32, error=NotFoundError),
        *_each("parent", _pick(BAD_IDS, "punctuation", "NUL", "lone surrogate", "not str"), parent),
        _case("parent missing", lambda c: c.exp.start_run(parent="e" * 32), "e" * 32, error=NotFoundError),
        *_each("create_run run_id", _pick(BAD_IDS, "traversal", "empty", "too long", "lone surrogate",
                                          "not str"), create),
        _case("create_run run_id taken", create(None), lambda c: c.run.id, error=AlreadyExistsError),
        _case("Experiment.get_run number 0", lambda c: c.exp.get_run(0), "0", error=NotFoundError),
    ]


def _param_cases() -> list[BadCase]:
    def key(k: Any) -> Call:
        return lambda c: c.run.log_params({"ok_first": 1, k: 1})

    def value(x: Any) -> Call:
        return lambda c: c.run.log_params({"ok_first": 1, "bad": x})

    def single(x: Any) -> Call:
        return lambda c: c.run.log_param("bad", x)

    def at_start(x: Any) -> Call:
        return lambda c: c.exp.start_run(params={"bad": x})

    return [
        *_each("param key", BAD_KEYS, key),
        *_each("param value", BAD_JSON_VALUES, value, "'bad'"),
        *_each("log_param value", _pick(BAD_JSON_VALUES, "NaN", "lone surrogate", "10**5000"),
               single, "'bad'"),
        _case("params not a mapping", lambda c: c.run.log_params(_any([("a", 1)])), "list"),
        *_each("start_run params", _pick(BAD_JSON_VALUES, "NaN", "object", "NUL in a nested dict key",
                                         "lone surrogate", "lone surrogate in a nested dict key",
                                         "10**5000 nested"), at_start, "'bad'"),
        _case("start_run params key", lambda c: c.exp.start_run(params={"../x": 1}), "'../x'"),
        _case("start_run params not a mapping", lambda c: c.exp.start_run(params=_any([1])), "list"),
    ]


def _result_cases() -> list[BadCase]:
    def name(k: Any) -> Call:
        return lambda c: c.run.log_result(k, 1)

    def value(x: Any) -> Call:
        return lambda c: c.run.log_result("bad", x)

    values = _pick(BAD_JSON_VALUES, "NaN", "nested NaN", "object", "bytes", "NUL", "NUL in a nested dict key",
                   "lone surrogate", "lone surrogate in a nested dict key", "10**5000 nested",
                   "10**5000", "too large")
    return [
        *_each("result name", _pick(BAD_KEYS, "empty", "traversal", "NUL", "lone surrogate", "not str"),
               name),
        *_each("result value", values, value, "'bad'"),
    ]


def _tag_cases() -> list[BadCase]:
    def key(k: Any) -> Call:
        return lambda c: c.run.set_tags({"ok_first": "1", k: "v"})

    def value(x: Any) -> Call:
        return lambda c: c.run.set_tags({"ok_first": "1", "bad": x})

    def single(x: Any) -> Call:
        return lambda c: c.run.set_tag("bad", x)

    def at_start(x: Any) -> Call:
        return lambda c: c.exp.start_run(tags={"bad": x})

    return [
        *_each("tag key", _pick(BAD_KEYS, "empty", "NUL", "glob", "lone surrogate", "not str", "newline"),
               key),
        *_each("tag value", BAD_TAG_VALUES, value, "'bad'"),
        *_each("set_tag value", _pick(BAD_TAG_VALUES, "lone surrogate", "10**5000"), single, "'bad'"),
        *_each("start_run tags", _pick(BAD_TAG_VALUES, "NUL", "list", "lone surrogate", "10**5000"), at_start,
               "'bad'"),
        _case("tags not a mapping", lambda c: c.run.set_tags(_any("a=b")), "str"),
    ]


#: (label, value, text) for metric values.
BAD_METRIC_VALUES: list[Row] = [
    ("str", "0.5", "'0.5'"),
    ("None", None, "None"),
    ("bool", True, "True"),
    ("complex", 1j, "1j"),
    ("list", [1.0], "[1.0]"),
    ("numpy array", np.array([1.0, 2.0]), "array"),
    ("bytes", b"1", "bytes"),
    ("10**400", 10**400, "1000000000"),
]

#: (label, step, text) for metric steps.
BAD_STEPS: list[Row] = [
    ("negative", -1, "-1"),
    ("float", 1.5, "1.5"),
    ("bool", True, "True"),
    ("str", "1", "'1'"),
    ("2**63", 2**63, "9223372036854775808"),
    ("10**20", 10**20, "100000000000000000000"),
    ("numpy uint64 max", np.uint64(2**64 - 1), "18446744073709551615"),
    ("numpy int64 negative", np.int64(-1), "-1"),
    ("numpy float", np.float64(2.0), "2.0"),
]

#: (label, timestamp, text) for metric timestamps.
BAD_TIMESTAMPS: list[Row] = [
    ("inf", math.inf, "inf"),
    ("-inf", -math.inf, "inf"),
    ("NaN", math.nan, "nan"),
    ("str", "now", "'now'"),
    ("bool", True, "True"),
    ("10**400", 10**400, "1000000000"),
]


def _metric_cases() -> list[BadCase]:
    def key(k: Any) -> Call:
        return lambda c: c.run.log_metric(k, 1.0)

    def keys(k: Any) -> Call:
        return lambda c: c.run.log_metrics({"ok_first": 1.0, k: 1.0})

    def value(x: Any) -> Call:
        return lambda c: c.run.log_metric("loss", x)

    def values(x: Any) -> Call:
        return lambda c: c.run.log_metrics({"ok_first": 1.0, "loss": x})

    def step(s: Any) -> Call:
        return lambda c: c.run.log_metric("loss", 1.0, step=s)

    def steps(s: Any) -> Call:
        return lambda c: c.run.log_metrics({"loss": 1.0}, step=s)

    def stamp(t: Any) -> Call:
        return lambda c: c.run.log_metric("loss", 1.0, timestamp=t)

    def history(k: Any) -> Call:
        return lambda c: c.run.metric_history(k)

    return [
        *_each("metric key", _pick(BAD_KEYS, "empty", "traversal", "NUL", "glob", "SQL", "lone surrogate",
                                   "not str", "too long"), key),
        *_each("log_metrics key", _pick(BAD_KEYS, "glob", "NUL", "lone surrogate"), keys),
        *_each("metric value", BAD_METRIC_VALUES, value, "'loss'"),
        *_each("log_metrics value", _pick(BAD_METRIC_VALUES, "str", "None", "10**400"), values, "'loss'"),
        _case("log_metrics not a mapping", lambda c: c.run.log_metrics(_any([1.0])), "list"),
        *_each("metric step", BAD_STEPS, step, "'loss'"),
        *_each("log_metrics step", _pick(BAD_STEPS, "negative", "2**63"), steps, "'loss'"),
        *_each("metric timestamp", BAD_TIMESTAMPS, stamp, "'loss'"),
        *_each("metric_history key", _pick(BAD_KEYS, "glob", "NUL", "lone surrogate"), history),
    ]


def _series(values: Any, steps: Any = None, timestamps: Any = None, key: Any = "loss") -> Call:
    return lambda c: c.run.log_metric_series(key, values, steps, timestamps)


def _series_cases() -> list[BadCase]:
    """``log_metric_series``: the message names the key and the argument (values, steps, timestamps)."""
    return [
        _case("series key glob", _series([1.0], key="m?"), "'m?'"),
        _case("series key lone surrogate", _series([1.0], key="m\udcff"), "'m\\udcff'"),
        _case("series values str item", _series(["a"]), "'loss'", "values"),
        _case("series values str", _series("abc"), "'loss'", "values"),
        _case("series values None", _series(None), "'loss'", "values"),
        _case("series values 10**400", _series([10**400]), "'loss'", "values"),
        _case("series values dict", _series({"a": 1.0}), "'loss'", "values"),
        _case("series steps shorter", _series([1.0, 2.0], steps=[5]), "'loss'", "steps"),
        _case("series timestamps shorter", _series([1.0, 2.0], timestamps=[1.0]), "'loss'", "timestamps"),
        _case("series steps float", _series([1.0], steps=[0.5]), "'loss'", "steps[0]", "0.5"),
        _case("series steps negative", _series([1.0, 2.0], steps=[5, -1]), "'loss'", "steps[1]", "-1"),
        _case("series steps 2**63", _series([1.0, 2.0], steps=[5, 2**63]), "'loss'", "steps[1]",
              "9223372036854775808"),
        _case("series steps uint64 max", _series([1.0], steps=np.array([2**64 - 1], np.uint64)), "'loss'",
              "steps"),
        _case("series timestamps NaN", _series([1.0], timestamps=[math.nan]), "'loss'", "timestamps[0]",
              "nan"),
        _case("series timestamps str", _series([1.0], timestamps=["now"]), "'loss'", "timestamps"),
    ]


#: (label, key, text) for artifact keys.
BAD_ARTIFACT_KEYS: list[Row] = [
    ("traversal", "../../etc/passwd", "'../../etc/passwd'"),
    ("absolute", "/etc/passwd", "'/etc/passwd'"),
    ("backslash", "a\\b", "'a\\\\b'"),
    ("empty segment", "a//b", "'a//b'"),
    ("NUL", "a\x00b", "'a\\x00b'"),
    ("glob", "*.png", "'*.png'"),
    ("empty", "", "empty"),
    ("dot", ".", "'.'"),
    ("dot segment", "a/./b", "'a/./b'"),
    ("trailing slash", "a/", "'a/'"),
    ("too long", "k" * 1025, "kkkkkkkk"),
    ("segment too long", "d/" + "s" * 256, "ssssssss"),
    ("lone surrogate", "a\udcff.txt", "'a\\udcff.txt'"),
    ("not str", 42, "42"),
]

#: (label, prefix, text) for artifact listing prefixes.
BAD_PREFIXES: list[Row] = [
    ("traversal", "../", "'..'"),
    ("absolute", "/abs", "'/abs'"),
    ("NUL", "a\x00", "'a\\x00'"),
    ("lone surrogate", "\udcff", "\\udcff"),
    ("not str", 42, "int"),
    ("empty segment", "a//", "'a/'"),
]


def _artifact_cases() -> list[BadCase]:
    def log(k: Any) -> Call:
        return lambda c: c.run.log_artifact(k, b"x")

    def get(k: Any) -> Call:
        return lambda c: c.run.get_artifact(k)

    def listing(p: Any) -> Call:
        return lambda c: c.run.list_artifacts(p)

    return [
        *_each("artifact key", BAD_ARTIFACT_KEYS, log),
        *_each("get_artifact key", _pick(BAD_ARTIFACT_KEYS, "traversal", "NUL", "lone surrogate", "not str"),
               get),
        *_each("list_artifacts prefix", BAD_PREFIXES, listing),
        _case("get_artifact missing", lambda c: c.run.get_artifact("missing.txt"), "'missing.txt'",
              error=NotFoundError),
        _case("open_artifact missing", lambda c: c.run.open_artifact("missing.txt"), "'missing.txt'",
              error=NotFoundError),
        _case("open_artifact key traversal", lambda c: c.run.open_artifact("../x"), "'../x'"),
        _case("download_artifact missing", lambda c: c.run.download_artifact("missing.txt", c.tmp / "m"),
              "'missing.txt'", error=NotFoundError),
        _case("download_artifact key traversal", lambda c: c.run.download_artifact("../x", c.tmp / "t"),
              "'../x'"),
        _case("download_artifact onto a file", lambda c: c.run.download_artifact("a.txt", c.existing_file),
              "exists.bin", error=AlreadyExistsError),
        _case("download_artifact path NUL", lambda c: c.run.download_artifact("a.txt", f"{c.tmp}/o\x00.bin"),
              "o\\x00.bin"),
        _case("download_artifact path not a path", lambda c: c.run.download_artifact("a.txt", _any(42)),
              "42"),
    ]


def _artifact_data_cases() -> list[BadCase]:
    def data(d: Any) -> Call:
        return lambda c: c.run.log_artifact("ok.txt", d)

    return [
        *_each("artifact data", [("int", 12345, "int"), ("None", None, "NoneType"), ("list", [b"a"], "list"),
                                 ("float", 1.5, "float")], data),
        _case("artifact data missing file", lambda c: c.run.log_artifact("ok.txt", c.tmp / "absent.bin"),
              "absent.bin"),
        _case("artifact data a directory", lambda c: c.run.log_artifact("ok.txt", c.directory),
              "a-directory"),
        _case("artifact data text file object",
              lambda c: c.run.log_artifact("t.txt", _any(io.StringIO("text, not bytes"))), "binary"),
        _case("artifact data path with NUL", lambda c: c.run.log_artifact("ok.txt", f"{c.tmp}/a\x00b"),
              "a\\x00b"),
    ]


def _end_cases() -> list[BadCase]:
    def status(s: Any) -> Call:
        return lambda c: c.spare.end(s)

    def error(e: Any) -> Call:
        return lambda c: c.spare.end("failed", error=e)

    return [
        *_each("end status", [("running", "running", "'running'"), ("bogus", "bogus", "'bogus'"),
                              ("empty", "", "''"), ("None", None, "None")], status),
        *_each("end error", [("lone surrogate", "boom \udcff", "error"),
                             ("high surrogate", "\ud800", "error"), ("NUL", "bo\x00om", "error"),
                             ("not str", 42, "42")], error),
    ]


#: (label, filter, text) for search filters.
BAD_FILTERS: list[Row] = [
    ("double operator", "params.lr >> 1", "column 12"),
    ("missing value", "params.lr >", "end of the filter"),
    ("unterminated string", "params.opt = 'adam", "unterminated string"),
    ("unknown field", "colour = 'red'", "'colour'"),
    ("unknown prefix", "bogus.lr = 1", "'bogus'"),
    ("unknown attribute", "attributes.colour = 1", "'colour'"),
    ("empty key", "params. = 1", "'params.'"),
    ("bad character", "params.lr ~ 1", "'~'"),
    ("missing AND", "params.lr = 1 params.x = 2", "missing AND or OR"),
    ("unclosed paren", "(params.lr = 1", "')'"),
    ("extra paren", "params.lr = 1)", "')'"),
    ("NULL value", "params.lr = NULL", "IS NULL"),
    ("empty IN", "params.lr IN ()", "'('"),
    ("NOT without LIKE", "params.lr NOT = 1", "after NOT"),
    ("IS without NULL", "params.lr IS 1", "NULL after IS"),
    ("LIKE number", "params.opt LIKE 5", "LIKE"),
    ("LIKE lone backslash", "params.opt LIKE 'a\\'", "lone '\\'"),
    ("LIKE pattern too long", "tags.t LIKE '" + "a" * 1025 + "'", "1025"),
    ("number out of range", "params.lr = 1e999", "'1e999'"),
    ("malformed number", "params.lr = 1.2.3", "'1.2.3'"),
    ("nested too deep", "(" * 65 + "params.a = 1" + ")" * 65, "64 levels"),
    ("too many conditions", " OR ".join(["params.a = 1"] * 257), "256 conditions"),
    ("too long", "params.a = '" + "x" * 10_001 + "'", "10,000"),
    ("NUL", "params.a = 'x\x00'", "\\x00"),
    ("not str", 42, "int"),
    ("lone surrogate in a string", "tags.team = 'a\udcff'", "\\udcff"),
    ("lone surrogate in a key", "params.l\udcffr = 1", "\\udcff"),
]

#: (label, order_by, text) for search orderings.
BAD_ORDER_BY: list[Row] = [
    ("bad direction", ["metrics.acc sideways"], "'metrics.acc sideways'"),
    ("empty entry", [""], "''"),
    ("not str entry", [42], "42"),
    ("unknown field", ["colour"], "'colour'"),
    ("double direction", ["metrics.acc desc desc"], "'metrics.acc desc desc'"),
    ("direction only", ["desc"], "'desc'"),
    ("trailing comma", "metrics.acc,", "'metrics.acc,'"),
    ("NUL", ["params.a\x00"], "\\x00"),
    ("lone surrogate", ["params.\udcff"], "\\udcff"),
    ("not a sequence", 42, "42"),
]

#: (label, (argument, value), text) for search paging.
BAD_PAGING: list[Row] = [
    ("limit negative", ("limit", -1), "-1"),
    ("limit bool", ("limit", True), "True"),
    ("limit float", ("limit", 1.5), "1.5"),
    ("limit str", ("limit", "10"), "'10'"),
    ("offset negative", ("offset", -1), "-1"),
    ("offset None", ("offset", None), "None"),
    ("offset str", ("offset", "2"), "'2'"),
]


def _search_cases() -> list[BadCase]:
    def flt(f: Any) -> Call:
        return lambda c: c.vault.search_runs("valid", filter=f)

    def order(o: Any) -> Call:
        return lambda c: c.vault.search_runs("valid", order_by=o)

    def paging(arg: tuple[str, Any]) -> Call:
        return lambda c: c.vault.search_runs("valid", **{arg[0]: arg[1]})

    return [
        *_each("filter", BAD_FILTERS, flt),
        *_each("order_by", BAD_ORDER_BY, order),
        *_each("search", BAD_PAGING, paging),
        _case("search experiment missing", lambda c: c.vault.search_runs("no-such-exp"), "'no-such-exp'",
              error=NotFoundError),
        _case("search experiment name bad", lambda c: c.vault.search_runs("../x"), "'../x'"),
        _case("search experiment not str", lambda c: c.vault.search_runs(_any([42])), "42"),
        _case("search experiments not a sequence", lambda c: c.vault.search_runs(_any(42)), "42"),
        _case("search project bad", lambda c: c.vault.search_runs("valid", project="../p"), "'../p'"),
    ]


#: (label, uri, text) for ``labvault.open``.
BAD_URIS: list[Row] = [
    ("unknown scheme", "nosuch://x", "'nosuch://x'"),
    ("empty", "", "''"),
    ("NUL", "file://a\x00b", "'file://a\\x00b'"),
    ("bad scheme", "s%3://x", "'s%3://x'"),
    ("not str", 42, "int"),
    ("padded", " memory://x", "' memory://x'"),
    ("drive-like", "ab:cd", "'ab:cd'"),
    ("memory name", "memory://a/b", "'a/b'"),
    ("lone surrogate", "memory://a\udcff", "\\udcff"),
]

#: (label, options, text) for ``labvault.open("memory://", **options)``.
BAD_OPEN_OPTIONS: list[Row] = [
    ("flush_interval zero", {"flush_interval": 0}, "flush_interval"),
    ("flush_interval negative", {"flush_interval": -1}, "-1"),
    ("flush_interval str", {"flush_interval": "1"}, "'1'"),
    ("flush_interval NaN", {"flush_interval": math.nan}, "nan"),
    ("heartbeat_timeout zero", {"heartbeat_timeout": 0}, "heartbeat_timeout"),
    ("remote empty", {"remote": ""}, "''"),
    ("remote not str", {"remote": 42}, "42"),
    ("artifacts empty", {"artifacts": ""}, "''"),
    ("artifacts unknown scheme", {"artifacts": "nosuch://x"}, "nosuch"),
]


def _open_cases() -> list[BadCase]:
    def uri(u: Any) -> Call:
        return lambda c: c.open(u)

    def options(o: dict[str, Any]) -> Call:
        return lambda c: c.open("memory://", **o)

    return [
        *_each("uri", BAD_URIS, uri),
        *_each("open option", BAD_OPEN_OPTIONS, options),
        _case("open unknown option on this backend", lambda c: c.open(c.uri, bogus_option=1), "bogus_option"),
        _case("open uri and config", lambda c: c.open("memory://", config={"backend": "memory"}), "config"),
        _case("open config unknown backend", lambda c: c.open(None, config={"backend": "nosuch"}), "nosuch"),
    ]


#: Every case of the table.
BAD_INPUT_CASES: list[BadCase] = [
    *_name_cases(), *_id_cases(), *_param_cases(), *_result_cases(), *_tag_cases(), *_metric_cases(),
    *_series_cases(), *_artifact_cases(), *_artifact_data_cases(), *_end_cases(), *_search_cases(),
    *_open_cases(),
]
