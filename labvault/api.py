"""Moved to ``labvault.client`` (``vault``, ``run``, ``buffer``); this path keeps working for one release."""

from labvault._compat import moved

__getattr__ = moved("labvault.api", "labvault.client.buffer", "labvault.client.run", "labvault.client.vault")
