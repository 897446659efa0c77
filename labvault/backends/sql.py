"""Moved to ``labvault.store.sql.backend``; this path keeps working for one release."""

from labvault._compat import moved

__getattr__ = moved("labvault.backends.sql", "labvault.store.sql.backend")
