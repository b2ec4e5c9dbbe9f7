"""The real databases this project's machines run: PostgreSQL (127.0.0.1:5432, trust) and MariaDB (127.0.0.1:3306, root).

Each fixture hands a test a database of its own, created empty and dropped
afterwards. A server that cannot be reached skips the test outside CI and fails
it in CI (`need_service`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import need_service

PG_HOST = os.environ.get("TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("TEST_PG_USER", "postgres")
MARIADB_HOST = os.environ.get("TEST_MARIADB_HOST", "127.0.0.1")
MARIADB_PORT = int(os.environ.get("TEST_MARIADB_PORT", "3306"))
MARIADB_USER = os.environ.get("TEST_MARIADB_USER", "root")


def pg_url(database: str, driver: str = "postgresql") -> str:
    """A URL for `database`; driver "postgresql+asyncpg" for SQLAlchemy, "postgresql" for asyncpg itself."""
    return f"{driver}://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"


def mariadb_url(database: str, driver: str = "mysql+aiomysql") -> str:
    return f"{driver}://{MARIADB_USER}@{MARIADB_HOST}:{MARIADB_PORT}/{database}?charset=utf8mb4"


async def create_pg_database() -> str:
    import asyncpg

    name = f"scimtest_{uuid.uuid4().hex[:12]}"
    try:
        conn = await asyncpg.connect(pg_url("postgres"), timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        need_service(f"PostgreSQL at {PG_HOST}:{PG_PORT} is unreachable: {exc}")
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name


async def drop_pg_database(name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(pg_url("postgres"), timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def create_mariadb_database() -> str:
    import aiomysql

    name = f"scimtest_{uuid.uuid4().hex[:12]}"
    try:
        conn = await aiomysql.connect(host=MARIADB_HOST, port=MARIADB_PORT, user=MARIADB_USER, password="", connect_timeout=5)
    except Exception as exc:  # aiomysql raises OperationalError or OSError
        need_service(f"MariaDB at {MARIADB_HOST}:{MARIADB_PORT} is unreachable: {exc}")
    try:
        async with conn.cursor() as cur:
            await cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    finally:
        conn.close()
    return name


async def drop_mariadb_database(name: str) -> None:
    import aiomysql

    conn = await aiomysql.connect(host=MARIADB_HOST, port=MARIADB_PORT, user=MARIADB_USER, password="", connect_timeout=5)
    try:
        async with conn.cursor() as cur:
            await cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        conn.close()


@pytest.fixture
async def pg_database() -> AsyncIterator[str]:
    """The name of a fresh, empty PostgreSQL database (dropped after the test)."""
    name = await create_pg_database()
    yield name
    await drop_pg_database(name)


@pytest.fixture
async def mariadb_database() -> AsyncIterator[str]:
    """The name of a fresh, empty MariaDB database (dropped after the test)."""
    name = await create_mariadb_database()
    yield name
    await drop_mariadb_database(name)


async def load_schema(backend: str, name_or_path: str, script: str) -> None:
    """Run a DDL script: as one script for SQLite (a file path) and PostgreSQL (one call: $$ bodies hold
    semicolons), statement by statement for MariaDB (comment-only pieces skipped)."""
    if backend == "sqlite":
        import sqlite3
        from contextlib import closing

        with closing(sqlite3.connect(name_or_path)) as db:
            db.executescript(script)
    elif backend == "postgresql":
        import asyncpg

        conn = await asyncpg.connect(pg_url(name_or_path))
        try:
            await conn.execute(script)
        finally:
            await conn.close()
    else:
        import aiomysql

        conn = await aiomysql.connect(
            host=MARIADB_HOST, port=MARIADB_PORT, user=MARIADB_USER, password="", db=name_or_path, charset="utf8mb4"
        )
        try:
            async with conn.cursor() as cur:
                for statement in script.split(";\n"):
                    lines = statement.strip().splitlines()
                    if lines and not all(line.startswith("--") for line in lines):
                        await cur.execute(statement)
            await conn.commit()
        finally:
            conn.close()


async def read_rows(dsn: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """Rows read straight from an app's database (a SQLAlchemy async URL), past every connector."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    engine = create_async_engine(dsn, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return [tuple(row) for row in await conn.execute(text(sql), params)]
    finally:
        await engine.dispose()
