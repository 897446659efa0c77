"""The one in-memory search driver: numpy columns over runs (``columns``) and the run index the SQL and
Redis backends keep in process, refreshed from their change numbers (``runindex``)."""
