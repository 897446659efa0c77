"""The Hat backend runs the whole conformance suite against a real ``hat-event-server`` (started on a free
loopback port for the session, see tests/hat_server.py); every test has a namespace of its own."""

from __future__ import annotations

import pytest
from hat_server import hat_server, hat_uri  # noqa: F401 - pytest fixtures

from labvault.testing import BackendTests


class TestHatBackend(BackendTests):
    @pytest.fixture
    def uri(self, hat_uri: str) -> str:  # noqa: F811 - the fixture imported above
        return hat_uri
