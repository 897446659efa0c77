"""The HTTP backend (``http(s)://host:port``): a client of a labvault server, with token auth, retries and
server-sent events."""
