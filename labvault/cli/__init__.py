"""The ``labvault`` command line (typer + rich), thin over the public API: ``labvault --help``."""

from labvault._compat import forward
from labvault.cli.commands import app, main

__all__ = ["app", "main"]

#: Private helpers tests reach (``_svg_plot``) resolve in the command modules.
__getattr__ = forward("labvault.cli", "labvault.cli.commands")
