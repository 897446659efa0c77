"""Moved to ``labvault.store.redis.backend`` (``RedisBackend``) and ``labvault.blobs.redis``
(``RedisBlobStore``; its connection in ``labvault.blobs.redis_connection``); this path keeps working for
one release."""

from labvault._compat import moved

# Where a name is defined first: a module that only imports it comes later (the warning names its home).
__getattr__ = moved("labvault.backends.redis", "labvault.blobs.redis_connection", "labvault.blobs.redis",
                    "labvault.store.redis.scripts", "labvault.store.redis.events",
                    "labvault.store.redis.backend")
