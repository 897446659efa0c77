"""labvault and aimm share models on one Hat event server, both ways.

aimm's own event backend (``aimm.server.backend.event``, built as aimm-server builds it: ``create(conf,
eventer_client)`` with a client subscribed to ``create_subscription(conf)``) runs against the same real
``hat-event-server`` as labvault's Hat backend (tests/hat_server.py). One test model type has the same
serializer on both sides (an aimm plugin and ``labvault.serializers.register``), so the bytes in aimm's
event payload are the bytes labvault stores.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hat_server import HatServer, hat_server  # noqa: F401 - pytest fixtures

import labvault
from labvault import serializers
from labvault.testing.suite_base import run_worker

aimm_plugins = pytest.importorskip("aimm.plugins")
aimm_event = pytest.importorskip("aimm.server.backend.event")

MODEL_TYPE = "labvault_test.Counter"
#: What labvault names a dict stored without a model type (its JSON format): aimm reads it as JSON too.
DICT_TYPE = "builtins.dict"
_T = TypeVar("_T")


def _serialize(instance: Any) -> bytes:
    return json.dumps(instance, sort_keys=True).encode()


def _deserialize(data: bytes) -> Any:
    return json.loads(bytes(data))


@pytest.fixture(scope="module", autouse=True)
def same_serializer_on_both_sides() -> Iterator[None]:
    """The test model type's serializer, registered with aimm's plugins and labvault's serializers."""
    aimm_plugins.serialize([MODEL_TYPE, DICT_TYPE])(_serialize)
    aimm_plugins.deserialize([MODEL_TYPE, DICT_TYPE])(_deserialize)
    serializers.register(MODEL_TYPE, _serialize, _deserialize, replace=True)
    yield
    serializers.unregister(MODEL_TYPE)
    aimm_plugins.unload_all()


@pytest.fixture
def place(hat_server: HatServer, tmp_path: Path) -> tuple[str, list[str]]:  # noqa: F811 - the fixture
    """A labvault URI on a fresh namespace and model prefix, and that prefix as aimm's list."""
    tag = uuid.uuid4().hex[:12]
    prefix = ["aimm", f"m{tag}"]
    uri = (f"hat://{hat_server.address}?namespace=n{tag}&model_prefix={'/'.join(prefix)}"
           f"&artifacts=file://{tmp_path / 'blobs'}")
    return uri, prefix


def with_aimm(hat: HatServer, prefix: list[str], work: Callable[[Any], Awaitable[_T]]) -> _T:
    """``work(backend)`` on a freshly started aimm event backend (a new aimm-server, as it were)."""
    from hat.drivers import net
    from hat.event import common, eventer

    async def main() -> _T:
        conf = {"module": "aimm.server.backend.event", "model_prefix": prefix}
        client = await eventer.connect(net.TcpAddress("127.0.0.1", hat.port), "aimm-test",
                                       subscriptions=aimm_event.create_subscription(conf))
        try:
            backend = await aimm_event.create(conf, client)
            try:
                result = await work(backend)
                # aimm registers without waiting; the server answers a connection's messages in order,
                # so once this query is answered its registrations are stored
                await client.query(common.QueryLatestParams([("aimm-barrier",)]))
                return result
            finally:
                await backend.async_close()
        finally:
            await client.async_close()

    return asyncio.run(main())


def aimm_models(hat: HatServer, prefix: list[str]) -> dict[int, tuple[str, Any]]:
    """What aimm's event backend reads: instance id -> (model type, instance)."""

    async def read(backend: Any) -> dict[int, tuple[str, Any]]:
        return {m.instance_id: (m.model_type, m.instance) for m in await backend.get_models()}

    return with_aimm(hat, prefix, read)


def test_aimm_reads_the_models_labvault_wrote(hat_server: HatServer,  # noqa: F811 - the fixture
                                              place: tuple[str, list[str]]) -> None:
    uri, prefix = place
    with labvault.open(uri) as vault:
        first = vault.create_model(MODEL_TYPE, {"n": 1}, name="counter")
        first.instance = {"n": 2}
        vault.update_model(first)
        vault.create_model(MODEL_TYPE, {"other": True})
    assert aimm_models(hat_server, prefix) == {1: (MODEL_TYPE, {"n": 2}), 2: (MODEL_TYPE, {"other": True})}


def test_labvault_reads_the_models_aimm_wrote(hat_server: HatServer,  # noqa: F811 - the fixture
                                              place: tuple[str, list[str]]) -> None:
    uri, prefix = place

    async def create_two(backend: Any) -> list[int]:
        a = await backend.create_model(MODEL_TYPE, {"a": 1})
        b = await backend.create_model(MODEL_TYPE, {"b": 1})
        await backend.update_model(a._replace(instance={"a": 2}))
        return [a.instance_id, b.instance_id]

    assert with_aimm(hat_server, prefix, create_two) == [1, 2]
    with labvault.open(uri) as vault:
        models = vault.get_models()
        assert [(m.instance_id, m.version, m.model_type) for m in models] == [(1, 1, MODEL_TYPE),
                                                                               (2, 1, MODEL_TYPE)]
        assert vault.load_model(1) == {"a": 2} and vault.get_model(2).instance == {"b": 1}
        assert [m.version for m in vault.model_versions(1)] == [1]
        mine = vault.create_model(MODEL_TYPE, {"mine": 1})
        assert mine.instance_id == 3  # 1 and 2 are aimm's: never handed out again
        aimm_two = vault.get_model(2)
        aimm_two.instance = {"b": 2}
        vault.update_model(aimm_two)  # a model only aimm holds stays in aimm's form
    assert aimm_models(hat_server, prefix) == {1: (MODEL_TYPE, {"a": 2}), 2: (MODEL_TYPE, {"b": 2}),
                                               3: (MODEL_TYPE, {"mine": 1})}

    async def update_mine(backend: Any) -> None:
        (model,) = [m for m in await backend.get_models() if m.instance_id == 3]
        await backend.update_model(model._replace(instance={"mine": 2}))

    with_aimm(hat_server, prefix, update_mine)
    with labvault.open(uri) as vault:  # aimm's update shows as the version after labvault's last
        assert vault.get_model(3).version == 2 and vault.load_model(3) == {"mine": 2}
        assert vault.load_model(3, 1) == {"mine": 1}
        assert [m.version for m in vault.model_versions(3)] == [1, 2]
        assert [(m.instance_id, m.version) for m in vault.get_models()] == [(1, 1), (2, 1), (3, 2)]


def test_instance_ids_stay_unique_after_a_restart(hat_server: HatServer,  # noqa: F811 - the fixture
                                                  place: tuple[str, list[str]]) -> None:
    """aimm's event backend restarts its counter at the highest id it finds (its next model overwrites
    that one); labvault's ids come from its own durable numbering and skip every id in aimm's form."""
    uri, prefix = place

    async def create_one(backend: Any) -> int:
        return int((await backend.create_model(MODEL_TYPE, {"aimm": 1})).instance_id)

    assert with_aimm(hat_server, prefix, create_one) == 1
    with labvault.open(uri) as vault:
        assert vault.create_model(MODEL_TYPE, {"lv": 1}).instance_id == 2
    with labvault.open(uri) as vault:  # a restarted vault in this process
        assert vault.create_model(MODEL_TYPE, {"lv": 2}).instance_id == 3
    created = json.loads(run_worker("create_models", uri, 2, ""))  # and a new process
    assert created == [4, 5]
    with labvault.open(uri) as vault:
        assert [m.instance_id for m in vault.get_models()] == [1, 2, 3, 4, 5]
        assert vault.load_model(1) == {"aimm": 1} and vault.load_model(3) == {"lv": 2}
    seen = aimm_models(hat_server, prefix)
    assert sorted(seen) == [1, 2, 3, 4, 5]
    assert seen[1] == (MODEL_TYPE, {"aimm": 1}) and seen[2] == (MODEL_TYPE, {"lv": 1})
