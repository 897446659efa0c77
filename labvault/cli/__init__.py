"""The ``labvault`` command line (typer + rich), thin over the public API: ``labvault --help``.

The root app and the command tree are in :mod:`labvault.cli.root`; each command group has its module
(see there).
"""

from labvault._compat import forward
from labvault.cli.root import app, main

__all__ = ["app", "main"]

#: Names from before the split (``_svg_plot``, ``PROGRESS_MIN_BYTES``, ...) resolve in the command modules.
__getattr__ = forward("labvault.cli", "labvault.cli.demo", "labvault.cli.browse", "labvault.cli.transfer")
