"""Every built-in backend runs the whole conformance suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from labvault.testing import BackendTests


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
