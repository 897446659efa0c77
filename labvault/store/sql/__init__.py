"""SQL backends on SQLAlchemy Core: SQLite (the embedded default, ``backend``) and PostgreSQL
(``postgresql``), sharing one schema (``schema``), one transaction engine (``engine``), one set of
migrations (``migrations``) and one row codec and search compiler (``runs``). Their artifact stores live
in ``labvault.blobs.sql`` and ``labvault.blobs.tiered``.

The names of ``schema`` and ``migrations`` (the tables, ``schema_metadata``, ``upgrade`` ...) are also
attributes of this package, imported on first access: ``labvault.store.sql.upgrade(uri)``.
"""

from labvault._compat import forward

__getattr__ = forward("labvault.store.sql", "labvault.store.sql.schema", "labvault.store.sql.migrations")
