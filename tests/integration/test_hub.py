"""The hub with real processes (tests/integration/hub_stack.py): the Entra and Okta sequences, assignment rules,
waiting references, an app stopped and resumed, the backlog in metrics, status and the admin page, the command line,
and the configuration refused; on both stores. The kills are in test_hub_crash.py, two processes in test_hub_workers.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from gateway.demo import demo_mapping_path
from tests.conftest import ENTERPRISE_URN, GROUP_URN, free_port
from tests.fakes.serve import HR_API_KEY
from tests.idp import entra_group, entra_user, okta_user
from tests.integration.hub_stack import ADMIN_TOKEN, HUB_TOKEN, ROOT, Stack, eventually, run_cli, start_stack


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
