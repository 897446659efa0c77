"""Where a vault's metadata lives: the ``Backend`` contract (``abc``), the registry that opens one by URI
or config (``registry``), change feeds (``feed``), the shared in-memory search driver (``search``), and one
module or package per backend: ``memory``, ``file``, ``sql`` (SQLite, PostgreSQL), ``redis``,
``objectstore`` (S3), ``http`` (a labvault server). Drivers are imported only by the backend that needs them.
"""
