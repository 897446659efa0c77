"""Moved to ``labvault.client.vault``; this path keeps working for one release."""

from labvault._compat import moved

__getattr__ = moved("labvault.api", "labvault.client.vault")
