"""Serializers keyed by model type: how a model instance becomes bytes in a store and comes back.

A model's type is a string, by default the instance's ``module.QualifiedName`` (``numpy.ndarray``,
``sklearn.linear_model._logistic.LogisticRegression``). ``register(model_type, serialize, deserialize)``
teaches labvault a type (third-party packages do it from the entry-point group ``labvault.serializers``:
``name = "pkg.module:register_function"``, called with no arguments on first use). Without a registered
serializer, the built-in formats are tried in order:

=============  ===========================================  =============================================
format         for                                          loads
=============  ===========================================  =============================================
``numpy``      ``numpy.ndarray`` (``.npy``, no pickle)      everywhere
``bytes``      ``bytes`` / ``bytearray``                    everywhere
``json``       JSON values (dicts, lists, text, numbers)    everywhere
``skops``      scikit-learn estimators (``skops.io``)       everywhere when every type inside is one skops
                                                            trusts; otherwise only with ``trusted=True``
``pickle``     anything else (cloudpickle)                  only with ``trusted=True``
=============  ===========================================  =============================================

**Loading a pickle runs code**: whoever wrote the payload can run anything on the loading machine. So a
``pickle`` payload (and a ``skops`` one holding types skops does not know) only loads when the caller says
it is trusted (``vault.load_model(..., trusted=True)``), from any store; the other formats are safe to load
from anywhere. ``pip install 'labvault[models]'`` brings cloudpickle and skops.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from labvault.errors import InvalidArgumentError, PermissionDeniedError, UnsupportedOperationError

__all__ = ["ENTRY_POINT_GROUP", "Serialized", "deserialize", "model_type_of", "register", "serialize",
           "unregister"]

#: Entry points whose functions register serializers (called once, on first use).
ENTRY_POINT_GROUP = "labvault.serializers"
#: The format name of payloads written by a serializer registered for a type.
REGISTERED = "registered"

_lock = threading.Lock()
_registered: dict[str, tuple[Callable[[Any], bytes], Callable[[bytes], Any]]] = {}
_entry_points_loaded = False


@dataclass(frozen=True)
class Serialized:
    """A model instance as stored: its bytes, the format that wrote them and the model type."""

    data: bytes
    format: str
    model_type: str


def model_type_of(instance: object) -> str:
    """The default model type of an instance: its class's ``module.QualifiedName``."""
    cls = type(instance)
    return f"{cls.__module__}.{cls.__qualname__}"


def register(model_type: str, serialize: Callable[[Any], bytes], deserialize: Callable[[bytes], Any], *,
             replace: bool = False) -> None:
    """Store instances of ``model_type`` with ``serialize(instance) -> bytes`` and load them with
    ``deserialize(bytes) -> instance`` (before any built-in format). A type registered already raises
    ``InvalidArgumentError`` unless ``replace=True``."""
    if not isinstance(model_type, str) or not model_type or len(model_type) > 250:
        raise InvalidArgumentError(f"a model type is a non-empty string of at most 250 characters, "
                                   f"got {model_type!r:.80}")
    if not callable(serialize) or not callable(deserialize):
        raise InvalidArgumentError("register(model_type, serialize, deserialize) takes two callables")
    with _lock:
        if model_type in _registered and not replace:
            raise InvalidArgumentError(f"a serializer for {model_type!r} is registered already "
                                       "(pass replace=True to change it)")
        _registered[model_type] = (serialize, deserialize)


def unregister(model_type: str) -> None:
    """Forget the serializer registered for ``model_type`` (no error when there is none)."""
    with _lock:
        _registered.pop(model_type, None)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points  # lazy: importlib.metadata costs ~25 ms

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()()
        except Exception as exc:  # a broken plugin must not break every other model
            raise InvalidArgumentError(f"the serializer entry point {ep.name!r} ({ep.value}) failed: "
                                       f"{type(exc).__name__}: {exc}") from exc


def _registered_for(model_type: str) -> tuple[Callable[[Any], bytes], Callable[[bytes], Any]] | None:
    _load_entry_points()
    with _lock:
        return _registered.get(model_type)


def serialize(instance: object, model_type: str | None = None) -> Serialized:
    """``instance`` as bytes: with the serializer registered for its type, else the first built-in
    format that fits (see the module docstring)."""
    kind = model_type if model_type is not None else model_type_of(instance)
    custom = _registered_for(kind)
    if custom is not None:
        data = custom[0](instance)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidArgumentError(f"the serializer registered for {kind!r} returned "
                                       f"{type(data).__name__}, not bytes")
        return Serialized(bytes(data), REGISTERED, kind)
    for name, fits, write in _BUILT_IN:
        if fits(instance):
            return Serialized(write(instance), name, kind)
    raise AssertionError("the pickle format fits everything")  # pragma: no cover


def deserialize(payload: Serialized, *, trusted: bool = False) -> Any:
    """The instance back from its bytes. A ``pickle`` payload, or a ``skops`` one holding types skops does
    not trust, needs ``trusted=True`` (``PermissionDeniedError`` otherwise: loading it could run code)."""
    if payload.format == REGISTERED:
        custom = _registered_for(payload.model_type)
        if custom is None:
            raise UnsupportedOperationError(
                f"no deserializer for model type {payload.model_type!r} here: install the package that "
                f"registers it (entry-point group {ENTRY_POINT_GROUP!r}) or call "
                f"labvault.serializers.register({payload.model_type!r}, serialize, deserialize)")
        return custom[1](payload.data)
    loader = _LOADERS.get(payload.format)
    if loader is None:
        raise UnsupportedOperationError(f"unknown model payload format {payload.format!r} (model type "
                                        f"{payload.model_type!r}): written by a newer labvault?")
    return loader(payload.data, trusted)


# -- built-in formats -----------------------------------------------------------------------------------
def _is_ndarray(instance: object) -> bool:
    np = _numpy()
    return isinstance(instance, np.ndarray) and instance.dtype != object


def _numpy() -> Any:
    import numpy as np  # lazy: the numpy format only

    return np


def _write_npy(instance: Any) -> bytes:
    buf = io.BytesIO()
    _numpy().save(buf, instance, allow_pickle=False)
    return buf.getvalue()


def _read_npy(data: bytes, trusted: bool) -> Any:
    return _numpy().load(io.BytesIO(data), allow_pickle=False)


def _is_json(instance: object) -> bool:
    try:
        json.dumps(instance, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return False
    return not isinstance(instance, bytes)


def _is_sklearn(instance: object) -> bool:
    return type(instance).__module__.split(".", 1)[0] == "sklearn" and hasattr(instance, "get_params")


def _skops() -> Any:
    try:
        import skops.io  # lazy: optional (extra [models])
    except ImportError as exc:
        raise UnsupportedOperationError(
            "scikit-learn models are stored with skops: pip install 'labvault[models]' (or pip install skops)"
        ) from exc
    return skops.io


def _read_skops(data: bytes, trusted: bool) -> Any:
    sio = _skops()
    unknown = sio.get_untrusted_types(data=data)
    if unknown and not trusted:
        raise PermissionDeniedError(
            f"this skops payload holds types skops does not trust ({', '.join(unknown[:5])}); loading them "
            "can run code: pass trusted=True if you trust whoever wrote it")
    return sio.loads(data, trusted=unknown or None)


def _cloudpickle() -> Any:
    try:
        import cloudpickle  # lazy: optional (extra [models])
    except ImportError as exc:
        raise UnsupportedOperationError(
            "this model type has no safe format, so it is pickled with cloudpickle: pip install "
            "'labvault[models]' (or pip install cloudpickle), or register a serializer for it "
            "(labvault.serializers.register)") from exc
    return cloudpickle


def _read_pickle(data: bytes, trusted: bool) -> Any:
    if not trusted:
        raise PermissionDeniedError(
            "this model is a pickle, and loading a pickle runs whatever code its writer put in it: pass "
            "trusted=True if you trust whoever wrote it (safe formats: numpy arrays, JSON, bytes, skops)")
    import pickle  # lazy: only trusted loads

    return pickle.loads(data)


_BUILT_IN: tuple[tuple[str, Callable[[object], bool], Callable[[Any], bytes]], ...] = (
    ("numpy", _is_ndarray, _write_npy),
    ("bytes", lambda x: isinstance(x, bytes | bytearray), lambda x: bytes(x)),
    ("json", _is_json, lambda x: json.dumps(x, allow_nan=False, separators=(",", ":")).encode()),
    ("skops", _is_sklearn, lambda x: _skops().dumps(x)),
    ("pickle", lambda x: True, lambda x: _cloudpickle().dumps(x)),
)
_LOADERS: dict[str, Callable[[bytes, bool], Any]] = {
    "numpy": _read_npy,
    "bytes": lambda data, trusted: data,
    "json": lambda data, trusted: json.loads(data),
    "skops": _read_skops,
    "pickle": _read_pickle,
}
