"""A database that refuses the gateway's login is AppCredentialsRefused (the operator's to fix), not an outage.

Against the machine's PostgreSQL and MariaDB: an unknown user, a wrong password,
and a login revoked under a running connector (its pooled connections killed, so
the next request logs in again). The breaker does not count these as the app
being down (tests/integration/test_breaker.py covers that side).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from scim_gateway_plugins.sql import SqlConnector

from gateway.connectors import AppContext, AppCredentialsRefused
from tests.services import MARIADB_HOST, MARIADB_PORT, PG_HOST, PG_PORT

from .test_sql_backends import HR, HR_TABLES, Database, drop, fresh_database, make_config

SERVERS = ["postgresql", "mariadb"]


@pytest.fixture(params=SERVERS)
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[str, Database, str]]:
    server = str(request.param)
    db, name = await fresh_database(server, tmp_path, HR[server])
    yield server, db, name
    await drop(server, name)


def _dsn(server: str, name: str, user: str, password: str | None = None) -> str:
    login = f"{user}:{password}" if password is not None else user
    if server == "postgresql":
        return f"postgresql://{login}@{PG_HOST}:{PG_PORT}/{name}"
    return f"mysql://{login}@{MARIADB_HOST}:{MARIADB_PORT}/{name}"


def _connector(dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SqlConnector:
    # A DSN with a password must come by reference. (The SQL below doubles `%`: the driver formats it.)
    monkeypatch.setenv("TEST_SQL_CREDENTIALS_DSN", dsn)
    config = make_config({"env": "TEST_SQL_CREDENTIALS_DSN"}, HR_TABLES)  # type: ignore[arg-type]
    return SqlConnector(config, AppContext(name="hr", data_dir=tmp_path))


async def test_an_unknown_user_is_credentials_refused(
    database: tuple[str, Database, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _db, name = database
    connector = _connector(_dsn(server, name, f"gw_nobody_{uuid.uuid4().hex[:8]}"), tmp_path, monkeypatch)
    with pytest.raises(AppCredentialsRefused) as caught:
        await connector.open()
    assert caught.value.retry_after == 5
    assert "refused the gateway's login" in caught.value.detail
    with pytest.raises(AppCredentialsRefused):
        await connector.check_schema()


# MariaDB only: the machine's PostgreSQL trusts loopback logins (pg_hba trust) and checks no password; its
# class 28 is covered by the unknown role and the revoked login (28000).
@pytest.mark.parametrize("database", ["mariadb"], indirect=True)
async def test_a_wrong_password_is_credentials_refused(
    database: tuple[str, Database, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, db, name = database
    user = f"gw_{uuid.uuid4().hex[:8]}"
    await db.execute(f"CREATE USER '{user}'@'%%' IDENTIFIED BY 'right-password'")
    try:
        await db.execute(f"GRANT ALL ON `{name}`.* TO '{user}'@'%%'")
        connector = _connector(_dsn(server, name, user, "wrong-password"), tmp_path, monkeypatch)
        with pytest.raises(AppCredentialsRefused) as caught:
            await connector.open()
        assert "Access denied" in caught.value.detail
        assert "wrong-password" not in caught.value.detail
        right = _connector(_dsn(server, name, user, "right-password"), tmp_path, monkeypatch)
        await right.open()
        await right.close()
    finally:
        await db.execute(f"DROP USER '{user}'@'%%'")


async def test_a_login_revoked_under_a_running_connector_is_credentials_refused(
    database: tuple[str, Database, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, db, name = database
    user = f"gw_{uuid.uuid4().hex[:8]}"
    if server == "postgresql":
        for sql in (
            f"CREATE ROLE {user} LOGIN",
            f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {user}",
            f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {user}",
        ):
            await db.execute(sql)
    else:
        await db.execute(f"CREATE USER '{user}'@'%%' IDENTIFIED BY 'pw'")
        await db.execute(f"GRANT ALL ON `{name}`.* TO '{user}'@'%%'")
    connector = _connector(_dsn(server, name, user, None if server == "postgresql" else "pw"), tmp_path, monkeypatch)
    await connector.open()
    try:
        native_id = await connector.create("User", {"login": "before"})
        assert (await connector.get("User", native_id) or {}).get("login") == "before"
        # The login is revoked and the connector's connections are killed: the next request must log in again.
        if server == "postgresql":
            await db.execute(f"ALTER ROLE {user} NOLOGIN")
            await db.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{user}'")
        else:
            await db.execute(f"ALTER USER '{user}'@'%%' IDENTIFIED BY 'rotated'")
            for row in await _mariadb_sessions(db, user):
                await db.execute(f"KILL CONNECTION {row}")
        with pytest.raises(AppCredentialsRefused):
            await connector.get("User", native_id)
        with pytest.raises(AppCredentialsRefused):
            await connector.create("User", {"login": "during"})
    finally:
        await connector.close()
        if server == "postgresql":
            await db.execute(f"DROP OWNED BY {user}")
            await db.execute(f"DROP ROLE {user}")
        else:
            await db.execute(f"DROP USER '{user}'@'%%'")


async def _mariadb_sessions(db: Database, user: str) -> list[int]:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    engine = create_async_engine(db.dsn, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(text("SELECT id FROM information_schema.processlist WHERE user = :u"), {"u": user})
            return [int(row[0]) for row in result]
    finally:
        await engine.dispose()
