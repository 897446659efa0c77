"""The file backend (``file://dir`` or a bare path): JSON documents, append-only metric segments and a
content-addressed blob folder, safe for many processes through file locks and atomic renames."""
