"""Moved to ``labvault.wire.codecs`` and ``labvault.wire.errors``; this path keeps working for one release."""

from labvault._compat import moved

__getattr__ = moved("labvault.server.wire", "labvault.wire.codecs", "labvault.wire.errors")
