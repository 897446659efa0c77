"""The conformance suite (and the hook checks against the tables) on PostgreSQL: one throwaway database per
module, a fresh schema per test.

The database is created with an ICU ``en-US`` default collation (where ``'b' < 'B'``), so the suite also
proves that labvault compares text by code point whatever the database's collation. It is dropped at the
end; nothing else on the server is touched. Set ``LABVAULT_TEST_POSTGRES`` to an admin URI to use
another server (default ``postgresql://postgres@127.0.0.1:5432/postgres``).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from raw_media import SQLTables

from labvault.testing import BackendHookTests, BackendTests
from labvault.testing.plugin import require_service

ADMIN_URI = os.environ.get("LABVAULT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
START = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"


BASE = ADMIN_URI.rsplit("/", 1)[0]


def connect_admin() -> Any:
    """An autocommit connection to ``ADMIN_URI``, or the test is skipped (or fails, in CI) by
    ``require_service`` when PostgreSQL does not answer."""
    import psycopg

    try:
        conn = psycopg.connect(ADMIN_URI, autocommit=True, connect_timeout=3)
    except Exception:
        conn = None
    require_service("PostgreSQL", conn is not None, START)
    assert conn is not None
    return conn


def create_database(admin: Any) -> str:
    """Create a database ``labvault_test_<hex>`` (ICU ``en-US`` collation if the server has ICU); its name."""
    name = f"labvault_test_{secrets.token_hex(6)}"
    try:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 ENCODING \'UTF8\' '
                      "LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'")
    except Exception:  # a server without ICU: its default collation
        admin.execute(f'CREATE DATABASE "{name}"')
    return name


@contextmanager
def fresh_database() -> Iterator[str]:
    """A fresh database ``labvault_test_<hex>`` for the ``with`` block: its URI; dropped afterwards."""
    admin = connect_admin()
    name = create_database(admin)
    try:
        yield f"{BASE}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    """A fresh database ``labvault_test_<hex>``; yields its URI (no options) and drops it afterwards."""
    with fresh_database() as uri:
        yield uri


class TestPostgresBackend(BackendTests):
    heavy = True

    @pytest.fixture
    def uri(self, pg_database: str) -> str:
        return f"{pg_database}?schema=t_{secrets.token_hex(6)}"


class TestPostgresBackendHooks(SQLTables, BackendHookTests):
    @pytest.fixture
    def schema(self) -> str:
        return f"t_{secrets.token_hex(6)}"

    @pytest.fixture
    def uri(self, pg_database: str, schema: str) -> str:
        return f"{pg_database}?schema={schema}"

    @pytest.fixture
    def raw(self, pg_database: str, schema: str) -> Iterator[Any]:
        """An engine on the test database with the test's schema on the search path."""
        import sqlalchemy as sa

        engine = sa.create_engine(pg_database.replace("postgresql://", "postgresql+psycopg://", 1),
                                  connect_args={"options": f"-csearch_path={schema}"})
        yield engine
        engine.dispose()
