"""labvault as an aimm backend: ``aimm-server`` keeps its models in any labvault store.

aimm (PyPI ``aimm``) loads its model persistence from a module named in its configuration, validates the
section and calls ``create(conf, event_client)``; this module is one. In the server's configuration
(YAML or JSON, ``aimm-server --conf server.yaml``)::

    backend:
      module: labvault.integrations.aimm
      uri: postgresql://user@db.example/labvault    # any labvault URI: sqlite:///..., ./dir, redis://...
      artifacts: s3://bucket/blobs                   # optional: where the blobs go (labvault.open)
      trusted: false                                 # optional: load pickled labvault models too

``uri`` is required and is opened with ``labvault.open(uri, artifacts=artifacts)``; an unknown key or a
value of the wrong type raises ``jsonschema.ValidationError`` naming the key, before anything is opened.

What aimm's calls do here (every store call runs on one worker thread, never on the event loop):

==========================================  =====================================================
aimm                                        labvault
==========================================  =====================================================
``create_model(model_type, instance)``      ``vault.create_model(model_type, instance)``: the next
                                            instance id (dense, unique across processes), version 1
``update_model(model)``                     ``vault.update_model(...)`` of the model with
                                            ``model.instance_id``: a new immutable version (aimm's
                                            SQLite backend overwrites; labvault keeps every
                                            version). An unknown id raises ``NotFoundError``
``get_models()``                            ``vault.get_models()``: the latest version of every
                                            model whose type aimm's plugins can (de)serialize
``register_model_change_cb(cb)``            ``vault.register_model_change_cb``: ``cb(aimm Model)``
                                            on the event loop for every model created or updated
                                            by any process (see below)
``Model`` (``instance``, ``model_type``,     the labvault ``Model``'s fields of the same names
``instance_id``)
==========================================  =====================================================

**Instance bytes.** As aimm's SQLite and event backends do, an instance is stored as the bytes of aimm's
own serialize plugin for its model type (``aimm.plugins.exec_serialize``), read back with its deserialize
plugin. Those plugins are registered as labvault serializers keyed by the model type
(``labvault.serializers.register``; a type that already has a labvault serializer keeps it), so the
payload is exactly aimm's bytes, with format ``registered`` and aimm's model type. Another labvault
process reads the instances once it has the same aimm plugins imported and calls
``register_serializers()``: ``vault.load_model(instance_id)`` then returns the instance; without it,
labvault's ``UnsupportedOperationError`` names the model type. A model type no loaded aimm plugin can
serialize is refused by ``create_model`` (``UnsupportedOperationError``), as aimm's own backends fail;
models written by labvault itself whose type aimm cannot handle are left out of ``get_models``.

**Change callbacks.** ``register_model_change_cb(cb)`` rides on labvault's
``vault.register_model_change_cb`` (``vault.subscribe`` to ``model.created``/``model.updated``): ``cb``
hears of every model and version any process stores, this backend's own included, at least once, on the
event loop, once labvault's feed delivers it (at once on PostgreSQL and Redis, by polling elsewhere).
Models aimm cannot handle or load are left out (a warning in the log). ``_watch_model_changes`` is the one
place that picks the source: on a labvault without that call it falls back to reporting this backend's
own writes.

**Hat.** The store is labvault's, so the backend needs no Hat events: ``create_subscription`` returns no
event types, and a server configured with ``hat:`` loads this module unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

import jsonschema
from aimm import plugins
from aimm.plugins import decorators
from aimm.server import common
from hat import aio, util

import labvault
from labvault import serializers
from labvault.client.models import Model as LabvaultModel
from labvault.client.vault import Vault
from labvault.errors import InvalidArgumentError, LabvaultError, UnsupportedOperationError

__all__ = ["CONFIG_SCHEMA", "LabvaultBackend", "create", "create_subscription", "register_serializers",
           "validate_config"]

mlog = logging.getLogger(__name__)

#: The JSON schema of this backend's section of an aimm-server configuration.
CONFIG_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "labvault://integrations/aimm.yaml#",
    "type": "object",
    "required": ["module", "uri"],
    "additionalProperties": False,
    "properties": {
        "module": {"type": "string"},
        "uri": {"type": "string", "minLength": 1, "description": "any labvault store URI"},
        "artifacts": {"type": ["string", "null"], "minLength": 1,
                      "description": "where the blobs go (labvault.open's artifacts=)"},
        "trusted": {"type": "boolean", "default": False,
                    "description": "load pickled models (written by labvault) as well"},
    },
}


def validate_config(conf: Any) -> None:
    """Check an aimm backend section against ``CONFIG_SCHEMA``: ``jsonschema.ValidationError`` naming the
    key at fault otherwise."""
    validator = jsonschema.Draft202012Validator(CONFIG_SCHEMA)
    error = jsonschema.exceptions.best_match(validator.iter_errors(conf))
    if error is None:
        return
    where = "/".join(str(part) for part in error.absolute_path)
    prefix = f"key {where!r}: " if where else ""
    raise jsonschema.ValidationError(
        f"labvault.integrations.aimm backend config: {prefix}{error.message}") from error


def create_subscription(conf: dict[str, Any]) -> list[tuple[str, ...]]:
    """aimm's optional hook for backends fed by Hat events: none here (the store is labvault's)."""
    validate_config(conf)
    return []


async def create(conf: dict[str, Any], event_client: Any = None) -> LabvaultBackend:
    """aimm's backend factory: validate ``conf``, open the labvault store and return the backend."""
    validate_config(conf)
    backend = LabvaultBackend(conf)
    try:
        await backend.start()
    except BaseException:
        await aio.uncancellable(backend.async_close())
        raise
    return backend


# -- aimm's plugins as labvault serializers --------------------------------------------------------------
def _aimm_handles(model_type: str) -> bool:
    """Whether aimm's loaded plugins can both serialize and deserialize ``model_type``."""
    try:
        decorators.get_serialize(model_type)
        decorators.get_deserialize(model_type)
    except ValueError:
        return False
    return True


def _declared_types() -> list[str]:
    declared = getattr(decorators, "_declarations", {})
    return sorted(set(declared.get("serialize", {})) & set(declared.get("deserialize", {})))


def register_serializers(model_types: Iterable[str] | None = None) -> list[str]:
    """Register aimm's serialize/deserialize plugins as labvault serializers for ``model_types`` (None:
    every type the loaded aimm plugins can both serialize and deserialize), so that ``vault.load_model``
    returns the instances aimm stored. Import the plugin modules first (``aimm.plugins.initialize``).
    Types aimm cannot handle, and types that have a labvault serializer already, are left alone; returns
    the types registered by this call."""
    done = []
    for model_type in _declared_types() if model_types is None else model_types:
        if not _aimm_handles(model_type):
            continue
        try:
            serializers.register(model_type, _serializer(model_type), _deserializer(model_type))
        except InvalidArgumentError:  # registered already (by an earlier call or by the user): keep it
            continue
        done.append(model_type)
    return done


def _serializer(model_type: str) -> Callable[[Any], bytes]:
    return lambda instance: bytes(plugins.exec_serialize(model_type, instance))


def _deserializer(model_type: str) -> Callable[[bytes], Any]:
    return lambda data: plugins.exec_deserialize(model_type, data)


# -- where change notifications come from --------------------------------------------------------------
class _Changes:
    """A source of model-change notifications: ``close()`` stops it; ``own_writes`` says whether the
    backend must report its own writes itself (the source does not see them)."""

    def __init__(self, close: Callable[[], None], own_writes: bool) -> None:
        self.close = close
        self.own_writes = own_writes


def _watch_model_changes(vault: Vault, on_change: Callable[[LabvaultModel], None]) -> _Changes:
    """Every process's model changes through ``vault.register_model_change_cb`` when the vault has it
    (``on_change`` is then called from labvault's thread); otherwise nothing, and the backend reports
    the changes it makes itself."""
    register = getattr(vault, "register_model_change_cb", None)
    if callable(register):
        subscription = register(on_change)
        return _Changes(subscription.close, own_writes=False)
    return _Changes(lambda: None, own_writes=True)


class LabvaultBackend(common.Backend):  # type: ignore[misc]  # aimm ships no type information
    """aimm's ``Backend`` over a labvault vault (``create`` makes one; see the module docstring)."""

    def __init__(self, conf: dict[str, Any]) -> None:
        self._conf = conf
        self._trusted = bool(conf.get("trusted", False))
        self._group = aio.Group()
        self._executor = aio.create_executor(1)  # one thread: the vault's calls never overlap
        self._cbs = util.CallbackRegistry()
        self._vault: Vault | None = None
        self._changes: _Changes | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def async_group(self) -> aio.Group:
        """The backend's async group (closing it closes the vault)."""
        return self._group

    @property
    def vault(self) -> Vault:
        """The open labvault vault the models live in."""
        if self._vault is None:
            raise InvalidArgumentError("the aimm backend is not started: use create(conf, event_client)")
        return self._vault

    async def start(self) -> None:
        """Open the store (on the worker thread) and start listening for model changes."""
        self._loop = asyncio.get_running_loop()
        self._vault = await self._executor(self._open)
        self._group.spawn(aio.call_on_cancel, self._stop)

    def _open(self) -> Vault:
        vault = labvault.open(self._conf["uri"], artifacts=self._conf.get("artifacts"))
        self._changes = _watch_model_changes(vault, self._on_store_change)
        return vault

    async def _stop(self) -> None:
        if self._changes is not None:
            self._changes.close()
        if self._vault is not None:
            await self._executor(self._vault.close)

    # -- aimm's Backend ------------------------------------------------------------------------------------
    async def get_models(self) -> list[Any]:
        """The latest version of every model aimm's plugins can handle, instances loaded."""
        return list(await self._executor(self._load_all))

    async def create_model(self, model_type: str, instance: Any) -> Any:
        """Store a new model (the next instance id, version 1) and return it as aimm's ``Model``."""
        stored = await self._executor(self._create, model_type, instance)
        model = common.Model(instance=instance, model_type=model_type, instance_id=stored.instance_id)
        self._notify_own(model)
        return model

    async def update_model(self, model: Any) -> None:
        """Store ``model.instance`` as the next version of the model ``model.instance_id``."""
        await self._executor(self._update, model)
        self._notify_own(model)

    def register_model_change_cb(self, cb: Callable[[Any], None]) -> util.RegisterCallbackHandle:
        """Call ``cb(model)`` (aimm's ``Model``, on the event loop) for every model created or updated."""
        return self._cbs.register(cb)

    async def process_events(self, events: Any) -> None:
        """Hat events: the backend subscribes to none, so there is nothing to do."""

    # -- on the worker thread ------------------------------------------------------------------------------
    def _load_all(self) -> list[Any]:
        found = (self._to_aimm(m) for m in self.vault.get_models())
        return [m for m in found if m is not None]

    def _create(self, model_type: str, instance: Any) -> LabvaultModel:
        self._check_type(model_type)
        return self.vault.create_model(model_type, instance)

    def _update(self, model: Any) -> None:
        self._check_type(model.model_type)
        stored = self.vault.get_model(model.instance_id)  # NotFoundError for an unknown id
        stored.model_type = model.model_type
        stored.instance = model.instance
        self.vault.update_model(stored)

    @staticmethod
    def _check_type(model_type: str) -> None:
        if not isinstance(model_type, str) or not _aimm_handles(model_type):
            raise UnsupportedOperationError(
                f"aimm has no serialize and deserialize plugin for model type {model_type!r}: add the "
                "module declaring them to the server's plugins.names")
        register_serializers([model_type])

    def _to_aimm(self, stored: LabvaultModel) -> Any | None:
        """aimm's ``Model`` of a labvault model, None (and a log line) when aimm cannot handle its type."""
        if not _aimm_handles(stored.model_type):
            mlog.info("model %s (type %r) left out: no aimm plugin handles its type", stored.instance_id,
                      stored.model_type)
            return None
        register_serializers([stored.model_type])
        instance = self.vault.load_model(stored.instance_id, stored.version, trusted=self._trusted)
        return common.Model(instance=instance, model_type=stored.model_type, instance_id=stored.instance_id)

    # -- notifications -------------------------------------------------------------------------------------
    def _notify(self, model: Any) -> None:
        self._cbs.notify(model)  # type: ignore[no-untyped-call]  # hat-util leaves notify untyped

    def _notify_own(self, model: Any) -> None:
        if self._changes is not None and self._changes.own_writes:
            self._notify(model)

    def _on_store_change(self, stored: LabvaultModel) -> None:
        """A model changed in the store (called from labvault's thread): tell aimm on the event loop."""
        try:
            model = self._to_aimm(stored)
        except LabvaultError as exc:  # one model aimm cannot load must not stop the others' news
            mlog.warning("model %s version %s changed but does not load: %s", stored.instance_id,
                         stored.version, exc)
            return
        if model is None or self._loop is None or self._loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody listens any more
            self._loop.call_soon_threadsafe(self._notify, model)
