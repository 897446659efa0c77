"""``aimm-server`` (``aimm.server.main:main``, what the console script runs) with one fix for a version skew
between aimm 1.2.dev1 and hat-json 0.6.8, applied only when the installed hat-json has it.

aimm's REPL control publishes its state as ``{"models": {<int id>: ...}}``; hat-json 0.6.0 diffed states
with ``jsonpatch`` (which formats an int key as text), 0.6.8 with its own ``diff`` that calls
``str.replace`` on every path segment. So with 0.6.8 the first model change after a client connects
raises ``AttributeError: 'int' object has no attribute 'replace'`` in hat-juggler's sync loop, which drops
the client's connection: aimm's REPL client cannot see any model change, whichever backend the server
uses (aimm's own SQLite backend included). This module formats such a segment as text, as jsonpatch did,
and then runs aimm-server unchanged: ``python tests/aimm_server_compat.py --conf server.json``.
"""

from __future__ import annotations

import importlib
import sys

# hat.json re-exports a function named patch: the module itself
patch = importlib.import_module("hat.json.patch")


def _skew_present() -> bool:
    try:
        patch.diff({1: 1}, {1: 2})
    except AttributeError:
        return True
    return False


def _escape_pointer_segment(segment: object) -> str:
    return str(segment).replace("~", "~0").replace("/", "~1")


if __name__ == "__main__":
    if _skew_present():
        patch._escape_pointer_segment = _escape_pointer_segment  # type: ignore[assignment]
    from aimm.server.main import main

    sys.exit(main())
