"""The HTTP backend (``http(s)://host:port``): a client of a labvault server, with token auth, retries and
server-sent events. ``backend`` (``HTTPBackend``), ``credentials`` (the tokens ``labvault login`` stores),
``events`` (``watch()`` over the server's event stream); the requests themselves go through
``labvault.wire.transport``, the artifact bytes through ``labvault.blobs.http``."""
