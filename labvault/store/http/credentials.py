"""The tokens ``labvault login URL`` stores: one per server, in ``<config dir>/credentials.json`` (mode
0600), keyed by the server's normalized URL (``normalize_url``).

``HTTPBackend`` reads them (``load_token``) when neither ``token=`` nor ``$LABVAULT_TOKEN`` gives one;
``labvault login`` / ``logout`` write them (``save_token``, ``forget_token``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from labvault._config import config_dir
from labvault._uri import redact, refuse_credentials
from labvault.errors import InvalidArgumentError

__all__ = ["forget_token", "load_token", "normalize_url", "save_token"]


def _credentials_path() -> Path:
    return config_dir() / "credentials.json"


def normalize_url(url: str) -> str:
    """``scheme://host:port/path`` without a trailing slash (the key credentials are stored under)."""
    refuse_credentials(url, "labvault server URLs",
                       "pass token=, set $LABVAULT_TOKEN or store one with: labvault login URL")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgumentError(f"not a labvault server URL: {_redact(url)!r} (write http(s)://host:port)")
    port = parts.port or (443 if scheme == "https" else 80)
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}{parts.path.rstrip('/')}"


def _redact(uri: str) -> str:
    """``uri`` with its secrets hidden (see :func:`labvault._uri.redact`)."""
    return redact(uri)


def load_token(url: str) -> str | None:
    """The token ``labvault login`` stored for the server at ``url``, if any."""
    path = _credentials_path()
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    entry = (doc.get("servers") or {}).get(normalize_url(url)) if isinstance(doc, dict) else None
    token = entry.get("token") if isinstance(entry, dict) else None
    return token if isinstance(token, str) else None


def _write(path: Path, doc: dict[str, Any], *, chmod: bool) -> None:
    """Replace the credentials file with ``doc`` atomically, created with mode 0600 (``chmod``: and set to
    0600 whatever the umask)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=2)
    if chmod:
        os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def save_token(url: str, token: str, user: str | None = None) -> Path:
    """Store ``token`` for ``url`` in the user's credentials file (mode 0600); return its path."""
    path = _credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict):
            doc = {}
    except (OSError, ValueError):
        doc = {}
    servers = doc.setdefault("servers", {})
    servers[normalize_url(url)] = {"token": token, "user": user, "saved": time.time()}
    _write(path, doc, chmod=True)
    return path


def forget_token(url: str) -> bool:
    """Remove the stored token of ``url``; whether there was one."""
    path = _credentials_path()
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    servers = doc.get("servers") if isinstance(doc, dict) else None
    if not isinstance(servers, dict) or servers.pop(normalize_url(url), None) is None:
        return False
    _write(path, doc, chmod=False)
    return True
