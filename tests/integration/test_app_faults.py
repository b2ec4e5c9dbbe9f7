"""Faults in the legacy app, through a live gateway: the SCIM error the IdP gets, and nothing recorded for a write
that did not happen.

REST: the fake HR app (tests/fakes/hr_app.py) on loopback behind a TcpProxy (stopped: connection refused) and with
its scripted faults (slow past the connector's timeout, 500, 429 with Retry-After, HTML, cut-short JSON). SQL: the
legacy PostgreSQL example behind a TcpProxy (stopped; a black hole in its place; a table lock held; the server
failing a statement). Each fault meets create, PATCH, delete and GET; the store's resources, members and journal
rows are compared before and after. Then: an app that cannot be reached at start-up no longer stops the gateway.

Not repeated here: the connectors' own translation of each status (tests/connectors/test_rest_connector.py,
aioresponses; tests/connectors/test_sql_backends.py), a 500 / HTML / garbage on create (test_rest_hr.py), the
database going away with statuses only (test_sql_legacy.py).
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import sqlite3
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient
from pydantic import SecretStr
from yarl import URL

from gateway.app import create_app
from gateway.demo import demo_mapping_path, ensure_demo_database
from gateway.http.keys import APPS
from gateway.runtime import AppRuntime
from gateway.settings import GatewaySettings
from tests.conftest import BASE, TOKEN, LiveGateway, Scim, free_port, user_body
from tests.fakes.black_hole import BlackHole
from tests.fakes.hr_app import HR_STATE, HrState, create_hr_app, serve
from tests.idp import entra_user
from tests.proxy import TcpProxy
from tests.services import PG_HOST, PG_PORT, PG_USER, create_pg_database, drop_pg_database, load_schema, read_rows

ROOT = Path(__file__).resolve().parents[2]
ERROR_URN = "urn:ietf:params:scim:api:messages:2.0:Error"
HR_API_KEY = "hr-api-key-faults-0123456"
HR_BASE = "/apps/hr/scim/v2"
PG_BASE = "/apps/legacy_pg/scim/v2"
NO_BREAKER = {"failures": 1000}  # these tests look at single faults; tests/integration/test_breaker.py at repeated ones


# ---------------------------------------------------------------- helpers shared with test_breaker.py


def hr_mapping(tmp_path: Path, base_url: str, *, timeout: float = 5.0, breaker: dict[str, Any] | None = None) -> Path:
    """The shipped HR mapping pointed at `base_url`: no retries (each SCIM request is one app call), no rate limit."""
    doc = yaml.safe_load((ROOT / "mappings" / "hr_rest.yaml").read_text())
    del doc["auth"]  # the token comes as on the command line
    doc["connector"].update(base_url=base_url, timeout=timeout, retries=0)
    del doc["connector"]["rate_limit"]
    doc["breaker"] = breaker or NO_BREAKER
    path = tmp_path / f"hr-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def pg_mapping(tmp_path: Path, database: str, port: int, *, timeout: float = 2.0, breaker: dict[str, Any] | None = None) -> Path:
    """The shipped legacy PostgreSQL mapping on `database`, reached at 127.0.0.1:`port` (a proxy)."""
    doc = yaml.safe_load((ROOT / "mappings" / "legacy_pg.yaml").read_text())
    del doc["auth"]
    doc["connector"].update(dsn=f"postgresql://{PG_USER}@127.0.0.1:{port}/{database}", timeout=timeout, pool_size=2)
    doc["breaker"] = breaker or NO_BREAKER
    path = tmp_path / f"pg-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def store_rows(data_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """The correlation store's rows, read past the gateway."""
    with closing(sqlite3.connect(data_dir / "gateway.db")) as db:
        db.row_factory = sqlite3.Row
        return {
            t: [dict(r) for r in db.execute(f"SELECT * FROM {t} ORDER BY rowid")] for t in ("resources", "members", "journal")
        }


def assert_nothing_recorded(
    before: dict[str, list[dict[str, Any]]], after: dict[str, list[dict[str, Any]]], what: str, writes: int = 1
) -> None:
    """No correlation entry changed: resources and members as they were; the journal gained at most each write's
    aborted entry (claimed, then given up before the app did anything), never a pending or settled one."""
    assert after["resources"] == before["resources"], what
    assert after["members"] == before["members"], what
    old = len(before["journal"])
    assert after["journal"][:old] == before["journal"], what
    new = [e["state"] for e in after["journal"][old:]]
    assert len(new) <= writes and set(new) <= {"aborted"}, (what, after["journal"][old:])


def assert_scim_error(resp: Any, data: Any, status: int, what: str) -> None:
    assert resp.status == status, (what, data)
    assert resp.content_type == "application/scim+json", what
    assert data["schemas"] == [ERROR_URN] and data["status"] == str(status), (what, data)
    assert "scimType" not in data, (what, data)  # RFC 7644 defines none for 502 / 503
    assert HR_API_KEY not in data["detail"] and "<html" not in data["detail"].lower(), (what, data)


# ---------------------------------------------------------------- the REST app


@dataclass
class HrGateway:
    state: HrState
    proxy: TcpProxy
    scim: Scim
    client: TestClient
    data_dir: Path

    def rows(self) -> dict[str, list[dict[str, Any]]]:
        return store_rows(self.data_dir)


@asynccontextmanager
async def hr_gateway(
    aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, timeout: float = 5.0
) -> AsyncIterator[HrGateway]:
    """The fake HR app behind a TcpProxy, served by a gateway of its own."""
    hr = create_hr_app(api_key=HR_API_KEY)
    async with serve(hr) as url:
        api = URL(url)
        proxy = TcpProxy((str(api.host), int(api.port or 80)))
        await proxy.start()
        monkeypatch.setenv("HR_API_KEY", HR_API_KEY)
        mapping = hr_mapping(tmp_path, f"http://127.0.0.1:{proxy.port}/api", timeout=timeout)
        data_dir = tmp_path / "data"
        settings = GatewaySettings(mappings=[mapping], data_dir=data_dir, extra_tokens={"hr": [SecretStr(TOKEN)]})
        client = await aiohttp_client(create_app(settings))
        try:
            yield HrGateway(hr[HR_STATE], proxy, Scim(client, TOKEN, HR_BASE), client, data_dir)
        finally:
            await client.close()
            if proxy.serving:
                await proxy.stop()


PATCH_TITLE = [{"op": "replace", "path": "title", "value": "Changed"}]

# fault -> (status, Retry-After, a phrase of the detail naming it)
REST_FAULTS: dict[str, tuple[int, str | None, str]] = {
    "down": (503, "5", "cannot connect to the app"),
    "slow": (503, "5", "did not answer"),
    "5xx": (503, "5", "HTTP 500"),
    "429": (503, "120", "HTTP 429"),
    "html": (502, None, "HTML"),
    "cut-short-json": (502, None, "cut short"),
}
# op -> the app call its fault is scripted on (method, path regex after /api)
REST_CALLS = {
    "create": ("POST", "/users"),
    "patch": ("PATCH", r"/users/\d+"),
    "delete": ("DELETE", r"/users/\d+"),
    "get": ("GET", r"/users/\d+"),
}


def script_fault(state: HrState, fault: str, method: str, path: str) -> None:
    if fault == "slow":  # past the connector's timeout; then it fails, so the app never does the write
        state.fault(method, path, status=503, delay=1.0)
    elif fault == "5xx":
        state.fault(method, path, status=500, body='{"error": "database is down"}')
    elif fault == "429":
        state.fault(method, path, status=429, body='{"error": "slow down"}', headers={"Retry-After": "120"})
    elif fault == "html":
        state.fault(method, path, status=200, body="<html><body><h1>Sign in</h1></body></html>", content_type="text/html")
    elif fault == "cut-short-json":
        state.fault(method, path, status=200, body='{"id": 7, "login": "trunc')


async def rest_op(scim: Scim, op: str, rid: str, login: str) -> tuple[Any, Any]:
    if op == "create":
        return await scim.post("/Users", entra_user(login, "New", "Comer"))
    if op == "patch":
        return await scim.patch(f"/Users/{rid}", PATCH_TITLE)
    if op == "delete":
        return await scim.delete(f"/Users/{rid}")
    return await scim.get(f"/Users/{rid}")


@pytest.mark.parametrize("fault", list(REST_FAULTS))
async def test_a_rest_app_fault_is_the_right_scim_error_and_records_nothing(
    fault: str, aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    status, retry_after, phrase = REST_FAULTS[fault]
    async with hr_gateway(aiohttp_client, tmp_path, monkeypatch, timeout=0.5 if fault == "slow" else 5.0) as hr:
        resp, kept = await hr.scim.post("/Users", entra_user("kept@contoso.com", "Kept", "Safe"))
        assert resp.status == 201, kept
        if fault == "down":
            await hr.proxy.stop()
        for op, (method, path) in REST_CALLS.items():
            what = f"{fault} on {op}"
            if fault != "down":
                script_fault(hr.state, fault, method, path)
            store_before, app_before = hr.rows(), copy.deepcopy(hr.state.users)
            resp, data = await rest_op(hr.scim, op, kept["id"], "new.comer@contoso.com")
            assert_scim_error(resp, data, status, what)
            if fault == "429":  # the first answers the app's 429; the next are refused while its Retry-After runs
                assert 110 <= int(resp.headers["Retry-After"]) <= 120, what
            else:
                assert resp.headers.get("Retry-After") == retry_after, what
            assert phrase in data["detail"], (what, data["detail"])
            assert hr.state.users == app_before, what
            assert_nothing_recorded(store_before, hr.rows(), what)
            hr.state.faults.clear()
        # The app is back: nothing was lost, nothing half-done; the IdP's retries go through.
        if not hr.proxy.serving:
            await hr.proxy.start()
        if fault == "429":  # past the app's Retry-After, as the IdP's retry would be
            breaker = hr.client.app[APPS]["hr"].provisioner.breaker
            breaker.clock = lambda: time.monotonic() + 121
        resp, got = await hr.scim.get(f"/Users/{kept['id']}")
        assert (resp.status, got["title"]) == (200, "Engineer"), got
        resp, created = await hr.scim.post("/Users", entra_user("new.comer@contoso.com", "New", "Comer"))
        assert resp.status == 201, created
        assert sorted(u["login"] for u in hr.state.users.values()) == ["kept@contoso.com", "new.comer@contoso.com"]
        assert await hr.client.app[APPS]["hr"].provisioner.store.pending("hr") == []


async def test_a_create_that_times_out_but_lands_late_is_adopted_by_the_idps_lookup(
    aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The app was only slow: it made the record after the gateway gave up (503, claim aborted). Entra's retry looks the
    user up first; the record is adopted there, so the retry finds it instead of a duplicate or a 409."""
    async with hr_gateway(aiohttp_client, tmp_path, monkeypatch, timeout=0.3) as hr:
        hr.state.fault("POST", "/users", status=None, delay=1.0, late=True)  # creates it at once, answers too late
        resp, data = await hr.scim.post("/Users", entra_user("late@contoso.com", "Late", "Comer"))
        assert_scim_error(resp, data, 503, "late create")
        assert "did not answer" in data["detail"]
        assert hr.state.user_by_login("late@contoso.com") is not None
        assert hr.rows()["resources"] == [] and [e["state"] for e in hr.rows()["journal"]] == ["aborted"]
        resp, found = await hr.scim.get('/Users?filter=userName eq "late@contoso.com"')
        assert (resp.status, found["totalResults"]) == (200, 1), found
        assert len(hr.state.users) == 1


# ---------------------------------------------------------------- the SQL app (legacy PostgreSQL)


@pytest.fixture(scope="module")
def legacy_pg_database() -> Iterator[str]:
    """One database with the legacy example's schema for the module (each test uses its own account names)."""

    async def create() -> str:
        name = await create_pg_database()
        await load_schema("postgresql", name, (ROOT / "mappings" / "sql" / "legacy_pg.sql").read_text("utf-8"))
        return name

    name = asyncio.run(create())
    yield name
    asyncio.run(drop_pg_database(name))


@dataclass
class PgGateway:
    database: str
    proxy: TcpProxy
    scim: Scim
    client: TestClient
    data_dir: Path

    def rows(self) -> dict[str, list[dict[str, Any]]]:
        return store_rows(self.data_dir)

    async def person(self, login: str) -> list[tuple[Any, ...]]:
        """The person's row and e-mail rows, read straight from the database (not through the proxy)."""
        dsn = f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{self.database}"
        return await read_rows(
            dsn,
            "SELECT p.*, e.email_type, e.email_address FROM hr_person p LEFT JOIN hr_person_email e USING (person_id)"
            " WHERE lower(p.account_name) = lower(:login) ORDER BY p.person_id, e.email_type",
            login=login,
        )


@asynccontextmanager
async def pg_gateway(aiohttp_client: Any, tmp_path: Path, database: str, *, timeout: float = 2.0) -> AsyncIterator[PgGateway]:
    proxy = TcpProxy((PG_HOST, PG_PORT))
    await proxy.start()
    data_dir = tmp_path / "data"
    settings = GatewaySettings(
        mappings=[pg_mapping(tmp_path, database, proxy.port, timeout=timeout)],
        data_dir=data_dir,
        extra_tokens={"legacy_pg": [SecretStr(TOKEN)]},
    )
    client = await aiohttp_client(create_app(settings))
    try:
        yield PgGateway(database, proxy, Scim(client, TOKEN, PG_BASE), client, data_dir)
    finally:
        await client.close()
        if proxy.serving:
            await proxy.stop()


@asynccontextmanager
async def pg_session(database: str) -> AsyncIterator[Any]:
    """A connection of another client of the legacy database (asyncpg), straight to the server."""
    import asyncpg

    conn = await asyncpg.connect(f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}")
    try:
        yield conn
    finally:
        await conn.close()


# fault -> (the ops it applies to, a phrase of the detail naming it)
SQL_FAULTS: dict[str, tuple[tuple[str, ...], str]] = {
    "down": (("create", "patch", "delete", "get"), "unreachable"),
    "slow": (("create", "patch", "delete", "get"), "unreachable: TimeoutError"),  # connecting hangs past the timeout
    "locked": (("create", "patch", "delete", "get"), "lock timeout"),  # another client holds the table
    "failing": (("create", "patch", "delete"), "the database failed"),  # the server fails the statement (XX000)
}


@pytest.mark.parametrize("fault", list(SQL_FAULTS))
async def test_a_sql_app_fault_is_503_and_records_nothing(
    fault: str, aiohttp_client: Any, tmp_path: Path, legacy_pg_database: str
) -> None:
    ops, phrase = SQL_FAULTS[fault]
    tag = uuid.uuid4().hex[:8]
    kept_login, new_login = f"kept-{tag}@contoso.com", f"new-{tag}@contoso.com"
    async with (
        pg_gateway(aiohttp_client, tmp_path, legacy_pg_database, timeout=0.5) as pg,
        pg_session(legacy_pg_database) as other,
    ):
        resp, kept = await pg.scim.post("/Users", entra_user(kept_login, "Kept", "Safe"))
        assert resp.status == 201, kept
        app_before = await pg.person(kept_login)
        hole: BlackHole | None = None
        if fault in ("down", "slow"):
            await pg.proxy.stop()  # also cuts the pool's connections
        if fault == "slow":
            hole = BlackHole(pg.proxy.port)
            await hole.start()
        if fault == "locked":
            await other.execute("BEGIN; LOCK TABLE hr_person IN ACCESS EXCLUSIVE MODE")
        if fault == "failing":
            await other.execute(
                "CREATE FUNCTION fail_writes() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                " RAISE EXCEPTION 'disk failure' USING ERRCODE = 'XX000'; END $$;"
                " CREATE TRIGGER fail_writes BEFORE INSERT OR UPDATE OR DELETE ON hr_person"
                " FOR EACH ROW EXECUTE FUNCTION fail_writes()"
            )
        try:
            for op in ops:
                what = f"{fault} on {op}"
                store_before = pg.rows()
                resp, data = await rest_op(pg.scim, op, kept["id"], new_login)
                assert_scim_error(resp, data, 503, what)
                assert resp.headers.get("Retry-After") == "5", what
                assert phrase in data["detail"], (what, data["detail"])
                assert_nothing_recorded(store_before, pg.rows(), what)
            if hole is not None:
                assert hole.accepted > 0  # the calls did reach the hanging "database"
        finally:
            if fault == "locked":
                await other.execute("ROLLBACK")
            if fault == "failing":
                await other.execute("DROP TRIGGER fail_writes ON hr_person; DROP FUNCTION fail_writes()")
            if hole is not None:
                await hole.stop()
        assert await pg.person(kept_login) == app_before and await pg.person(new_login) == []
        if not pg.proxy.serving:
            await pg.proxy.start()
        # The database is back: the pool heals; nothing was lost or half-done; the IdP's retries go through.
        resp, got = await pg.scim.get(f"/Users/{kept['id']}")
        assert (resp.status, got["title"]) == (200, "Engineer"), got
        resp, created = await pg.scim.post("/Users", entra_user(new_login, "New", "Comer"))
        assert resp.status == 201, created
        assert len(await pg.person(new_login)) == 1


# ---------------------------------------------------------------- an app unreachable at start-up


def demo_and_pg_settings(data_dir: Path, mapping: Path) -> GatewaySettings:
    ensure_demo_database(data_dir)
    return GatewaySettings(
        mappings=[demo_mapping_path(), mapping],
        data_dir=data_dir,
        extra_tokens={"demo": [SecretStr(TOKEN)], "legacy_pg": [SecretStr(TOKEN)]},
    )


async def test_an_app_unreachable_at_start_answers_503_until_it_opens_and_the_others_serve(
    aiohttp_client: Any, tmp_path: Path, legacy_pg_database: str
) -> None:
    data_dir = tmp_path / "data"
    proxy = TcpProxy((PG_HOST, PG_PORT))  # not started: the database refuses connections
    mapping = pg_mapping(tmp_path, legacy_pg_database, proxy.port, breaker={"reset_after": 0.1, "max_reset_after": 0.4})
    # A write a crash left unsettled: the app never got it, so recovery rolls it back, once it can ask the app.
    from gateway.store.sqlite import SqliteStore

    store = SqliteStore(data_dir / "gateway.db")
    data_dir.mkdir(parents=True)
    await store.open()
    lost = f"lost-{uuid.uuid4().hex[:8]}@contoso.com"
    await store.begin_create("legacy_pg", "User", str(uuid.uuid4()), lost, {"userName": lost}, "2024-01-01T00:00:00.000000Z")
    await store.close()

    client = await aiohttp_client(create_app(demo_and_pg_settings(data_dir, mapping)))
    try:
        runtime: AppRuntime = client.app[APPS]["legacy_pg"]
        assert not runtime.serving.is_set()
        demo, pg = Scim(client, TOKEN, BASE), Scim(client, TOKEN, PG_BASE)
        # The other app serves.
        resp, data = await demo.post("/Users", user_body("demo.user"))
        assert resp.status == 201, data
        # This one answers every request that needs the app with 503 naming the app and the reason ...
        for method, path, body in (
            ("GET", "/Users", None),
            ("GET", "/Users/0d6f6f0e-0000-0000-0000-000000000000", None),
            ("POST", "/Users", entra_user("early@contoso.com", "Early", "Bird")),
            ("POST", "/Bulk", {"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"], "Operations": []}),
        ):
            before = store_rows(data_dir)
            resp, data = await pg.request(method, path, body)
            assert_scim_error(resp, data, 503, f"{method} {path}")
            assert int(resp.headers["Retry-After"]) >= 1
            assert re.match(
                r"app legacy_pg is unavailable: not connected \(the database is unreachable: \w+\); next attempt in \d+ s$",
                data["detail"],
            ), data
            assert store_rows(data_dir) == before  # refused before anything: not even a claim
        # ... but discovery, from its mapping.
        for path in ("/ServiceProviderConfig", "/ResourceTypes", "/Schemas"):
            resp, data = await pg.get(path)
            assert resp.status == 200, (path, data)
        resp, _ = await Scim(client, "wrong-token", PG_BASE).get("/Users")
        assert resp.status == 401  # still the app's own tokens
        assert [e.resource_id for e in await runtime.provisioner.store.pending("legacy_pg")] != []

        await proxy.start()  # the database is back
        async with asyncio.timeout(20):  # a guard against a hang: the opener retries every 0.1 .. 0.4 s
            await runtime.serving.wait()
        # Start-up recovery ran once it opened: the write the app never got is rolled back.
        assert await runtime.provisioner.store.pending("legacy_pg") == []
        assert [e["detail"] for e in store_rows(data_dir)["journal"] if e["app"] == "legacy_pg"] == [
            "recovery: the app has no such record"
        ]
        resp, created = await pg.post("/Users", entra_user("early@contoso.com", "Early", "Bird"))
        assert resp.status == 201, created
        resp, listed = await pg.get("/Users")
        assert (resp.status, listed["totalResults"]) == (200, 1), listed
    finally:
        await client.close()
        if proxy.serving:
            await proxy.stop()


def test_serve_keeps_running_with_an_unreachable_app_and_prints_its_banner_after_opening(
    tmp_path: Path, legacy_pg_database: str
) -> None:
    mapping = pg_mapping(tmp_path, legacy_pg_database, free_port(), breaker={"reset_after": 60})
    gateway = LiveGateway(tmp_path / "live", app="legacy_pg")
    gateway.start("--config", str(mapping))
    try:
        request = urllib.request.Request(f"{gateway.base_url}/Users", headers={"Authorization": f"Bearer {TOKEN}"})
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=10)
        assert caught.value.code == 503 and caught.value.headers["Retry-After"]
        detail = json.loads(caught.value.read())["detail"]
        assert detail.startswith("app legacy_pg is unavailable: not connected (the database is unreachable"), detail
        request = urllib.request.Request(
            f"{gateway.base_url}/ServiceProviderConfig", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 200
        log = gateway.log.read_text()
        # The banner comes after the app's connector was tried, and says what is wrong.
        assert log.index("cannot be reached") < log.index("SCIM base URL:") < log.index("Try:"), log
        assert "Not connected: the database is unreachable" in log
    finally:
        gateway.stop()
