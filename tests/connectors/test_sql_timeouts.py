"""A statement the database does not finish in `statement_timeout` is the app unavailable (503), not a hang.

A trigger that sleeps stands for a database that stalls mid-statement (a lock
held by a batch job, a runaway plan): the connector must give up, roll back and
say so, and the row must not be there afterwards.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from scim_gateway_plugins.sql import SqlConnector, SqlConnectorConfig

from gateway.connectors import AppContext, AppUnavailable
from tests.services import load_schema, mariadb_database, mariadb_url, pg_database, pg_url, read_rows

__all__ = ["mariadb_database", "pg_database"]  # fixtures, used by name

SLOW_PG = """
CREATE TABLE people (id SERIAL PRIMARY KEY, login VARCHAR(100) NOT NULL);
CREATE FUNCTION stall() RETURNS trigger AS $$ BEGIN PERFORM pg_sleep(20); RETURN NEW; END $$ LANGUAGE plpgsql;
CREATE TRIGGER people_stall BEFORE INSERT ON people FOR EACH ROW EXECUTE FUNCTION stall();
"""
SLOW_MARIADB = """
CREATE TABLE people (id INTEGER AUTO_INCREMENT PRIMARY KEY, login VARCHAR(100) NOT NULL);
CREATE TRIGGER people_stall BEFORE INSERT ON people FOR EACH ROW SET NEW.login = CONCAT(NEW.login, SLEEP(20))
"""


def connector_for(dsn: str) -> SqlConnector:
    config = SqlConnectorConfig.model_validate(
        {"type": "sql", "dsn": dsn, "statement_timeout": 0.5, "tables": {"User": {"table": "people", "key": "id"}}}
    )
    return SqlConnector(config, AppContext("slow", None))  # type: ignore[arg-type]


async def stalls_then_gives_up(backend: str, database: str) -> None:
    await load_schema(backend, database, SLOW_PG if backend == "postgresql" else SLOW_MARIADB)
    dsn = pg_url(database) if backend == "postgresql" else mariadb_url(database, driver="mysql")
    connector = connector_for(dsn)
    await connector.open()
    try:
        started = time.monotonic()
        with pytest.raises(AppUnavailable):
            # The bound here is the test's own safety net, far above the 0.5 s the connector was given.
            await asyncio.wait_for(connector.create("User", {"login": "stuck"}), 15)
        assert time.monotonic() - started < 15
    finally:
        await connector.close()
    read_dsn = pg_url(database, "postgresql+asyncpg") if backend == "postgresql" else mariadb_url(database)
    assert await read_rows(read_dsn, "SELECT login FROM people") == []


async def test_postgresql_statement_past_its_timeout_is_unavailable_and_rolled_back(pg_database: str) -> None:
    await stalls_then_gives_up("postgresql", pg_database)


async def test_mariadb_statement_past_its_timeout_is_unavailable_and_rolled_back(mariadb_database: str) -> None:
    await stalls_then_gives_up("mariadb", mariadb_database)
