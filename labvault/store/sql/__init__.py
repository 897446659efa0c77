"""SQL backends on SQLAlchemy Core: SQLite (the embedded default, ``backend``) and PostgreSQL
(``postgresql``), sharing one schema and one set of statements."""
