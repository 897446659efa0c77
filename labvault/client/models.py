"""Models on every store: aimm's model persistence (``create_model``, ``update_model``, ``get_models``) and
MLflow's registry habits (names, versions, aliases), over the records every backend already has.

How models are kept, so that ids are dense and unique across processes on every backend without a hook
of its own (the run numbering is that guarantee, on every store):

* the project ``labvault.models`` holds them, hidden from ``vault.experiments()`` and from searches of
  every experiment;
* its experiment ``registry`` has one run per model: the run's **number is the model's instance id**, its
  name the model's name, its tags the aliases (``alias:<alias>`` -> version);
* the experiment ``model-<instance id>`` has one run per version: the run's **number is the version**;
  its artifact ``instance`` holds the serialized instance (content-addressed, so an unchanged instance is
  stored once), its params the model type and the payload's format, its tag ``source_run`` the run that
  logged it (``run.log_model``), which in turn gets the tag ``model:<name>`` = ``<id>:<version>``.

So models sync, copy, serve over HTTP and garbage-collect like runs, with no new endpoint or table.

A store that also keeps models in a form of its own (the Hat backend: aimm's model events) gets each
stored version through ``Backend.model_saved`` and reports that form through ``Backend.foreign_models``
(the latest payload of each instance id). The registry then shows, besides its own models, a model
present only in that form (version 1, no name, payload format ``registered``: it loads through the
serializer registered for its type) and, for one of its own models, a payload in that form that matches
none of its versions, as the version after its latest (written by aimm after labvault's last version).
A new model never takes an instance id present in that form: the registry run that drew such a number is
marked deleted and the next one is drawn. Other stores report no foreign models, at no cost.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from labvault import serializers
from labvault.domain import DELETED_TAG, ArtifactInfo, RunInfo, now
from labvault.domain import validation as v
from labvault.errors import ConflictError, InvalidArgumentError, NotFoundError

if TYPE_CHECKING:
    from labvault.client.vault import Vault
    from labvault.store.abc import Backend, ForeignModel

__all__ = ["MODEL_PROJECT", "Model", "Registry"]

#: The project that keeps the models (hidden from listings and searches of every experiment).
MODEL_PROJECT = "labvault.models"
REGISTRY = "registry"
PAYLOAD_KEY = "instance"
_ALIAS = "alias:"


@dataclass
class Model:
    """One version of a model: aimm's ``Model(instance, model_type, instance_id)`` plus MLflow's name,
    version and aliases. ``instance`` is loaded from the store on first access (see ``trusted``)."""

    model_type: str
    instance_id: int
    version: int
    name: str | None = None
    aliases: list[str] = field(default_factory=list)
    created_at: float = 0.0
    source_run: str | None = None
    format: str = ""
    digest: str = ""
    size: int = 0
    _instance: Any = field(default=None, repr=False)
    _loaded: bool = field(default=False, repr=False)
    _vault: Vault | None = field(default=None, repr=False, compare=False)

    @property
    def instance(self) -> Any:
        """The model object itself, loaded once (a pickle loads only through
        ``vault.load_model(..., trusted=True)``)."""
        if not self._loaded:
            if self._vault is None:
                raise InvalidArgumentError("this Model is not bound to a vault: use vault.load_model")
            self._instance = self._vault.load_model(self.instance_id, self.version)
            self._loaded = True
        return self._instance

    @instance.setter
    def instance(self, value: Any) -> None:
        self._instance, self._loaded = value, True


class Registry:
    """The models of one vault (``Vault.create_model`` and friends delegate here)."""

    def __init__(self, vault: Vault) -> None:
        self.vault = vault
        self._payloads: dict[str, bytes] = {}  # digest -> bytes of the foreign models seen by this registry

    @property
    def backend(self) -> Backend:
        return self.vault.backend

    # -- where things are ----------------------------------------------------------------------------------
    def _experiment_id(self, name: str, create: bool) -> str | None:
        if create:
            return self.backend.ensure_experiment(name, MODEL_PROJECT).id
        for e in self.backend.list_experiments(MODEL_PROJECT):
            if e.name == name:
                return e.id
        return None

    def _registry_runs(self) -> list[RunInfo]:
        exp = self._experiment_id(REGISTRY, create=False)
        if exp is None:
            return []
        return [r for r in self.backend.list_runs([exp]) if not r.tags.get(DELETED_TAG)]

    def _entry(self, id_or_name: int | str) -> RunInfo:
        """The registry run of a model given by instance id or name."""
        runs = self._registry_runs()
        if isinstance(id_or_name, int) and not isinstance(id_or_name, bool):
            found = [r for r in runs if r.number == id_or_name]
        elif isinstance(id_or_name, str):
            found = sorted((r for r in runs if r.name == id_or_name), key=lambda r: r.number)
        else:
            raise InvalidArgumentError(f"a model is named by its instance id (int) or its name (str), "
                                       f"got {v.show(id_or_name)}")
        if not found:
            raise NotFoundError(f"no model {id_or_name!r}")
        return found[0]

    def _versions(self, entry: RunInfo) -> list[RunInfo]:
        exp = self._experiment_id(f"model-{entry.number}", create=False)
        return [] if exp is None else sorted(self.backend.list_runs([exp]), key=lambda r: r.number)

    def _model(self, entry: RunInfo, version: RunInfo) -> Model:
        aliases = sorted(k[len(_ALIAS):] for k, val in entry.tags.items()
                         if k.startswith(_ALIAS) and val == str(version.number))
        art = self.backend.get_artifact_info(version.id, PAYLOAD_KEY)
        return Model(model_type=str(version.params["model_type"]), instance_id=entry.number,
                     version=version.number, name=entry.name, aliases=aliases, created_at=version.start_time,
                     source_run=version.tags.get("source_run"), format=str(version.params["format"]),
                     digest=art.digest, size=art.size, _vault=self.vault)

    # -- writing -------------------------------------------------------------------------------------------
    def create(self, model_type: str | None, instance: Any, name: str | None = None,
               source_run: str | None = None) -> Model:
        """A new model (the next instance id) with ``instance`` as its version 1."""
        if name is not None:
            v.validate_name(name, "model name")
            if any(r.name == name for r in self._registry_runs()):
                raise ConflictError(f"a model named {name!r} exists already: update_model it, or pick "
                                    "another name")
        payload = self._serialize(instance, model_type)  # before anything is written
        registry = self._experiment_id(REGISTRY, create=True)
        assert registry is not None
        taken = {m.instance_id for m in self.backend.foreign_models()}
        while True:
            entry = self.backend.create_run(registry, name=name, parent_id=None, start_time=now(),
                                            params={"model_type": payload.model_type}, tags={})
            self.backend.update_run(entry.id, status="finished", end_time=now())
            if entry.number not in taken:
                break
            self._skip_taken(entry)
        if name is not None:
            first = self._entry(name)
            if first.id != entry.id:  # another process took the name at the same moment: it keeps it
                self.backend.set_tags(entry.id, {DELETED_TAG: "lost a race for the name"})
                raise ConflictError(f"a model named {name!r} was created at the same time by another "
                                    f"process (instance id {first.number})")
        return self._add_version(self.backend.get_run(entry.id), payload, instance, source_run)

    def update(self, model: Model, source_run: str | None = None) -> Model:
        """A new version of ``model`` (same instance id) holding ``model.instance``."""
        if not isinstance(model, Model):
            raise InvalidArgumentError(f"update_model takes a Model, got {type(model).__name__}")
        foreign = self._foreign_only(model.instance_id)
        payload = self._serialize(model.instance, model.model_type)
        if foreign is not None:
            return self._update_foreign(foreign, payload, model.instance)
        entry = self._entry(model.instance_id)
        return self._add_version(entry, payload, model.instance, source_run)

    def _serialize(self, instance: Any, model_type: str | None) -> serializers.Serialized:
        if model_type is not None and (not isinstance(model_type, str) or not model_type):
            raise InvalidArgumentError(f"model_type must be a non-empty string, got {v.show(model_type)}")
        return serializers.serialize(instance, model_type)

    def _add_version(self, entry: RunInfo, payload: serializers.Serialized, instance: Any,
                     source_run: str | None) -> Model:
        versions = self._experiment_id(f"model-{entry.number}", create=True)
        assert versions is not None
        digest, size = self.backend.blobs.put_content(payload.data)
        tags = {"source_run": source_run} if source_run is not None else {}
        run = self.backend.create_run(versions, name=entry.name, parent_id=None, start_time=now(),
                                      params={"model_type": payload.model_type, "format": payload.format},
                                      tags=tags)
        self.backend.add_artifact(run.id, ArtifactInfo(PAYLOAD_KEY, size, digest, now()))
        self.backend.update_run(run.id, status="finished", end_time=now())
        self.backend.model_saved(entry.number, payload.model_type, payload.data)
        model = self._model(entry, self.backend.get_run(run.id))
        model.instance = instance
        return model

    def set_alias(self, id_or_name: int | str, alias: str, version: int) -> None:
        """Point ``alias`` (e.g. ``production``) at a version of a model; the last write wins."""
        v.validate_name(alias, "model alias")
        entry = self._entry(id_or_name)
        if not any(r.number == version for r in self._versions(entry)):
            raise NotFoundError(f"model {id_or_name!r} has no version {version!r}")
        self.backend.set_tags(entry.id, {_ALIAS + alias: str(version)})

    # -- reading -------------------------------------------------------------------------------------------
    def latest(self) -> list[Model]:
        """The latest version of every model, by instance id."""
        out = []
        foreign = self._foreign()
        for entry in sorted(self._registry_runs(), key=lambda r: r.number):
            versions = self._versions(entry)
            newer = self._newer_foreign(entry, versions, foreign.pop(entry.number, None))
            if newer is not None:
                out.append(newer)
            elif versions:
                out.append(self._model(entry, versions[-1]))
        out += [self._foreign_model(m, 1, None) for m in foreign.values()]
        return sorted(out, key=lambda m: m.instance_id)

    def get(self, id_or_name: int | str, version: int | str | None = None) -> Model:
        """One version (the latest when None; an int, or an alias such as ``"production"``)."""
        foreign = self._foreign_only(id_or_name)
        if foreign is not None:
            if version not in (None, 1):
                raise NotFoundError(f"model {id_or_name!r} has no version {version!r}")
            return foreign
        entry = self._entry(id_or_name)
        versions = self._versions(entry)
        newer = self._newer_foreign(entry, versions, self._foreign().get(entry.number))
        if newer is not None and (version is None or version == newer.version):
            return newer
        if isinstance(version, str):
            number = entry.tags.get(_ALIAS + version)
            if number is None:
                raise NotFoundError(f"model {id_or_name!r} has no alias {version!r}")
            version = int(number)
        if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
            raise InvalidArgumentError(f"a model version is an int or an alias, got {v.show(version)}")
        chosen = versions[-1:] if version is None else [r for r in versions if r.number == version]
        if not chosen:
            raise NotFoundError(f"model {id_or_name!r} has no version {version!r}")
        return self._model(entry, chosen[0])

    def versions(self, id_or_name: int | str) -> list[Model]:
        """Every version of a model, oldest first."""
        foreign = self._foreign_only(id_or_name)
        if foreign is not None:
            return [foreign]
        entry = self._entry(id_or_name)
        versions = self._versions(entry)
        newer = self._newer_foreign(entry, versions, self._foreign().get(entry.number))
        return [self._model(entry, r) for r in versions] + ([newer] if newer is not None else [])

    def load(self, id_or_name: int | str, version: int | str | None = None, *, trusted: bool = False) -> Any:
        """The instance of a model version (see ``labvault.serializers`` for what needs ``trusted``)."""
        model = self.get(id_or_name, version)
        data = self._payloads.get(model.digest) or self.backend.blobs.get_content(model.digest)
        return serializers.deserialize(serializers.Serialized(data, model.format, model.model_type),
                                       trusted=trusted)


    # -- models in the store's own form (Backend.foreign_models; see the module doc) ----------------------
    def _foreign(self) -> dict[int, ForeignModel]:
        return {m.instance_id: m for m in self.backend.foreign_models()}

    def _foreign_model(self, found: ForeignModel, version: int, entry: RunInfo | None) -> Model:
        digest = hashlib.sha256(found.data).hexdigest()
        self._payloads[digest] = found.data
        return Model(model_type=found.model_type, instance_id=found.instance_id, version=version,
                     name=None if entry is None else entry.name, created_at=found.time,
                     format=serializers.REGISTERED, digest=digest, size=len(found.data), _vault=self.vault)

    def _foreign_only(self, id_or_name: int | str) -> Model | None:
        """The model of an instance id present only in the store's own form, or None."""
        if not isinstance(id_or_name, int) or isinstance(id_or_name, bool):
            return None
        found = self._foreign().get(id_or_name)
        if found is None or any(r.number == id_or_name for r in self._registry_runs()):
            return None
        return self._foreign_model(found, 1, None)

    def _newer_foreign(self, entry: RunInfo, versions: list[RunInfo],
                       found: ForeignModel | None) -> Model | None:
        """The store's own form of a model as the version after the latest, when it matches no version."""
        if found is None:
            return None
        digest = hashlib.sha256(found.data).hexdigest()
        stored = (self.backend.get_artifact_info(r.id, PAYLOAD_KEY).digest for r in reversed(versions))
        if digest in stored:
            return None
        return self._foreign_model(found, len(versions) + 1, entry)

    def _skip_taken(self, entry: RunInfo) -> None:
        """Retire a registry run whose number is an instance id the store's own form holds already."""
        self.backend.set_tags(entry.id, {DELETED_TAG: f"instance id {entry.number} is taken in the "
                                                       "store's own model form"})

    def _update_foreign(self, model: Model, payload: serializers.Serialized, instance: Any) -> Model:
        """A model present only in the store's own form keeps its one version there (aimm's form holds
        the latest instance only): the new payload replaces it."""
        self.backend.model_saved(model.instance_id, payload.model_type, payload.data)
        digest = hashlib.sha256(payload.data).hexdigest()
        self._payloads[digest] = payload.data
        updated = Model(model_type=payload.model_type, instance_id=model.instance_id, version=1,
                        created_at=now(), format=payload.format, digest=digest, size=len(payload.data),
                        _vault=self.vault)
        updated.instance = instance
        return updated


class _HasProject(Protocol):
    @property
    def project(self) -> str: ...


_E = TypeVar("_E", bound=_HasProject)


def without_model_project(experiments: Sequence[_E]) -> list[_E]:
    """Experiments (infos or objects with ``.project``) other than the models' own."""
    return [e for e in experiments if e.project != MODEL_PROJECT]

