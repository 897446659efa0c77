"""Moved to ``labvault.wire.codecs``; this path keeps working for one release."""

from labvault._compat import moved

__getattr__ = moved("labvault.server.wire", "labvault.wire.codecs")
