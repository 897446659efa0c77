"""Scheme registry, entry points and config-driven backend selection."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import labvault
from labvault import _registry as registry
from labvault.errors import AlreadyExistsError, InvalidArgumentError
from labvault.store.memory import MemoryBackend


@pytest.fixture
def clean_registry() -> Iterator[None]:
    saved_b, saved_s = dict(registry._backends), dict(registry._blob_stores)
    saved_ep = registry._entry_points_loaded
    yield
    registry._backends.clear()
    registry._backends.update(saved_b)
    registry._blob_stores.clear()
    registry._blob_stores.update(saved_s)
    registry._entry_points_loaded = saved_ep


def test_subclass_keyword_registers_scheme(clean_registry: None) -> None:
    class Mine(MemoryBackend, scheme="mine"):
        pass

    with labvault.open("mine://shared-a") as vault:
        assert type(vault.backend) is Mine
        vault.experiment("e")
    assert "mine" in registry.known_schemes()


def test_duplicate_scheme_raises_unless_replaced(clean_registry: None) -> None:
    class First(MemoryBackend, scheme="dup"):
        pass

    with pytest.raises(AlreadyExistsError, match="dup"):

        class Second(MemoryBackend, scheme="dup"):
            pass

    class Third(MemoryBackend, scheme="dup", replace=True):
        pass

    assert registry.backend_class("dup") is Third


def test_unknown_scheme_lists_known() -> None:
    with pytest.raises(InvalidArgumentError, match=r"nosuch.*known schemes: .*file.*memory.*sqlite"):
        labvault.open("nosuch://x")


def test_entry_point_backend(tmp_path: Path, clean_registry: None, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "thirdparty_lv"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        from labvault.store.memory import MemoryBackend
        class PluginBackend(MemoryBackend):
            pass
    """))
    dist = tmp_path / "thirdparty_lv-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-lv\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[labvault.backends]\nplug = thirdparty_lv:PluginBackend\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry._entry_points_loaded = False
    with labvault.open("plug://x") as vault:
        assert type(vault.backend).__name__ == "PluginBackend"
    sys.modules.pop("thirdparty_lv", None)


def test_config_builtin_by_name(tmp_path: Path) -> None:
    with labvault.open(config={"backend": "memory", "uri": "memory://cfg"}) as vault:
        assert isinstance(vault.backend, MemoryBackend)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "config"),
        ({"module": 3}, "module"),
        ({"module": ""}, "module"),
        ({"backend": "nosuch", "uri": "x://"}, "nosuch"),
        ({"module": "no_such_module_xyz"}, "no_such_module_xyz"),
        ({"module": "json"}, "create"),
        ({"module": "labvault.store.memory:NoSuchClass"}, "NoSuchClass"),
        ({"module": "pathlib:Path"}, "not a labvault Backend"),
        ({"backend": "memory"}, "uri"),
    ],
)
def test_bad_configs(config: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        labvault.open(config=config)


def test_config_module_create_and_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "aimm_style.py").write_text(textwrap.dedent("""
        from labvault.store.memory import MemoryBackend
        CONFIG_SCHEMA = {"type": "object", "required": ["name"],
                         "properties": {"name": {"type": "string", "pattern": "^[a-z]+$"}}}
        def create(config):
            return MemoryBackend.from_uri("memory://" + config["name"])
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    with labvault.open(config={"module": "aimm_style", "name": "abc"}) as vault:
        assert vault.uri == "memory://abc"
    with pytest.raises(InvalidArgumentError, match="name"):
        labvault.open(config={"module": "aimm_style", "name": "ABC!"})
    with pytest.raises(InvalidArgumentError, match="name"):
        labvault.open(config={"module": "aimm_style"})
    sys.modules.pop("aimm_style", None)


def test_config_names_class_directly() -> None:
    with labvault.open(config={"module": "labvault.store.memory:MemoryBackend",
                               "uri": "memory://direct"}) as vault:
        assert isinstance(vault.backend, MemoryBackend)


def test_uri_and_config_together_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match="either"):
        labvault.open("memory://", config={"backend": "memory", "uri": "memory://"})
