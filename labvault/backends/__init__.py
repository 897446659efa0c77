"""The old home of the storage layer, kept importable for one release: the backends now live in
``labvault.store`` (the contract in ``labvault.store.abc``), the blob stores in ``labvault.blobs``. The
entry-point group third-party backends register in is still ``labvault.backends``."""
