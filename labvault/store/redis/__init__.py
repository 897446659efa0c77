"""The Redis backend (``redis://host:port/db``): hashes, sorted sets, streams and Lua scripts."""
