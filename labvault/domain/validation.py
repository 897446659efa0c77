"""Value rules: what names, keys, artifact paths and values labvault accepts.

Rules are strict on purpose: a name ends up in file paths, SQL, Redis keys and URLs, so anything that
could escape a directory, smuggle a wildcard or confuse a parser is refused up front with an
``InvalidArgumentError`` that quotes the offending value.
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

# Experiment and project names: letters, digits, and a few separators; start with a letter or digit.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\- ]*")
# Param / metric / tag / result keys: as names, plus "/" and ":" for namespacing ("val/loss").
_KEY_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-/: ]*")
# One artifact path segment.
_SEGMENT_RE = re.compile(r"[A-Za-z0-9_.\-+=@,()\[\] ]+")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def validate_name(value: object, what: str = "name") -> str:
    """Check an experiment, project or run name and return it."""
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{what} must be a string, got {type(value).__name__} {_show(value)}")
    if not value:
        raise InvalidArgumentError(f"{what} must not be empty")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidArgumentError(f"{what} {_show(value)} is longer than {MAX_NAME_LENGTH} characters")
    if not _NAME_RE.fullmatch(value) or value.endswith(" ") or ".." in value:
        raise InvalidArgumentError(
            f"invalid {what} {_show(value)}: use letters, digits, '_', '-', '.', and spaces, "
            "starting with a letter or digit (no '..', '/', quotes or wildcards)"
        )
    return value


def validate_key(value: object, what: str = "key") -> str:
    """Check a param, metric, tag or result key and return it."""
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{what} must be a string, got {type(value).__name__} {_show(value)}")
    if not value:
        raise InvalidArgumentError(f"{what} must not be empty")
    if len(value) > MAX_KEY_LENGTH:
        raise InvalidArgumentError(f"{what} {_show(value)} is longer than {MAX_KEY_LENGTH} characters")
    if (
        not _KEY_RE.fullmatch(value)
        or ".." in value
        or "//" in value
        or value.endswith(("/", " "))
    ):
        raise InvalidArgumentError(
            f"invalid {what} {_show(value)}: use letters, digits, '_', '-', '.', '/', ':' and spaces, "
            "starting with a letter, digit or '_' (no '..', '//', quotes or wildcards)"
        )
    return value


def validate_artifact_key(value: object) -> str:
    """Check an artifact path ("plots/roc.png") and return it: relative, no '..', no odd characters."""
    if not isinstance(value, str):
        raise InvalidArgumentError(
            f"artifact key must be a string, got {type(value).__name__} {_show(value)}"
        )
    if not value:
        raise InvalidArgumentError("artifact key must not be empty")
    if len(value) > MAX_ARTIFACT_KEY_LENGTH:
        raise InvalidArgumentError(
            f"artifact key {_show(value)} is longer than {MAX_ARTIFACT_KEY_LENGTH} characters"
        )
    if value.startswith("/") or "\\" in value:
        raise InvalidArgumentError(f"artifact key {_show(value)} must be a relative path using '/'")
    for segment in value.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidArgumentError(
                f"artifact key {_show(value)} has an empty, '.' or '..' path segment"
            )
        if len(segment) > 255 or not _SEGMENT_RE.fullmatch(segment):
            raise InvalidArgumentError(
                f"artifact key {_show(value)} has an invalid segment {_show(segment)}: use letters, "
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
    if depth > 64:
        raise InvalidArgumentError(f"{where} is nested too deeply")
    if value is None or isinstance(value, bool | str | int):
        if isinstance(value, str) and "\x00" in value:
            raise InvalidArgumentError(f"{where} contains a NUL character")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgumentError(f"{where} is {value!r}: not finite, so not valid JSON")
        return
    if isinstance(value, list | tuple):
        for item in value:
            _check_json(item, where, depth + 1)
        return
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                raise InvalidArgumentError(f"{where} has a non-string key {_show(k)}")
            _check_json(item, where, depth + 1)
        return
    # numpy scalars and similar: accept what converts losslessly to a JSON number.
    item = getattr(value, "item", None)
    if callable(item):
        converted = item()
        if isinstance(converted, bool | int | float | str):
            _check_json(converted, where, depth)
            return
    raise InvalidArgumentError(
        f"{where} has a value of type {type(value).__name__} ({_show(value)}) that is not JSON-serializable"
    )


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
            text = v
        elif isinstance(v, int | float) and not (isinstance(v, float) and not math.isfinite(v)):
            text = str(v)
        else:
            raise InvalidArgumentError(
                f"tag {k!r} must be a string, number or bool, got {type(v).__name__} {_show(v)}"
            )
        if "\x00" in text:
            raise InvalidArgumentError(f"tag {k!r} value {_show(text)} contains a NUL character")
        if len(text) > MAX_TAG_VALUE_LENGTH:
            raise InvalidArgumentError(f"tag {k!r} value is longer than {MAX_TAG_VALUE_LENGTH} characters")
        out[k] = text
    return out


def validate_metric_value(key: str, value: object) -> float:
    """A metric value is a real number; NaN and +/-inf are kept (a diverging loss is data)."""
    if isinstance(value, float):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, bool | str | bytes):
        converted = item()
        if isinstance(converted, int | float) and not isinstance(converted, bool):
            return float(converted)
    raise InvalidArgumentError(
        f"metric {key!r} value must be a real number, got {type(value).__name__} {_show(value)}"
    )


#: The largest metric step: steps are stored as int64 on every backend, so 0 .. 2**63 - 1 round-trip exactly.
MAX_STEP = 2**63 - 1


def step_error(key: str, step: object) -> InvalidArgumentError:
    """The error for a step that cannot be stored, naming it."""
    return InvalidArgumentError(
        f"metric {key!r} step must be an integer from 0 to 2**63 - 1 (int64), "
        f"got {type(step).__name__} {_show(step)}"
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


def validate_timestamp(key: str, timestamp: object) -> float:
    """A timestamp is finite epoch seconds."""
    if (
        isinstance(timestamp, int | float)
        and not isinstance(timestamp, bool)
        and math.isfinite(timestamp)
    ):
        return float(timestamp)
    raise InvalidArgumentError(
        f"metric {key!r} timestamp must be finite epoch seconds, got {_show(timestamp)}"
    )
