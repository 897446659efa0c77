"""pytest plugin: service requirements for backends that need a running server.

With ``LABVAULT_REQUIRE_SERVICES=1`` (as ``.ci/run`` sets) a missing service FAILS the tests that need it;
otherwise they are skipped with a message that says how to start the service.
"""

from __future__ import annotations

import os

import pytest


def services_required() -> bool:
    """Whether a missing service must fail rather than skip the tests that need it."""
    return os.environ.get("LABVAULT_REQUIRE_SERVICES", "").strip().lower() in ("1", "true", "yes")


def require_service(name: str, available: bool, how_to_start: str) -> None:
    """Fail (CI) or skip (laptop) the current test when service ``name`` is not reachable."""
    if available:
        return
    message = f"{name} is not reachable; start it with: {how_to_start}"
    if services_required():
        pytest.fail(f"LABVAULT_REQUIRE_SERVICES=1 and {message}", pytrace=False)
    pytest.skip(message)


def pytest_configure(config: pytest.Config) -> None:
    """Register the suite's markers."""
    config.addinivalue_line("markers", "slow: heavy cases run once per backend family")
    config.addinivalue_line("markers", "multiprocess: spawns writer processes")
