"""Every built-in backend runs the whole conformance suite, and its hooks checked against its medium."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from raw_media import FileLayout, SQLTables

from labvault.testing import BackendHookTests, BackendTests


class TestMemoryBackend(BackendTests):
    @pytest.fixture
    def uri(self, request: pytest.FixtureRequest) -> str:
        import uuid

        return f"memory://{uuid.uuid4().hex}"


class TestFileBackend(BackendTests):
    heavy = True

    @pytest.fixture
    def uri(self, tmp_path: Path) -> str:
        return f"file://{tmp_path / 'store'}"


class TestSQLiteBackend(BackendTests):
    heavy = True

    @pytest.fixture
    def uri(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'store.db'}"


# -- the backends' own hooks, without a vault ----------------------------------------------------------------
class TestMemoryBackendHooks(BackendHookTests):
    no_raw_reason = "the memory backend has no raw medium: its store is the Python objects behind the API"

    @pytest.fixture
    def uri(self) -> str:
        import uuid

        return f"memory://{uuid.uuid4().hex}"


class TestFileBackendHooks(FileLayout, BackendHookTests):
    @pytest.fixture
    def uri(self, tmp_path: Path) -> str:
        return f"file://{tmp_path / 'store'}"

    @pytest.fixture
    def raw(self, tmp_path: Path) -> Path:
        return tmp_path / "store"


class TestSQLiteBackendHooks(SQLTables, BackendHookTests):
    @pytest.fixture
    def uri(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'store.db'}"

    @pytest.fixture
    def raw(self, tmp_path: Path) -> Iterator[Any]:
        import sqlalchemy as sa

        engine = sa.create_engine(f"sqlite:///{tmp_path / 'store.db'}")
        yield engine
        engine.dispose()
