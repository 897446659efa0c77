"""The labvault server (``labvault server --backend URI``): a REST API with token authentication.

``create_app(backend_uri, artifacts=None, auth=...)`` builds the ASGI application; see
``labvault.server.app``. Importing this package is cheap: FastAPI loads with ``create_app``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AuthStore", "ServerConfig", "create_app"]


def __getattr__(name: str) -> Any:
    if name in ("create_app", "ServerConfig"):
        from labvault.server import app  # lazy: loads fastapi (~230 ms)

        return getattr(app, name)
    if name == "AuthStore":
        from labvault.server.auth import AuthStore  # lazy: loads numpy (via labvault.domain)

        return AuthStore
    raise AttributeError(f"module 'labvault.server' has no attribute {name!r}")
