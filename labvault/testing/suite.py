"""Moved to ``labvault.testing.backend_suite``; this path keeps working for one release."""

from labvault._compat import moved

__getattr__ = moved("labvault.testing.suite", "labvault.testing.backend_suite")
