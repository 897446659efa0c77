"""Moved to ``labvault.store.sql`` (``backend``, ``schema``, ``migrations``) and ``labvault.blobs`` (``sql``,
``tiered``); this path keeps working for one release."""

from labvault._compat import moved

__getattr__ = moved("labvault.backends.sql", "labvault.store.sql.backend", "labvault.store.sql.schema",
                    "labvault.store.sql.migrations", "labvault.store.sql.runs", "labvault.store.sql.engine",
                    "labvault.blobs.sql", "labvault.blobs.tiered")
