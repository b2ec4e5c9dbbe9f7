"""What the hub crash run found (tests/integration/test_crash_matrix.py), replayed step by step: the gateway in this
process with its delivery workers stopped, each outbox entry delivered by the test in the order that went wrong,
to the two apps of the hub stack: the hr REST fake (its own process) and the demo SQL app, both read directly.

- A userName swap (A: x -> y, B: y -> x): each rename was refused by the app as taken, retried forever.
- A create cut short between the app's answer and the hub's link (a kill), then the hub user renamed or deleted:
  the next delivery looked for the account by the hub's current name, found nothing, so an account stayed in the
  app (or a second one was made).
- The same cut-short create, then a new hub user of that name: both hub ids linked to the one app record
  (hub_links' unique (app, app_id)), the raw database error retried forever.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.app import create_app
from gateway.demo import ensure_demo_database
from gateway.http.keys import HUB
from gateway.hub.delivery import Worker
from gateway.hub.runtime import Hub
from gateway.settings import GatewaySettings
from tests.conftest import GROUP_URN, USER_URN, Scim
from tests.fakes.serve import HR_API_KEY
from tests.integration.hub_stack import HrProcess, write_mappings

TOKEN = "hub-faults-token-0123456789"
HUB_FILE = {
    "auth": {"bearer": [{"env": "HUB_SCIM_TOKEN"}]},
    "delivery": {"concurrency": 4, "max_attempts": 5, "backoff": 0.2, "max_backoff": 1.0, "poll_interval": 0.2},
    "apps": {
        "hr": {"users": {"everyone": True}, "groups": "all", "leave": "delete"},
        "demo": {"users": {"everyone": True}, "groups": "all", "leave": "delete"},
    },
}
APPS = ("hr", "demo")


class Killed(BaseException):
    """The process dies here (not an Exception: nothing on the way records a failure)."""


class Rig:
    def __init__(self, scim: Scim, hub: Hub, hr: HrProcess, demo_db: Path) -> None:
        self.scim = scim
        self.hub = hub
        self.hr = hr
        self.demo_db = demo_db

    def worker(self, app: str) -> Worker:
        return self.hub.workers[app]

    async def user(self, name: str) -> str:
        resp, body = await self.scim.post("/Users", {"schemas": [USER_URN], "userName": name, "title": f"title of {name}"})
        assert resp.status == 201, body
        return str(body["id"])

    async def rename(self, uid: str, name: str) -> None:
        resp, got = await self.scim.patch(f"/Users/{uid}", [{"op": "replace", "path": "userName", "value": name}])
        assert resp.status == 200, got

    async def delete(self, uid: str) -> None:
        resp, got = await self.scim.delete(f"/Users/{uid}")
        assert resp.status == 204, got

    async def deliver(self, app: str, *first: str) -> None:
        """Every due entry of `app` delivered one at a time, those of the hub ids `first` first, in that order."""
        entries = await self.hub.store.take(app, 100, 30)
        rank = {rid: i for i, rid in enumerate(first)}
        for entry in sorted(entries, key=lambda e: (rank.get(e.resource_id, len(rank)), e.type != "User")):
            await self.worker(app)._one(entry)

    async def outbox(self) -> list[dict[str, Any]]:
        async with self.hub.store.dialect.access() as conn:
            recs = await conn.fetch("SELECT app, resource_id, state, last_error FROM hub_outbox WHERE state <> 'done'")
        return [dict(r) for r in recs]

    async def hr_users(self) -> dict[str, str]:
        """hr's logins (lower case) -> title."""
        return {u["login"].lower(): u["title"] for u in await self.hr.users()}

    def demo_users(self) -> dict[str, str]:
        db = sqlite3.connect(self.demo_db)
        try:
            return {login.lower(): title for login, title in db.execute("SELECT login, job_title FROM employees")}
        finally:
            db.close()

    async def holdings(self) -> dict[str, dict[str, str]]:
        return {"hr": await self.hr_users(), "demo": self.demo_users()}


@pytest.fixture
async def rig(tmp_path: Path, aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Rig]:
    hr = HrProcess(tmp_path)
    try:
        for name, value in (("HR_API_URL", hr.api), ("HR_API_KEY", HR_API_KEY), ("HUB_SCIM_TOKEN", TOKEN)):
            monkeypatch.setenv(name, value)
        data_dir = tmp_path / "data"
        ensure_demo_database(data_dir)
        demo_yaml, hr_yaml = write_mappings(tmp_path)
        hub_yaml = tmp_path / "hub.yaml"
        hub_yaml.write_text(yaml.safe_dump(HUB_FILE))
        settings = GatewaySettings(mappings=[demo_yaml, hr_yaml], data_dir=data_dir, hub_file=hub_yaml)

        async def idle(_worker: Worker) -> None:
            await asyncio.Event().wait()

        monkeypatch.setattr(Worker, "run", idle)  # the test delivers, in the order it chooses
        client = await aiohttp_client(create_app(settings))
        hub = client.app[HUB]
        rig = Rig(Scim(client, TOKEN, "/hub/scim/v2"), hub, hr, data_dir / "demo.db")
        yield rig
    finally:
        hr.close()


async def _seed(rig: Rig, *names: str) -> list[str]:
    ids = [await rig.user(n) for n in names]
    for app in APPS:
        await rig.deliver(app)
    assert await rig.outbox() == []
    return ids


# ---------------------------------------------------------------- a swap


async def test_a_username_swap_in_the_hub_reaches_both_apps_and_leaves_no_temporary_name(rig: Rig) -> None:
    ann, bob = await _seed(rig, "ann", "bob")
    # In the hub: ann takes bob's name and bob ann's (through a third name, as the hub's own uniqueness wants).
    await rig.rename(ann, "swapping")
    await rig.rename(bob, "ann")
    await rig.rename(ann, "bob")
    for app in APPS:
        # ann's delivery first: its rename to "bob" is refused while bob's record still holds the name.
        await rig.deliver(app, ann, bob)
    assert await rig.outbox() == []
    # Each app ends with each name once, the right person under it, and no temporary name left.
    want = {"ann": "title of bob", "bob": "title of ann"}
    assert await rig.holdings() == {"hr": want, "demo": want}


async def test_a_rename_to_a_name_an_app_record_the_hub_does_not_manage_holds_is_still_refused(rig: Rig) -> None:
    (ann,) = await _seed(rig, "ann")
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{rig.hr.api}/users",
            json={"login": "zed", "first_name": "Zed", "last_name": "Own", "email": "zed@example.com", "title": "mine"},
            headers={"X-API-Key": HR_API_KEY},
        ) as resp,
    ):
        assert resp.status == 201, await resp.text()
    await rig.rename(ann, "zed")
    await rig.deliver("hr", ann)
    [row] = [r for r in await rig.outbox() if r["app"] == "hr"]
    assert (row["resource_id"], row["state"]) == (ann, "pending")  # retried, then dead-lettered, with the app's reason
    assert "409" in row["last_error"] and "taken" in row["last_error"], row
    assert await rig.hr_users() == {"ann": "title of ann", "zed": "mine"}  # nothing moved aside, nothing renamed


# ---------------------------------------------------------------- a create cut short before its link


async def _create_killed_before_the_link(rig: Rig, app: str, monkeypatch: pytest.MonkeyPatch, uid: str) -> None:
    """Deliver `uid`'s create to `app`, the process dying once the app answered, before the link is recorded."""

    async def killed(*_args: Any) -> None:
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(rig.hub.store, "set_link", killed)
        [entry] = await rig.hub.store.take(app, 100, 30)
        with pytest.raises(Killed):
            await rig.worker(app)._one(entry)
    assert await rig.hub.store.link_of(app, "User", uid) is None
    assert await rig.hub.store.release_leases() == 1  # the next process, alone on its store, frees the dead one's


@pytest.mark.parametrize("app", APPS)
@pytest.mark.parametrize("then", ["deleted", "renamed", "renamed-and-deleted"])
async def test_a_create_cut_short_before_its_link_then_changed_in_the_hub_leaves_the_app_as_the_hub_says(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, app: str, then: str
) -> None:
    ann = await rig.user("ann")
    await _create_killed_before_the_link(rig, app, monkeypatch, ann)
    held = await rig.holdings()
    assert held[app] == {"ann": "title of ann"}  # the app made the account
    if "renamed" in then:
        await rig.rename(ann, "ann2")
    if "deleted" in then:
        await rig.delete(ann)
    for each in APPS:
        await rig.deliver(each)
    assert await rig.outbox() == []
    want = {} if "deleted" in then else {("ann2" if "renamed" in then else "ann"): "title of ann"}
    assert (await rig.holdings())[app] == want


@pytest.mark.parametrize("app", APPS)
async def test_a_create_cut_short_then_a_new_hub_user_of_that_name_links_the_app_record_once(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, app: str
) -> None:
    """The IdP deletes the hub user and makes another of the same name: the new one adopts the app's record, and
    the old one's entry finds that record is another hub resource's now (not a second link, not a delete)."""
    old = await rig.user("ann")
    await _create_killed_before_the_link(rig, app, monkeypatch, old)
    await rig.delete(old)
    new = await rig.user("ann")
    await rig.deliver(app, new, old)
    assert [r for r in await rig.outbox() if r["app"] == app] == []
    app_id = await rig.hub.store.link_of(app, "User", new)
    assert app_id is not None and await rig.hub.store.hub_id_of(app, "User", app_id) == new
    assert await rig.hub.store.link_of(app, "User", old) is None
    assert (await rig.holdings())[app] == {"ann": "title of ann"}


@pytest.mark.parametrize("app", APPS)
async def test_a_create_cut_short_before_its_link_then_found_queues_its_groups_again(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, app: str
) -> None:
    """Found by the hub crash run: a group delivered while its member's create was in doubt left the member out,
    and the member, linked by the next delivery, did not queue the group again: the group stayed without it."""
    ann = await rig.user("ann")
    await _create_killed_before_the_link(rig, app, monkeypatch, ann)
    resp, team = await rig.scim.post("/Groups", {"schemas": [GROUP_URN], "displayName": "Team", "members": [{"value": ann}]})
    assert resp.status == 201, team
    entries = await rig.hub.store.take(app, 100, 30)
    for entry in sorted(entries, key=lambda e: e.type != "Group"):  # the group first: ann is not linked yet
        await rig.worker(app)._one(entry)
    await rig.deliver(app)  # the group again, queued by ann's arrival
    assert [r for r in await rig.outbox() if r["app"] == app] == []
    if app == "hr":
        assert await rig.hr.group_members("Team") == {"ann"}
    else:
        db = sqlite3.connect(rig.demo_db)
        try:
            rows = db.execute(
                "SELECT e.login FROM team_members m JOIN employees e ON e.emp_no = m.emp_no"
                " JOIN teams t ON t.team_id = m.team_id WHERE t.team_name = 'Team'"
            ).fetchall()
        finally:
            db.close()
        assert rows == [("ann",)]


async def test_a_create_cut_short_in_the_app_s_journal_settled_by_recovery_mid_delivery_is_not_forgotten(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hr's create killed after its claim (in hr's journal, unsettled), the hub user then deleted. The delivery waits
    for hr's recovery; here recovery settles the create just after the delivery looked in the app (the window the
    crash run hit at 50 kills: the name in doubt was dropped, the account stayed). The journal is read first now."""
    runtime = rig.hub.workers["hr"].runtime
    assert runtime is not None
    ann = await rig.user("ann")

    async def killed(*_args: Any, **_kw: Any) -> Any:
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(type(runtime.connector), "create", killed)
        [entry] = await rig.hub.store.take("hr", 100, 30)
        with pytest.raises(Killed):
            await rig.worker("hr")._one(entry)
    assert await rig.hub.store.release_leases() == 1
    assert await rig.hub.store.unsettled("hr", "User", "ann")
    await rig.delete(ann)
    await rig.deliver("hr")  # waits: hr's journal holds the create
    [row] = [r for r in await rig.outbox() if r["app"] == "hr"]
    assert "unsettled" in row["last_error"], row
    worker, store = rig.worker("hr"), rig.hub.store
    lookup, unsettled = worker._lookup, store.unsettled
    recovered: list[bool] = []

    async def recover_after(answer: Any) -> Any:
        if not recovered:  # right after the delivery's first look (the app's or the journal's), once
            recovered.append(True)
            await runtime.provisioner.recover(0)  # hr's recovery sends the create again: the account is made
        return answer

    async def looked_up(*args: Any) -> Any:
        return await recover_after(await lookup(*args))

    async def journal_read(*args: Any) -> Any:
        return await recover_after(await unsettled(*args))

    monkeypatch.setattr(worker, "_lookup", looked_up)
    monkeypatch.setattr(store, "unsettled", journal_read)

    for _ in range(3):  # due now, each time
        async with store.dialect.access() as conn:
            await conn.execute("UPDATE hub_outbox SET due = 0")
        await rig.deliver("hr")
    assert recovered
    assert [r for r in await rig.outbox() if r["app"] == "hr"] == []
    assert await rig.hr_users() == {}
