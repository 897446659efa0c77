"""Old import paths that keep working for one release after the restructure (see docs/architecture.md).

A module that moved leaves a small module at its old path whose ``__getattr__`` is ``moved(...)``: the
first access of a name finds it in the new modules, warns once per name with ``DeprecationWarning``
saying where it lives now, and returns it (the same object: classes registered under a scheme are not
duplicated).
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Callable
from typing import Any


def moved(old: str, *new: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` for the module ``old``, whose names now live in the modules ``new``."""
    warned: set[str] = set()

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        for target in new:
            module = importlib.import_module(target)
            if hasattr(module, name):
                if name not in warned:
                    warned.add(name)
                    warnings.warn(f"{old} moved to {', '.join(new)}; import {name} from {target} (the old "
                                  "path goes away in the next release)", DeprecationWarning, stacklevel=2)
                return getattr(module, name)
        raise AttributeError(f"module {old!r} has no attribute {name!r} (it moved to {', '.join(new)})")

    return __getattr__


def forward(package: str, *modules: str) -> Callable[[str], Any]:
    """A package ``__getattr__`` that finds names (private helpers too) in its modules, without warning:
    for packages that grew out of one module (``labvault.sync``, ``labvault.cli``)."""

    def __getattr__(name: str) -> Any:
        if not name.startswith("__"):
            for target in modules:
                module = importlib.import_module(target)
                if hasattr(module, name):
                    value = getattr(module, name)
                    # Cached on the package: a hot loop's ``query._like`` is then a plain lookup.
                    setattr(sys.modules[package], name, value)
                    return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
