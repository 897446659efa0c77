"""Moved to ``labvault.store.sql.postgresql``; this path keeps working for one release."""

from labvault._compat import moved

__getattr__ = moved("labvault.backends.postgresql", "labvault.store.sql.postgresql")
