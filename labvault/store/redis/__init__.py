"""The Redis backend (``redis://host:port/db``): hashes, sorted sets, streams and Lua scripts.

``backend`` holds ``RedisBackend``; ``scripts`` the Lua scripts of its writes and of the run index's
refresh; ``events`` the change feed (the events stream and the thread that reads it). The connection it
shares with its blob store (settings, URI parsing, retries, error translation) is
``labvault.blobs.redis_connection``, and the blob store ``labvault.blobs.redis``: the blob layer sits
below this one, so both live there.
"""
