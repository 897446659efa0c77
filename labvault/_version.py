"""labvault's version, from one place: the installed distribution's metadata (``pyproject.toml``)."""

from __future__ import annotations

import functools


@functools.cache
def version() -> str:
    """The installed labvault version (``0+unknown`` when running from a source tree never installed)."""
    from importlib.metadata import PackageNotFoundError  # lazy: importlib.metadata costs ~25 ms
    from importlib.metadata import version as dist_version  # lazy: importlib.metadata costs ~25 ms

    try:
        return dist_version("labvault")
    except PackageNotFoundError:
        return "0+unknown"
