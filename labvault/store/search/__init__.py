"""The one in-memory search driver: numpy columns over runs and the search over them (``columns``:
``ColumnSource`` + ``search_positions``, used by the file backend over its folded journals and by the run
index), and the run index the SQL and Redis backends keep in process, refreshed from their change numbers
(``runindex``)."""
