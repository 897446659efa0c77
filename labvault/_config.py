"""Where labvault keeps per-user configuration (the server's auth store, the CLI's stored tokens)."""

from __future__ import annotations

import os
from pathlib import Path


def config_dir() -> Path:
    """``$LABVAULT_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/labvault``, else ``~/.config/labvault``."""
    explicit = os.environ.get("LABVAULT_CONFIG_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".config"
    return base / "labvault"
