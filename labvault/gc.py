"""Moved to ``labvault.client.gc``; this path keeps working for one release."""

from labvault._compat import moved

__getattr__ = moved("labvault.gc", "labvault.client.gc")
