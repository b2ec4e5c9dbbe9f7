"""The hub with real processes: a live gateway serving /hub/scim/v2 in front of two apps, the demo SQLite app
and the REST hr fake running as its own process. Each app's state is read directly (the demo's database, the
fake's own API), never through the gateway.

The hub file: demo gets the members of the hub group Engineering and everyone in Sales (leaving: delete);
hr gets everyone (leaving: deactivate), every group pushed to both.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import yaml

from gateway.demo import demo_mapping_path, ensure_demo_database
from tests.conftest import ENTERPRISE_URN, GROUP_URN, PATCH_URN, LiveGateway, free_port
from tests.fakes.serve import HR_API_KEY
from tests.idp import entra_group, entra_user, okta_user

ROOT = Path(__file__).resolve().parents[2]
HUB_TOKEN = "hub-token-0123456789abcdef"
ADMIN_TOKEN = "hub-admin-token-0123456789"
T = TypeVar("T")

HUB_FILE = {
    "auth": {"bearer": [{"env": "HUB_SCIM_TOKEN"}]},
    "delivery": {"concurrency": 4, "max_attempts": 1000, "backoff": 0.2, "max_backoff": 1.0, "poll_interval": 0.2},
    "apps": {
        "demo": {
            "users": {"member_of": ["Engineering"], "when": "user.department == 'Sales'"},
            "groups": "all",
            "leave": "delete",
        },
        "hr": {"users": {"everyone": True}, "groups": "all", "leave": "deactivate"},
    },
}


class HrProcess:
    """The hr fake as its own process, read over its API; SIGSTOP / SIGCONT stop and resume it."""

    def __init__(self, root: Path, *extra: str) -> None:
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.log = root / "hr-fake.log"
        env = {k: v for k, v in os.environ.items() if k not in ("SCIM_GATEWAY_TOKEN", "SCIM_GATEWAY_STORE")}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.fakes.serve", "hr", str(self.port), *extra],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the hr fake stopped:\n{self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the hr fake did not start")

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.resume()
        self.proc.terminate()
        self.proc.wait(timeout=10)

    async def get(self, path: str) -> Any:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.api}{path}", headers={"X-API-Key": HR_API_KEY}, params={"per_page": "100"}) as resp,
        ):
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def users(self) -> list[dict[str, Any]]:
        return list((await self.get("/users"))["data"])

    async def user(self, login: str) -> dict[str, Any] | None:
        found = [u for u in await self.users() if u["login"].lower() == login.lower()]
        assert len(found) <= 1, f"{login} is in the hr app {len(found)} times"
        return found[0] if found else None

    async def group_members(self, name: str) -> set[str] | None:
        groups = [g for g in (await self.get("/groups"))["data"] if g["name"] == name]
        if not groups:
            return None
        members = (await self.get(f"/groups/{groups[0]['id']}/members"))["data"]
        by_id = {u["id"]: u["login"] for u in await self.users()}
        return {by_id[m["user_id"]] for m in members}


class Demo:
    """The demo app's own database, read directly."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path)
        db.row_factory = sqlite3.Row
        return db

    def employee(self, login: str) -> dict[str, Any] | None:
        with self._db() as db:
            rows = db.execute("SELECT * FROM employees WHERE login = ? COLLATE NOCASE", (login,)).fetchall()
        assert len(rows) <= 1, f"{login} is in the demo app {len(rows)} times"
        return dict(rows[0]) if rows else None

    def team_logins(self, name: str) -> set[str] | None:
        with self._db() as db:
            team = db.execute("SELECT team_id FROM teams WHERE team_name = ?", (name,)).fetchone()
            if team is None:
                return None
            rows = db.execute(
                "SELECT e.login FROM team_members m JOIN employees e ON e.emp_no = m.emp_no WHERE m.team_id = ?", (team[0],)
            ).fetchall()
        return {r[0] for r in rows}


class Stack:
    def __init__(self, root: Path, hr: HrProcess, gateway: LiveGateway, demo: Demo) -> None:
        self.root = root
        self.hr = hr
        self.gateway = gateway
        self.demo = demo

    @property
    def hub(self) -> str:
        return f"{self.gateway.url}/hub/scim/v2"

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any, float]:
        """One hub request: its status, JSON body and how long the hub took to answer."""
        headers = {"Authorization": f"Bearer {HUB_TOKEN}", "Content-Type": "application/scim+json"}
        started = time.monotonic()
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, f"{self.hub}{path}", json=body, headers=headers) as resp,
        ):
            text = await resp.text()
            took = time.monotonic() - started
            assert resp.content_type == "application/scim+json" or resp.status == 204, text
            return resp.status, json.loads(text) if text else None, took

    async def create_user(self, user_name: str, department: str = "R&D", **kw: Any) -> str:
        given, family = user_name.split("@")[0].split(".")
        status, body, _ = await self.call(
            "POST", "/Users", entra_user(user_name, given.title(), family.title(), department=department, **kw)
        )
        assert status == 201, body
        return str(body["id"])

    async def patch(self, path: str, *operations: dict[str, Any]) -> tuple[int, Any, float]:
        return await self.call("PATCH", path, {"schemas": [PATCH_URN], "Operations": list(operations)})

    async def status(self, user: str | None = None) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{self.gateway.url}/hub/status",
                params={"user": user} if user else {},
                headers={"Authorization": f"Bearer {HUB_TOKEN}"},
            ) as resp,
        ):
            assert resp.status == 200, await resp.text()
            doc: dict[str, Any] = await resp.json()
            return doc


async def eventually(check: Callable[[], Awaitable[T]], what: str, timeout: float = 20.0) -> T:
    """`check`'s value once it returns without an AssertionError (delivery is asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await check()
        except AssertionError as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"not reached within {timeout:g} s: {what}: {exc}") from None
            await asyncio.sleep(0.1)


def write_mappings(root: Path) -> tuple[Path, Path]:
    """The demo mapping as shipped; the hr one without its own IdP token (the hub feeds it), quick to give up."""
    hr = yaml.safe_load((ROOT / "mappings" / "hr_rest.yaml").read_text())
    hr.pop("auth")
    hr["connector"].update(timeout=2, retries=0)
    hr["breaker"] = {"failures": 2, "reset_after": 0.5, "max_reset_after": 1.0}
    hr_path = root / "hr.yaml"
    hr_path.write_text(yaml.safe_dump(hr, sort_keys=False))
    return demo_mapping_path(), hr_path


def start_stack(root: Path, *hr_args: str, store_url: str | None = None) -> tuple[Stack, Callable[[], None]]:
    """hr as its own process, and a gateway serving the hub in front of it and demo (on the SQLite store, or the
    PostgreSQL one at `store_url`); and how to start it again."""
    ensure_demo_database(root / "data")
    demo_yaml, hr_yaml = write_mappings(root)
    hub_yaml = root / "hub.yaml"
    hub_yaml.write_text(yaml.safe_dump(HUB_FILE))
    hr = HrProcess(root, *hr_args)
    env = {"HR_API_URL": hr.api, "HR_API_KEY": HR_API_KEY, "HUB_SCIM_TOKEN": HUB_TOKEN, "SCIM_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}
    if store_url is not None:
        env["SCIM_GATEWAY_STORE"] = store_url
    gateway = LiveGateway(root, token="", env=env)

    def start() -> None:
        # A sweep a second: what a kill left in an app's journal is settled soon, not after twice the default 30 s.
        gateway.start("--config", str(demo_yaml), "--config", str(hr_yaml), "--hub", str(hub_yaml), "--recovery-interval", "1")

    try:
        start()
    except BaseException:
        hr.close()
        raise
    return Stack(root, hr, gateway, Demo(root / "data" / "demo.db")), start


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The same live tests on both stores."""
    from tests.services import create_pg_database, drop_pg_database, pg_url

    database = asyncio.run(create_pg_database()) if request.param == "postgresql" else None
    made, _start = start_stack(tmp_path_factory.mktemp("hub"), store_url=pg_url(database) if database else None)
    try:
        yield made
    finally:
        made.gateway.stop()
        made.hr.close()
        if database is not None:
            asyncio.run(drop_pg_database(database))


@pytest.fixture
async def hub(stack: Stack) -> AsyncIterator[Stack]:
    yield stack
    stack.hr.resume()  # a failed test must not leave the fake stopped for the next


# ---------------------------------------------------------------- the Entra sequence


async def test_an_entra_sequence_against_the_hub_reaches_each_app_by_its_rules(hub: Stack) -> None:
    demo, hr = hub.demo, hub.hr
    mia = await hub.create_user("mia.boss@example.com", department="Sales")
    eve = await hub.create_user("eve.dev@example.com", manager=mia)  # Entra: manager as a plain id string

    # mia: in Sales, so in demo by the `when` rule; everyone is in hr. eve (R&D, no group yet): hr only.
    async def first() -> None:
        assert demo.employee("mia.boss@example.com") is not None
        assert (await hr.user("mia.boss@example.com")) is not None
        assert (await hr.user("eve.dev@example.com")) is not None

    await eventually(first, "mia in demo and hr, eve in hr")
    assert demo.employee("eve.dev@example.com") is None

    # Engineering with eve: she is assigned to demo now, her manager translated to demo's own id for mia.
    status, group, _ = await hub.call("POST", "/Groups", entra_group("Engineering", [eve]))
    assert status == 201, group

    async def joined() -> None:
        row = demo.employee("eve.dev@example.com")
        assert row is not None and row["mgr_emp_no"] == demo.employee("mia.boss@example.com")["emp_no"]  # type: ignore[index]
        assert demo.team_logins("Engineering") == {"eve.dev@example.com"}
        assert await hr.group_members("Engineering") == {"eve.dev@example.com"}

    await eventually(joined, "eve in demo with her manager, Engineering in both apps with eve")

    # Entra's path-less Replace with dotted keys, then its deactivation ("False" as a string).
    status, body, _ = await hub.patch(f"/Users/{eve}", {"op": "Replace", "value": {"title": "Lead", "name.givenName": "Evie"}})
    assert status == 200, body
    status, body, _ = await hub.patch(f"/Users/{eve}", {"op": "Replace", "path": "active", "value": "False"})
    assert status == 200 and body["active"] is False, body

    async def changed() -> None:
        row = demo.employee("eve.dev@example.com")
        assert row is not None and (row["job_title"], row["first_nm"], row["status"]) == ("Lead", "Evie", "I")
        user = await hr.user("eve.dev@example.com")
        assert user is not None and (user["title"], user["first_name"], user["status"]) == ("Lead", "Evie", "disabled")

    await eventually(changed, "eve's title, name and deactivation in both apps")

    # Entra's Remove of one member by value list: eve leaves Engineering, so she leaves demo (leave: delete);
    # hr keeps her (everyone), out of the group.
    status, body, _ = await hub.patch(f"/Groups/{group['id']}", {"op": "Remove", "path": "members", "value": [{"value": eve}]})
    assert status == 200, body

    async def left() -> None:
        assert demo.employee("eve.dev@example.com") is None
        assert demo.team_logins("Engineering") == set()
        assert (await hr.user("eve.dev@example.com")) is not None
        assert await hr.group_members("Engineering") == set()

    await eventually(left, "eve out of demo, out of hr's Engineering")

    # A delete in the hub: gone from every app.
    status, _, _ = await hub.call("DELETE", f"/Users/{mia}")
    assert status == 204

    async def deleted() -> None:
        assert demo.employee("mia.boss@example.com") is None
        assert (await hr.user("mia.boss@example.com")) is None

    await eventually(deleted, "mia deleted in demo and hr")

    async def shown() -> None:  # mia's delete drops her from eve's manager in the hub: eve is delivered again
        doc = await hub.status("eve.dev@example.com")
        assert [r["name"] for r in doc["resources"]] == ["eve.dev@example.com"]
        assert {app: s["state"] for app, s in doc["resources"][0]["apps"].items()} == {"demo": "delivered", "hr": "delivered"}

    await eventually(shown, "eve shown delivered to both apps by /hub/status")


async def test_assignment_by_attribute_follows_a_change_of_department(hub: Stack) -> None:
    uid = await hub.create_user("ray.moves@example.com", department="Support")

    async def in_hr() -> None:
        assert (await hub.hr.user("ray.moves@example.com")) is not None

    await eventually(in_hr, "ray in hr")
    assert hub.demo.employee("ray.moves@example.com") is None
    # Entra's path-less PATCH with a URN key.
    status, body, _ = await hub.patch(f"/Users/{uid}", {"op": "replace", "value": {f"{ENTERPRISE_URN}:department": "Sales"}})
    assert status == 200, body

    async def in_demo() -> None:
        row = hub.demo.employee("ray.moves@example.com")
        assert row is not None and row["dept"] == "Sales"

    await eventually(in_demo, "ray in demo once in Sales")
    status, body, _ = await hub.patch(f"/Users/{uid}", {"op": "replace", "path": f"{ENTERPRISE_URN}:department", "value": "Ops"})
    assert status == 200, body

    async def out_of_demo() -> None:
        assert hub.demo.employee("ray.moves@example.com") is None
        user = await hub.hr.user("ray.moves@example.com")
        assert user is not None and user["department"] == "Ops" and user["status"] == "enabled"

    await eventually(out_of_demo, "ray out of demo (leave: delete), still in hr")


async def test_a_reference_waits_until_its_target_is_in_the_app(hub: Stack) -> None:
    """A manager, a group member not (yet) in an app: left out there, and sent once the target is delivered."""
    demo = hub.demo
    boss = await hub.create_user("wes.waits@example.com", department="Finance")  # not in demo
    report = await hub.create_user("rita.report@example.com", department="Sales", manager=boss)  # in demo
    status, group, _ = await hub.call("POST", "/Groups", entra_group("Waiting Room", [boss, report]))
    assert status == 201, group

    async def without_boss() -> None:
        row = demo.employee("rita.report@example.com")
        assert row is not None and row["mgr_emp_no"] is None  # her manager has no account in demo yet
        assert demo.team_logins("Waiting Room") == {"rita.report@example.com"}

    await eventually(without_boss, "rita in demo without her manager; the group with her only")
    assert demo.employee("wes.waits@example.com") is None
    status, body, _ = await hub.patch(
        f"/Users/{boss}", {"op": "replace", "path": f"{ENTERPRISE_URN}:department", "value": "Sales"}
    )
    assert status == 200, body

    async def with_boss() -> None:
        boss_row = demo.employee("wes.waits@example.com")
        assert boss_row is not None
        row = demo.employee("rita.report@example.com")
        assert row is not None and row["mgr_emp_no"] == boss_row["emp_no"]
        assert demo.team_logins("Waiting Room") == {"rita.report@example.com", "wes.waits@example.com"}

    await eventually(with_boss, "wes in demo: rita's manager and the group's member there too")


async def test_an_app_stopped_while_the_idp_writes_gets_every_change_once_when_it_is_back(hub: Stack) -> None:
    hub.hr.pause()
    took: list[float] = []
    ids = {}
    for name in ("ann.one", "bo.two", "cy.three", "di.four"):
        user_name = f"{name}@example.com"
        given, family = name.split(".")
        status, body, seconds = await hub.call(
            "POST", "/Users", entra_user(user_name, given.title(), family.title(), department="Sales" if name < "c" else "R&D")
        )
        assert status == 201, body
        ids[name] = body["id"]
        took.append(seconds)
    for title in ("First", "Second", "Third"):
        status, body, seconds = await hub.patch(f"/Users/{ids['ann.one']}", {"op": "replace", "path": "title", "value": title})
        assert status == 200, body
        took.append(seconds)
    status, _, seconds = await hub.call("DELETE", f"/Users/{ids['di.four']}")  # never reaches hr
    assert status == 204
    took.append(seconds)
    # The hub answers at once, whatever the app does: it never waits on one.
    assert max(took) < 1.0, took

    # The other app is not held up: demo has its two (Sales) users, at their latest state, while hr is stopped.
    async def demo_meanwhile() -> None:
        row = hub.demo.employee("ann.one@example.com")
        assert row is not None and row["job_title"] == "Third"
        assert hub.demo.employee("bo.two@example.com") is not None

    await eventually(demo_meanwhile, "demo up to date while hr is stopped", timeout=10)
    doc = await hub.status("ann.one@example.com")
    assert doc["resources"][0]["apps"]["hr"]["state"] == "pending"
    await asyncio.sleep(6)  # hr down a while: calls time out, its breaker opens, entries wait for its probes

    hub.hr.resume()

    async def arrived() -> None:
        ann = await hub.hr.user("ann.one@example.com")  # user() also asserts: at most once
        assert ann is not None and ann["title"] == "Third"
        for name in ("bo.two", "cy.three"):
            assert (await hub.hr.user(f"{name}@example.com")) is not None
        assert (await hub.hr.user("di.four@example.com")) is None
        for name in ("ann.one", "bo.two", "cy.three"):
            state = (await hub.status(f"{name}@example.com"))["resources"][0]["apps"]["hr"]["state"]
            assert state == "delivered", (name, state)

    await eventually(arrived, "every change in hr, once, at its latest state", timeout=30)
    logins = [u["login"] for u in await hub.hr.users()]
    assert len(logins) == len(set(logins)), logins


async def test_the_hub_s_backlog_in_the_metrics_the_status_command_and_the_admin_page(hub: Stack) -> None:
    """Issue 15's views of the hub: while hr is stopped, a user waits for it in /metrics (outbox entries, lag), in
    `scim-gateway status` and on the admin page (the hub's table, the person's deliveries); then it is delivered."""
    from prometheus_client.parser import text_string_to_metric_families

    async def scrape() -> dict[tuple[str, ...], float]:
        async with aiohttp.ClientSession() as session, session.get(f"{hub.gateway.url}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
        found: dict[tuple[str, ...], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.startswith("scim_gateway_hub_"):
                    found[(sample.name, *sorted(sample.labels.values()))] = sample.value
        return found

    async def page(path: str) -> str:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with aiohttp.ClientSession() as session, session.get(f"{hub.gateway.url}{path}", headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.text()

    hub.hr.pause()
    user = await hub.create_user("mo.metrics@example.com", department="R&D")  # hr takes everyone; demo does not

    async def waiting() -> dict[tuple[str, ...], float]:
        found = await scrape()
        assert found[("scim_gateway_hub_outbox_entries", "hr", "pending")] >= 1, found
        assert found[("scim_gateway_hub_delivery_lag_seconds", "hr")] > 0.5, found
        return found

    try:
        await eventually(waiting, "hr's backlog in /metrics while hr is stopped", timeout=15)
        run = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "gateway.cli", "status", "--url", hub.gateway.url, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode in (0, 1), run.stderr
        status = json.loads(run.stdout)
        assert status["apps"]["hr"]["hub"]["pending"] >= 1, status
        assert status["apps"]["demo"]["hub"]["dead"] == 0, status
        overview = await page("/admin")
        assert 'id="hub-app-hr"' in overview and 'id="hub-app-demo"' in overview
        person = await page("/admin/people?who=mo.metrics@example.com")
        assert "Their deliveries from the hub" in person and 'id="delivery-hr"' in person
        assert "pending" in person.split('id="delivery-hr"')[1].split("</tr>")[0]
        doc = json.loads(await page("/admin/status.json"))
        assert any(a["name"] == "hr" and a["pending"] >= 1 for a in doc["hub"]["apps"]), doc["hub"]
    finally:
        hub.hr.resume()

    async def delivered() -> None:
        found = await scrape()
        assert found[("scim_gateway_hub_outbox_entries", "hr", "pending")] == 0, found
        assert found[("scim_gateway_hub_delivery_lag_seconds", "hr")] == 0, found
        person = await page(f"/admin/people?who={user}")
        assert "delivered" in person.split('id="delivery-hr"')[1].split("</tr>")[0]

    await eventually(delivered, "hr's backlog drained once hr is back", timeout=30)


async def test_an_okta_sequence_and_a_bulk_request_against_the_hub(hub: Stack) -> None:
    hr, demo = hub.hr, hub.demo
    # Okta: core schema only, groups [], a password (the hub keeps none: see docs/hub.md), PUT for updates.
    status, olga, _ = await hub.call("POST", "/Users", okta_user("olga.okta@example.com", "Olga", "Okta"))
    assert status == 201, olga
    status, found, _ = await hub.call("GET", "/Users?filter=userName%20eq%20%22olga.okta%40example.com%22")
    assert status == 200 and found["totalResults"] == 1
    replaced = okta_user("olga.okta@example.com", "Olga", "Renamed", password=None) | {"id": olga["id"]}
    status, body, _ = await hub.call("PUT", f"/Users/{olga['id']}", replaced)
    assert status == 200 and body["name"]["familyName"] == "Renamed", body
    # Okta's group push: create empty, add members by PATCH, rename by a path-less replace with the id.
    status, group, _ = await hub.call("POST", "/Groups", {"schemas": [GROUP_URN], "displayName": "Platform", "members": []})
    assert status == 201, group
    status, body, _ = await hub.patch(
        f"/Groups/{group['id']}", {"op": "add", "path": "members", "value": [{"value": olga["id"]}]}
    )
    assert status == 200, body
    status, body, _ = await hub.patch(
        f"/Groups/{group['id']}", {"op": "replace", "value": {"id": group["id"], "displayName": "Platform Team"}}
    )
    assert status == 200 and body["displayName"] == "Platform Team", body
    status, body, _ = await hub.patch(f"/Users/{olga['id']}", {"op": "replace", "value": {"active": False}})
    assert status == 200, body
    # Bulk, as some IdPs and migrations send it.
    bulk = {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"],
        "Operations": [
            {"method": "POST", "path": "/Users", "bulkId": f"b{i}", "data": okta_user(f"bulk.u{i}@example.com", password=None)}
            for i in range(3)
        ],
    }
    status, body, _ = await hub.call("POST", "/Bulk", bulk)
    assert status == 200 and [op["status"] for op in body["Operations"]] == ["201"] * 3, body

    async def delivered() -> None:
        user = await hr.user("olga.okta@example.com")
        assert user is not None and (user["last_name"], user["status"]) == ("Renamed", "disabled")
        assert await hr.group_members("Platform Team") == {"olga.okta@example.com"}
        assert await hr.group_members("Platform") is None
        assert demo.team_logins("Platform Team") == set()  # pushed to demo too; olga is no demo user
        for i in range(3):
            assert (await hr.user(f"bulk.u{i}@example.com")) is not None

    await eventually(delivered, "olga, Platform Team and the bulk users in hr")
    assert demo.employee("olga.okta@example.com") is None


async def test_hub_status_and_sync_from_the_command_line(hub: Stack) -> None:
    """`hub sync` brings back an account deleted in the app behind the hub's back; `hub status` shows it."""
    uid = await hub.create_user("sam.sync@example.com")

    async def in_hr() -> dict[str, Any]:
        user = await hub.hr.user("sam.sync@example.com")
        assert user is not None
        return user

    user = await eventually(in_hr, "sam in hr")
    async with (
        aiohttp.ClientSession() as session,
        session.delete(f"{hub.hr.api}/users/{user['id']}", headers={"X-API-Key": HR_API_KEY}) as resp,
    ):
        assert resp.status in (200, 204)
    assert (await hub.hr.user("sam.sync@example.com")) is None
    data = ["--data-dir", str(hub.root / "data")]
    store = {k: v for k, v in hub.gateway.env.items() if k == "SCIM_GATEWAY_STORE"}
    sync = await run_cli(store, "hub", "sync", "hr", "--hub", str(hub.root / "hub.yaml"), "--wait", "--timeout", "30", *data)
    assert sync.returncode == 0, sync.stdout + sync.stderr
    assert "queued for hr" in sync.stdout and "0 failed" in sync.stdout
    assert (await hub.hr.user("sam.sync@example.com")) is not None
    status = await run_cli(store, "hub", "status", "sam.sync@example.com", *data)
    assert status.returncode == 0, status.stderr
    assert "User sam.sync@example.com" in status.stdout and "hr: delivered" in status.stdout, status.stdout
    as_json = await run_cli(store, "hub", "status", uid, "--json", *data)
    doc = json.loads(as_json.stdout)
    assert doc["resources"][0]["apps"]["hr"]["state"] == "delivered"
    replay = await run_cli(store, "hub", "replay", "hr", *data)
    assert replay.returncode == 0 and "0 dead letter(s)" in replay.stdout, replay.stdout


async def run_cli(store: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    """The command line on the gateway's store (`store`: its SCIM_GATEWAY_STORE, if it has one)."""
    env = {k: v for k, v in os.environ.items() if k not in ("SCIM_GATEWAY_TOKEN", "SCIM_GATEWAY_STORE")} | store
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "gateway.cli", *argv], capture_output=True, text=True, env=env, timeout=60
    )


async def test_the_gateway_killed_during_delivery_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    """SIGKILL at random points while hr's writes are slow (deliveries in flight), restart: every app ends up
    as the hub's directory and its rules say, each account once."""
    rng = random.Random(14)
    made, start = start_stack(tmp_path, "--slow-writes", "0.3")
    expected: dict[str, tuple[str, str]] = {}  # userName -> (department, title)
    try:
        for round_ in range(4):
            for i in range(6):
                name = f"k{round_}.u{i}@example.com"
                department = "Sales" if i % 2 else "R&D"
                uid = await made.create_user(name, department=department)
                expected[name] = (department, "Engineer")
                if i == 3:
                    title = f"T{round_}"
                    status, body, _ = await made.patch(f"/Users/{uid}", {"op": "replace", "path": "title", "value": title})
                    assert status == 200, body
                    expected[name] = (department, title)
            await asyncio.sleep(rng.uniform(0.3, 0.9))  # deliveries in flight: hr takes 0.3 s per write
            proc = made.gateway.proc
            assert proc is not None
            proc.kill()
            proc.wait()
            made.gateway.proc = None
            start()

        async def converged() -> None:
            users = await made.hr.users()
            logins = [u["login"] for u in users]
            assert len(logins) == len(set(logins)), f"duplicates in hr: {logins}"
            assert {u["login"]: u["title"] for u in users} == {n: t for n, (_d, t) in expected.items()}
            for name, (department, title) in expected.items():
                row = made.demo.employee(name)  # also asserts: at most once
                if department == "Sales":
                    assert row is not None and row["job_title"] == title, name
                else:
                    assert row is None, name
            totals = (await made.status())["totals"]
            assert totals["pending"] == 0 and totals["failed"] == 0, totals

        await eventually(converged, "hr and demo as the hub says, after 4 SIGKILLs", timeout=60)
        # The kills did cut deliveries short: leases of a dead run were found (and released) at restarts.
        log = made.gateway.log.read_text()
        assert log.count("delivery lease(s) of an earlier run released") >= 1, log[-3000:]
    finally:
        made.gateway.stop()
        made.hr.close()


async def expected_from_the_hub(stack: Stack) -> dict[str, Any]:
    """What each app must hold, from the hub's own directory (read over /hub/scim/v2) and HUB_FILE's rules."""
    _s, users, _t = await stack.call("GET", "/Users?count=1000")
    _s, groups, _t = await stack.call("GET", "/Groups?count=1000")
    by_id = {u["id"]: u for u in users["Resources"]}
    members = {g["displayName"]: {by_id[m["value"]]["userName"] for m in g.get("members", [])} for g in groups["Resources"]}
    in_demo = {
        u["userName"]
        for u in by_id.values()
        if u.get(ENTERPRISE_URN, {}).get("department") == "Sales" or u["userName"] in members.get("Engineering", set())
    }
    state = {u["userName"]: (u.get("title"), u.get("active", True)) for u in by_id.values()}
    return {
        "hr": ({n: state[n] for n in state}, members),
        "demo": ({n: state[n] for n in in_demo}, {g: m & in_demo for g, m in members.items()}),
    }


async def test_a_random_directory_with_an_app_down_and_the_gateway_killed_ends_as_the_hub_and_its_rules_say(
    tmp_path: Path,
) -> None:
    """What the issue's check does: an IdP provisions into the hub at random while hr is stopped and resumed and the
    gateway is SIGKILLed; then each app is compared with the hub's directory and the rules."""
    rng = random.Random(1414)
    made, start = start_stack(tmp_path)
    users: list[str] = []
    groups: dict[str, str] = {}
    try:
        for step in range(120):
            if step in (30, 80):
                made.hr.pause()
            if step in (55, 100):
                made.hr.resume()
            if step in (45, 90):
                proc = made.gateway.proc
                assert proc is not None
                proc.kill()
                proc.wait()
                made.gateway.proc = None
                await asyncio.to_thread(start)
            roll = rng.random()
            if roll < 0.3 or len(users) < 3:
                department = rng.choice(["Sales", "R&D", "Ops"])
                users.append(await made.create_user(f"r{step}.user@example.com", department=department))
            elif roll < 0.5:
                uid = rng.choice(users)
                op = rng.choice(
                    [
                        {"op": "replace", "path": "title", "value": f"T{step}"},
                        {"op": "Replace", "path": "active", "value": rng.choice(["True", "False"])},
                        {"op": "replace", "path": f"{ENTERPRISE_URN}:department", "value": rng.choice(["Sales", "R&D"])},
                    ]
                )
                status, body, _ = await made.patch(f"/Users/{uid}", op)
                assert status == 200, body
            elif roll < 0.6 and len(groups) < 4:
                name = "Engineering" if "Engineering" not in groups else f"Team {step}"
                status, body, _ = await made.call("POST", "/Groups", entra_group(name, rng.sample(users, 2)))
                assert status == 201, body
                groups[name] = body["id"]
            elif roll < 0.85 and groups:
                gid = groups[rng.choice(sorted(groups))]
                member = rng.choice(users)
                verb = rng.choice(["add", "Remove"])
                value = [{"value": member}]
                status, body, _ = await made.patch(f"/Groups/{gid}", {"op": verb, "path": "members", "value": value})
                assert status == 200, body
            elif len(users) > 5:
                uid = users.pop(rng.randrange(len(users)))
                status, _, _ = await made.call("DELETE", f"/Users/{uid}")
                assert status == 204
        made.hr.resume()
        expected = await expected_from_the_hub(made)

        async def matches() -> None:
            hr_users = await made.hr.users()
            logins = [u["login"] for u in hr_users]
            assert len(logins) == len(set(logins)), "a duplicate account in hr"
            want_users, want_groups = expected["hr"]
            got = {u["login"]: (u["title"], u["status"] == "enabled") for u in hr_users}
            assert got == want_users
            for name, members in want_groups.items():
                assert await made.hr.group_members(name) == members, name
            want_users, want_groups = expected["demo"]
            with made.demo._db() as db:
                rows = db.execute("SELECT login, job_title, status FROM employees").fetchall()
            assert {r[0]: (r[1], r[2] == "A") for r in rows} == want_users
            for name, members in want_groups.items():
                assert made.demo.team_logins(name) == members, name
            totals = (await made.status())["totals"]
            assert totals["pending"] == 0 and totals["failed"] == 0, totals

        await eventually(matches, "every app as the hub and its rules say", timeout=90)
    finally:
        made.gateway.stop()
        made.hr.close()


async def test_two_gateway_processes_on_one_postgresql_store_share_delivery_each_entry_once(tmp_path: Path) -> None:
    """Two processes serve the hub on one PostgreSQL store, the IdP writing to both: every user reaches hr once
    (one POST each, no 409 from a second delivery), and each process delivered a share (SKIP LOCKED)."""
    from aiohttp.test_utils import TestServer

    from tests.fakes.hr_app import HR_STATE, create_hr_app
    from tests.services import create_pg_database, drop_pg_database, pg_url

    database = await create_pg_database()
    hr = TestServer(create_hr_app(api_key=HR_API_KEY), host="127.0.0.1")
    await hr.start_server()
    _demo, hr_yaml = write_mappings(tmp_path)
    hub_yaml = tmp_path / "hub.yaml"
    hub_yaml.write_text(yaml.safe_dump(HUB_FILE | {"apps": {"hr": HUB_FILE["apps"]["hr"]}}))
    env = {
        "HR_API_URL": str(hr.make_url("/api")),
        "HR_API_KEY": HR_API_KEY,
        "HUB_SCIM_TOKEN": HUB_TOKEN,
        "SCIM_GATEWAY_STORE": pg_url(database),
    }
    gateways = [LiveGateway(tmp_path / f"g{i}", token="", env=env) for i in range(2)]
    args = ("--config", str(hr_yaml), "--hub", str(hub_yaml), "--log-level", "debug")
    try:
        await asyncio.gather(*(asyncio.to_thread(g.start, *args) for g in gateways))
        stacks = [Stack(tmp_path, None, g, Demo(tmp_path / "none.db")) for g in gateways]  # type: ignore[arg-type]
        names = [f"pg.u{i}@example.com" for i in range(40)]
        ids = await asyncio.gather(*(stacks[i % 2].create_user(n) for i, n in enumerate(names)))
        await asyncio.gather(
            *(
                stacks[(i + 1) % 2].patch(f"/Users/{uid}", {"op": "replace", "path": "title", "value": "Done"})
                for i, uid in enumerate(ids)
            )
        )
        state = hr.app[HR_STATE]

        async def delivered() -> None:
            assert sorted(u["login"] for u in state.users.values()) == sorted(names)
            assert all(u["title"] == "Done" for u in state.users.values())
            totals = (await stacks[0].status())["totals"]
            assert totals == {"delivered": 40, "pending": 0, "failed": 0}, totals

        await eventually(delivered, "every user in hr, at its latest state", timeout=60)
        posts = [path for method, path in state.calls if method == "POST" and path == "/users"]
        assert len(posts) == len(names), f"{len(posts)} creates for {len(names)} users"
        # Both processes delivered (each logs what it delivered at debug level); together, each entry once per change.
        shares = [g.log.read_text().count("delivered to hr") for g in gateways]
        assert all(shares), shares
    finally:
        for g in gateways:
            g.stop()
        await hr.close()
        await drop_pg_database(database)


# ---------------------------------------------------------------- configuration


def test_an_app_fed_by_the_hub_that_also_takes_its_own_idp_tokens_is_refused(stack: Stack) -> None:
    hr_with_auth = ROOT / "mappings" / "hr_rest.yaml"
    env = {k: v for k, v in os.environ.items() if k != "SCIM_GATEWAY_TOKEN"} | {
        "HR_API_URL": stack.hr.api,
        "HR_API_KEY": HR_API_KEY,
        "HR_SCIM_TOKEN": "an-hr-token-0123456789",
        "HUB_SCIM_TOKEN": HUB_TOKEN,
    }
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(free_port()), "--data-dir", str(stack.root / "refused")]
        + ["--config", str(demo_mapping_path()), "--config", str(hr_with_auth), "--hub", str(stack.root / "hub.yaml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "app 'hr' is fed by the hub but also accepts its own IdP credentials" in done.stdout + done.stderr
    assert "hub.yaml:" in done.stdout + done.stderr  # at the hub file's line
