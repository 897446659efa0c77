"""Value rules: what names, keys, artifact paths and values labvault accepts.

Rules are strict on purpose: a name ends up in file paths, SQL, Redis keys and URLs, so anything that
could escape a directory, smuggle a wildcard or confuse a parser is refused up front with an
``InvalidArgumentError`` that quotes the offending value.

Text, wherever it appears (names, keys, tag values, params, results and every string or key nested in
them, run names, error texts, filters, descriptions), passes one check, ``check_text``: it must be
encodable as UTF-8 (no lone surrogates such as ``"\\udcff"``, which ``os.fsdecode`` produces for
undecodable file names) and contain no NUL (PostgreSQL cannot store it, C APIs truncate at it). Every
message quotes the bad value with ``show``: an escaped ``repr`` that is itself always printable and
encodable, so reporting a bad value can never fail in turn.

Integers in params, results and tags may be arbitrarily large up to ``MAX_INT_DIGITS`` decimal digits
(every backend stores big integers exactly, as JSON numbers or text); beyond that Python itself cannot
turn them into text by default, so they are refused rather than failing later in ``str()``/``json``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from labvault.errors import InvalidArgumentError

MAX_NAME_LENGTH = 128
MAX_KEY_LENGTH = 250
MAX_ARTIFACT_KEY_LENGTH = 1024
MAX_TAG_VALUE_LENGTH = 8000
MAX_PARAM_JSON_LENGTH = 64 * 1024
#: A run's error text: the explicit ``update_run(error=...)`` refuses longer ones; the error text of a
#: ``with`` block that raised is truncated to it (see ``escape_error_text``).
MAX_ERROR_LENGTH = 64 * 1024
#: Integers with more decimal digits are refused: Python's default ``int``/``str`` conversion limit, so
#: any process can write and read them back (``sys.get_int_max_str_digits``).
MAX_INT_DIGITS = 4300
_INT_LIMIT = 10**MAX_INT_DIGITS

# Experiment and project names: letters, digits, and a few separators; start with a letter or digit.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\- ]*")
# Param / metric / tag / result keys: as names, plus "/" and ":" for namespacing ("val/loss").
_KEY_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-/: ]*")
# One artifact path segment.
_SEGMENT_RE = re.compile(r"[A-Za-z0-9_.\-+=@,()\[\] ]+")


def show(value: object, limit: int = 80) -> str:
    """``repr(value)`` for an error message: at most ``limit`` characters, and always encodable.

    ``repr`` escapes NUL and lone surrogates in strings; a huge integer, whose ``repr`` raises, is shown by
    its size; anything a custom ``__repr__`` returns is backslash-escaped where it is not UTF-8.
    """
    if isinstance(value, int) and not isinstance(value, bool) and not -_INT_LIMIT < value < _INT_LIMIT:
        return f"<int of {value.bit_length()} bits>"
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text



def check_text(value: object, what: str) -> str:
    """Return ``value`` if it is a string that can be stored anywhere: valid UTF-8 and no NUL.

    This is the one text check of labvault; every other rule here (names, keys, values, nested keys,
    error texts) and the query parser call it. The message names the value escaped and where the bad
    character is, e.g. ``tag 't' value '/data/\\udcff.bin' contains a lone surrogate '\\udcff' at index
    6 ...``.
    """
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{what} must be a string, got {type(value).__name__} {show(value)}")
    at = value.find("\x00")
    if at >= 0:
        raise InvalidArgumentError(f"{what} {show(value)} contains a NUL character at index {at}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidArgumentError(
                f"{what} {show(value)} contains a lone surrogate {value[exc.start]!a} at index "
                f"{exc.start}: text must be valid Unicode (decode bytes first, e.g. with errors='replace')"
            ) from None
    return value


def check_int(value: int, what: str) -> int:
    """Return an integer that has at most ``MAX_INT_DIGITS`` decimal digits (so it converts to text)."""
    if not -_INT_LIMIT < value < _INT_LIMIT:
        raise InvalidArgumentError(
            f"{what} is an integer of {value.bit_length()} bits: more than {MAX_INT_DIGITS} decimal digits "
            "cannot be stored"
        )
    return value


def validate_error_text(value: object) -> str:
    """Check a run's error text for ``update_run(error=...)``: text as ``check_text``, bounded length.

    An explicit error text is refused rather than altered (the caller chose it); the ``with`` block of a
    run escapes the exception's text with ``escape_error_text`` instead, so it always fits.
    """
    check_text(value, "error text")
    assert isinstance(value, str)
    if len(value) > MAX_ERROR_LENGTH:
        raise InvalidArgumentError(
            f"error text {show(value)} is longer than {MAX_ERROR_LENGTH} characters")
    return value


def escape_error_text(text: str) -> str:
    """Make any text a valid error text: NUL as ``\\x00``, lone surrogates as ``\\udcff``, and at most
    ``MAX_ERROR_LENGTH`` characters (the tail is cut, saying how much). Never raises for a string."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > MAX_ERROR_LENGTH:
        cut = len(text) - MAX_ERROR_LENGTH + 40
        text = f"{text[: MAX_ERROR_LENGTH - 40]}... [{cut} characters cut]"
    return text


def _bounded_string(value: object, what: str, max_length: int) -> str:
    """``value`` if it is a non-empty string of at most ``max_length`` characters, else the error saying which
    of the three it is not (the start of every name and key check)."""
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{what} must be a string, got {type(value).__name__} {show(value)}")
    if not value:
        raise InvalidArgumentError(f"{what} must not be empty")
    if len(value) > max_length:
        raise InvalidArgumentError(f"{what} {show(value)} is longer than {max_length} characters")
    return value


def validate_name(value: object, what: str = "name") -> str:
    """Check an experiment, project or run name and return it."""
    value = _bounded_string(value, what, MAX_NAME_LENGTH)
    if not _NAME_RE.fullmatch(value) or value.endswith(" ") or ".." in value:
        check_text(value, what)  # NUL and lone surrogates get their own message
        raise InvalidArgumentError(
            f"invalid {what} {show(value)}: use letters, digits, '_', '-', '.', and spaces, "
            "starting with a letter or digit (no '..', '/', quotes or wildcards)"
        )
    return value


def validate_key(value: object, what: str = "key") -> str:
    """Check a param, metric, tag or result key and return it."""
    value = _bounded_string(value, what, MAX_KEY_LENGTH)
    if (
        not _KEY_RE.fullmatch(value)
        or ".." in value
        or "//" in value
        or value.endswith(("/", " "))
    ):
        check_text(value, what)
        raise InvalidArgumentError(
            f"invalid {what} {show(value)}: use letters, digits, '_', '-', '.', '/', ':' and spaces, "
            "starting with a letter, digit or '_' (no '..', '//', quotes or wildcards)"
        )
    return value


def validate_artifact_key(value: object) -> str:
    """Check an artifact path ("plots/roc.png") and return it: relative, no '..', no odd characters."""
    if not isinstance(value, str):
        raise InvalidArgumentError(
            f"artifact key must be a string, got {type(value).__name__} {show(value)}"
        )
    if not value:
        raise InvalidArgumentError("artifact key must not be empty")
    check_text(value, "artifact key")
    if len(value) > MAX_ARTIFACT_KEY_LENGTH:
        raise InvalidArgumentError(
            f"artifact key {show(value)} is longer than {MAX_ARTIFACT_KEY_LENGTH} characters"
        )
    if value.startswith("/") or "\\" in value:
        raise InvalidArgumentError(f"artifact key {show(value)} must be a relative path using '/'")
    for segment in value.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidArgumentError(
                f"artifact key {show(value)} has an empty, '.' or '..' path segment"
            )
        if len(segment) > 255 or not _SEGMENT_RE.fullmatch(segment):
            raise InvalidArgumentError(
                f"artifact key {show(value)} has an invalid segment {show(segment)}: use letters, "
                "digits, spaces and _ . - + = @ , ( ) [ ]"
            )
    return value


def validate_prefix(value: object) -> str:
    """Check an artifact listing prefix ("" or a relative path, possibly ending in '/')."""
    if value == "":
        return ""
    if not isinstance(value, str):
        raise InvalidArgumentError(f"prefix must be a string, got {type(value).__name__}")
    validate_artifact_key(value[:-1] if value.endswith("/") else value)
    return value


def _check_json(value: Any, where: str, depth: int = 0) -> None:
    """Refuse what no backend can store: non-finite floats, huge ints, bad text (also in nested keys)."""
    if depth > 64:
        raise InvalidArgumentError(f"{where} is nested too deeply")
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        check_text(value, f"{where} value")
        return
    if isinstance(value, int):
        check_int(value, where)
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgumentError(f"{where} is {value!r}: not finite, so not valid JSON")
        return
    if isinstance(value, list | tuple | dict):
        _check_json_container(value, where, depth)
        return
    # numpy scalars and similar: accept what converts losslessly to a JSON number.
    item = getattr(value, "item", None)
    if callable(item):
        converted = item()
        if isinstance(converted, bool | int | float | str):
            _check_json(converted, where, depth)
            return
    raise InvalidArgumentError(
        f"{where} has a value of type {type(value).__name__} ({show(value)}) that is not JSON-serializable"
    )


def _check_json_container(value: list[Any] | tuple[Any, ...] | dict[Any, Any], where: str,
                          depth: int) -> None:
    """:func:`_check_json` for the items of a list or tuple, and the keys and values of a dict."""
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                raise InvalidArgumentError(f"{where} has a non-string key {show(k)}")
            check_text(k, f"{where} key")
            _check_json(item, where, depth + 1)
        return
    for item in value:
        _check_json(item, where, depth + 1)


def to_json_value(value: Any, where: str) -> Any:
    """Validate a JSON value (finite numbers only) and return a plain-Python copy of it."""
    _check_json(value, where)
    kind = value.__class__
    # Plain scalars are their own copies (the common case: skip the JSON round trip); a string is
    # short enough when even all-escaped (12 characters per surrogate pair) it fits the limit.
    if kind is float or kind is bool or value is None or (kind is int and -(2**63) <= value < 2**63) or (
            kind is str and 12 * len(value) + 2 <= MAX_PARAM_JSON_LENGTH):
        return value
    try:
        text = json.dumps(value, default=_numpy_default, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"{where} is not JSON-serializable: {exc}") from exc
    if len(text) > MAX_PARAM_JSON_LENGTH:
        raise InvalidArgumentError(f"{where} is larger than {MAX_PARAM_JSON_LENGTH} bytes as JSON")
    return json.loads(text)


def _numpy_default(value: Any) -> Any:
    """A numpy scalar as the plain value it shows as: ``numpy.float32(0.1)`` is ``0.1`` (its shortest
    round-tripping text), not the ``0.10000000149011612`` that widening it to a double gives."""
    dtype = getattr(value, "dtype", None)
    if getattr(dtype, "kind", None) == "f" and getattr(dtype, "itemsize", 8) < 8:
        return float(str(value))
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def validate_params(params: Mapping[str, Any], what: str = "param") -> dict[str, Any]:
    """Validate a mapping of keys to JSON values; return a normalised copy."""
    if not isinstance(params, Mapping):
        raise InvalidArgumentError(f"{what}s must be a mapping, got {type(params).__name__}")
    return {
        validate_key(k, f"{what} key"): to_json_value(v, f"{what} {k!r}") for k, v in params.items()
    }


def validate_tags(tags: Mapping[str, Any]) -> dict[str, str]:
    """Validate tags: string keys as for params, values stringified (str, int, float or bool)."""
    if not isinstance(tags, Mapping):
        raise InvalidArgumentError(f"tags must be a mapping, got {type(tags).__name__}")
    out: dict[str, str] = {}
    for k, v in tags.items():
        validate_key(k, "tag key")
        if isinstance(v, bool):
            text = "true" if v else "false"
        elif isinstance(v, str):
            text = check_text(v, f"tag {k!r} value")
        elif isinstance(v, int):
            text = str(check_int(v, f"tag {k!r} value"))
        elif isinstance(v, float) and math.isfinite(v):
            text = str(v)
        else:
            raise InvalidArgumentError(
                f"tag {k!r} must be a string, number or bool, got {type(v).__name__} {show(v)}"
            )
        if len(text) > MAX_TAG_VALUE_LENGTH:
            raise InvalidArgumentError(f"tag {k!r} value is longer than {MAX_TAG_VALUE_LENGTH} characters")
        out[k] = text
    return out


def _to_float(value: int, what: str) -> float:
    try:
        return float(value)
    except OverflowError:
        raise InvalidArgumentError(f"{what} {show(value)} is too large for a float (over 1.8e308)") from None


def validate_metric_value(key: str, value: object) -> float:
    """A metric value is a real number; NaN and +/-inf are kept (a diverging loss is data)."""
    if isinstance(value, float):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return _to_float(value, f"metric {key!r} value")
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, bool | str | bytes) and getattr(value, "size", 1) == 1:
        try:
            converted = item()
        except (TypeError, ValueError):  # e.g. an array: refused below, naming it
            converted = None
        if isinstance(converted, int | float) and not isinstance(converted, bool):
            return _to_float(converted, f"metric {key!r} value") if isinstance(converted, int) \
                else float(converted)
    raise InvalidArgumentError(
        f"metric {key!r} value must be a real number, got {type(value).__name__} {show(value)}"
    )


#: The largest metric step: steps are stored as int64 on every backend, so 0 .. 2**63 - 1 round-trip exactly.
MAX_STEP = 2**63 - 1


def step_error(key: str, step: object, where: str = "step") -> InvalidArgumentError:
    """The error for a step that cannot be stored, naming it (``where``: e.g. ``"steps[3]"``)."""
    return InvalidArgumentError(
        f"metric {key!r} {where} must be an integer from 0 to 2**63 - 1 (int64), "
        f"got {type(step).__name__} {show(step)}"
    )


def validate_step(key: str, step: object) -> int:
    """A metric step is an integer from 0 to ``MAX_STEP`` (a Python int or a numpy integer scalar).

    The bound is checked here, at the call, because every backend stores steps as int64: a larger step
    would be accepted into the buffer and then fail every later flush of the run.
    """
    if isinstance(step, int) and not isinstance(step, bool):
        if 0 <= step <= MAX_STEP:
            return int(step)
        raise step_error(key, step)
    item = getattr(step, "item", None)
    if callable(item) and not isinstance(step, str | bytes | float):
        converted = item()
        if isinstance(converted, int) and not isinstance(converted, bool) and 0 <= converted <= MAX_STEP:
            return converted
    raise step_error(key, step)


def validate_time(value: object, what: str) -> float:
    """Finite epoch seconds (an int or float) as a float."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value) if isinstance(value, float) or -(2**63) < value < 2**63 else math.inf
        if math.isfinite(seconds):
            return seconds
    raise InvalidArgumentError(f"{what} must be finite epoch seconds, got {show(value)}")


def validate_timestamp(key: str, timestamp: object) -> float:
    """A metric point's timestamp: finite epoch seconds."""
    return validate_time(timestamp, f"metric {key!r} timestamp")


def validate_page(limit: object, offset: object) -> None:
    """A search page: ``limit`` None or a non-negative integer, ``offset`` a non-negative integer (both
    below 2**63, what SQL can bind)."""
    for what, value in (("limit", limit), ("offset", offset)):
        if value is None and what == "limit":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
            raise InvalidArgumentError(
                f"{what} must be a non-negative integer below 2**63, got {show(value)}")
