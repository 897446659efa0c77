"""Moved to ``labvault.store.sql`` (``backend``, ``schema``, ``migrations``, ``runs``, ``engine``) and
``labvault.blobs`` (``sql``, ``tiered``); this path keeps working for one release."""

from labvault._compat import moved

# Each name's home first (lower modules before the ones that import from them).
__getattr__ = moved("labvault.backends.sql", "labvault.blobs.sql", "labvault.blobs.tiered",
                    "labvault.store.sql.schema", "labvault.store.sql.runs", "labvault.store.sql.engine",
                    "labvault.store.sql.migrations", "labvault.store.sql.backend")
