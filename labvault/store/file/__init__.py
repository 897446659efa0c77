"""The file backend (``file://dir`` or a bare path): JSON documents, append-only metric segments and a
content-addressed blob folder, safe for many processes through file locks and atomic renames.

``backend`` holds ``FileBackend`` and the store layout; ``journal`` the run journal and the runs folded from
it; ``index`` its columnar cache; ``segments`` the metric segment format; ``artifacts`` the artifact
manifests; ``fileio`` locks and low-level reads and writes; ``upgrade`` the conversion of older formats."""
