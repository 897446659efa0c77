"""Moved to ``labvault.store.file`` (``backend``, ``upgrade``, ``segments``, ``journal``, ``index``); this
path keeps working for one release."""

from labvault._compat import moved

__getattr__ = moved("labvault.backends.file", "labvault.store.file.backend", "labvault.store.file.upgrade",
                    "labvault.store.file.segments", "labvault.store.file.journal",
                    "labvault.store.file.index")
