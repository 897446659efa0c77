"""Where labvault keeps data by default (a module of its own so ``import labvault`` reads it for free)."""

#: Where ``labvault.open()`` keeps data when neither a URI nor ``$LABVAULT_URI`` is given.
DEFAULT_URI = "./labvault-data"
#: Inside a directory, this file marks the embedded default layout (SQLite metadata + local blobs).
EMBEDDED_DB_NAME = "labvault.db"
