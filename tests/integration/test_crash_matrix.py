"""The crash matrix, continued (issue 16): SIGKILL at random points for the configurations test_crash.py does not run.

- An SQL app on PostgreSQL: the legacy example (mappings/legacy_pg.yaml, its schema in a fresh database) whose
  DELETE deactivates the person and forgets the resource (`delete: deactivate`): the app keeps the inactive row.
- The LDAP directory: a real slapd, with the refint overlay and without it (the connector rewrites the member DNs
  naming a renamed or deleted entry itself), the shipped mappings/openldap.yaml, whose deactivation deletes the
  entry (`deactivate: {via: delete}`) and whose reactivation creates it again.
- The REST hr app through outages: the fake answers 503 to everything for a while during some stretches of the
  stream, so the breaker opens; its refusals must leave no journal row and never count as acknowledged.
- The hub's delivery on a PostgreSQL store: the IdP writes to /hub/scim/v2, the gateway delivering to the hr app is
  killed; once the outbox drains, the app holds what the hub's directory and its rules say, each account once.

Every configuration's write stream has POST, PUT, PATCH, DELETE, Bulk with and without failOnErrors, member
changes, renames and swaps (two users exchanging their userNames, the two PATCHes in flight at once). The loop,
the model of what the IdP was told and the checks are crash_loop.py's. SCIM_GATEWAY_CRASH_KILLS sets the kill
points per configuration (6 by default; 50 for the documented full run).

What these runs found, each replayed by hand at the end of this file: fixed, a deactivation by deletion cut short
losing the rest of its PATCH; a DELETE that deactivates cut short leaving the account active; a hub group update
cut short losing every member; members deactivated by deletion leaving their groups on any group write; an LDAP
rename or delete cut short before the member DNs are rewritten (slapd without refint: recovery has the connector
finish the write); a member's deactivation by deletion and its group's member change cut short together, the
member leaving the group (seen once in a 50-kill LDAP run); a member change the app fails halfway, aborted though
its first calls took effect (now undone, or left to recovery); a group create whose member calls and undo fail,
aborted with the group an orphan in the app; a rename the app fails whose old name another write took meanwhile,
its abort a 500; in the hub's delivery (replayed in test_hub_faults.py), a userName swap never delivered, a create
cut short before its link leaving an account in hr or linking one app record to two hub ids, and its record then
found without its groups queued again. Open (strict xfail replays, and the configurations that meet them marked
xfail): an LDAP userName swap killed between one half's modrdn and its member rewrite, the other half taking the
old DN (slapd without refint); an hr group update cut short and settled by recovery, the app keeping a member the
hub removed (the hub run, at 50 kills).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.app import create_app
from gateway.demo import ensure_demo_database
from gateway.http.keys import APPS, HUB
from gateway.settings import GatewaySettings
from tests.conftest import GROUP_URN, USER_URN, Scim
from tests.directories import ADMIN_DN, ADMIN_PASSWORD, Slapd
from tests.integration.crash_loop import (
    READER,
    ROOT,
    TOKEN,
    Closers,
    GatewayProcess,
    Holdings,
    HrFake,
    Model,
    Outage,
    PgStoreView,
    cleanup_fixture,  # noqa: F401 (the fixture `cleanup`)
    crash_loop,
    demo_app_holdings,
    hr_app_holdings,
    posix_processes,
    report,
)
from tests.integration.hub_stack import write_mappings
from tests.integration.test_app_faults import hr_gateway
from tests.integration.test_ldap_openldap import shipped_mapping
from tests.services import create_pg_database, drop_pg_database, load_schema, pg_url

# Kill points per configuration: few in the suite (its time budget on two cores), 50 for the documented full run
# (SCIM_GATEWAY_CRASH_KILLS=50 .venv/bin/python -m pytest -n0 tests/integration/test_crash_matrix.py).
KILLS = int(os.environ.get("SCIM_GATEWAY_CRASH_KILLS", "6"))


def _mapping(root: Path, shipped: str, change: Any) -> Path:
    """A shipped mapping, changed for the test (`change(doc)`), written next to the test's files."""
    doc = yaml.safe_load((ROOT / "mappings" / shipped).read_text())
    change(doc)
    path = root / shipped
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# ---------------------------------------------------------------- an SQL app on PostgreSQL


async def legacy_pg_holdings(url: str) -> Holdings:
    """The legacy app's people (the living: a row marked deleted_at is gone), units and unit members, read directly."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        people = await conn.fetch("SELECT person_id, account_name, job_title, enabled FROM hr_person WHERE deleted_at IS NULL")
        units = await conn.fetch("SELECT unit_id, unit_name FROM hr_org_unit")
        members = await conn.fetch(
            "SELECT m.unit_id, m.person_id FROM hr_unit_member m JOIN hr_person p USING (person_id) WHERE p.deleted_at IS NULL"
        )
    finally:
        await conn.close()
    users = {str(r["person_id"]): {"login": r["account_name"], "title": r["job_title"], "active": r["enabled"]} for r in people}
    groups = {str(r["unit_id"]): r["unit_name"] for r in units}
    return Holdings(users, groups, {(str(r["unit_id"]), str(r["person_id"])) for r in members})


@posix_processes
async def test_crashes_with_an_sql_app_on_postgresql(
    tmp_path: Path, cleanup: Closers, capsys: pytest.CaptureFixture[str]
) -> None:
    database = await create_pg_database()
    cleanup.append(lambda: asyncio.run(drop_pg_database(database)))
    await load_schema("postgresql", database, (ROOT / "mappings" / "sql" / "legacy_pg.sql").read_text("utf-8"))
    started = time.monotonic()

    def change(doc: dict[str, Any]) -> None:
        doc["connector"]["pool_size"] = 4
        doc["resources"]["User"]["delete"] = "deactivate"  # a DELETE sets enabled = false and forgets the person

    mapping = _mapping(tmp_path, "legacy_pg.yaml", change)
    env = {"LEGACY_PG_DSN": pg_url(database), "LEGACY_PG_SCIM_TOKEN": TOKEN}
    gateway = GatewayProcess(tmp_path, "--config", str(mapping), env=env, app="legacy_pg")
    cleanup.append(gateway.close)
    model = Model(atomic_members=True, delete_keeps=True)  # the SQL connector writes members in the record's transaction

    async def holdings() -> Holdings:
        return await legacy_pg_holdings(pg_url(database))

    tally = await crash_loop(
        gateway, "legacy_pg", model, holdings, seed=5101, kills=KILLS, extended=True, swaps=True
    )  # fmt: skip
    report("sql app on postgresql (delete: deactivate)", tally, model, time.monotonic() - started, capsys)


# ---------------------------------------------------------------- the LDAP directory


def ldap_holdings(slapd: Any, top: str) -> Holdings:
    """The directory's entries by entryUUID (the mapping's native id), read with ldapsearch. A present entry is an
    active account (the mapping deactivates by deleting it); a member DN naming no entry stays as it is (dangling)."""
    people = slapd.search(f"ou=people,{top}", "(objectClass=inetOrgPerson)", "uid", "title", "entryUUID")
    teams = slapd.search(f"ou=groups,{top}", "(objectClass=groupOfNames)", "cn", "member", "entryUUID")
    by_dn = {p["dn"][0].lower(): p["entryUUID"][0] for p in people}
    users = {p["entryUUID"][0]: {"login": p["uid"][0], "title": p.get("title", [None])[0], "active": True} for p in people}
    groups = {g["entryUUID"][0]: g["cn"][0] for g in teams}
    members = {
        (g["entryUUID"][0], by_dn.get(dn.lower(), f"no entry {dn}"))
        for g in teams
        for dn in g.get("member", [])
        if not dn.lower().startswith("cn=nobody,")
    }
    return Holdings(users, groups, members)


@pytest.fixture(scope="module")
def slapd_refint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    """A slapd of this module's own, with the referential integrity overlay."""
    server = Slapd(tmp_path_factory.mktemp("slapd-refint"), refint=True)
    server.start()
    yield server
    server.stop()


SWAP_FOLLOW_UP = (
    "open bug (found by the 50-kill LDAP run without refint, once in four runs): a userName swap killed between one"
    " half's modrdn and its member DN rewrite, the other half's modrdn done: the old DN in the groups names the other"
    " user now, and neither recovery nor the connector can tell whose it was, so that user is listed as a member"
)

REFINT_SWAP = (
    "open bug (seen at random, 1 run in 3 at 50 kills and once at 6 kills in CI, seed 5102 kill point 3): with"
    " refint, a userName swap cut short leaves a group's member in the store different from the directory's, or an"
    " inactive user's abort postponed because its old name is held by the other half; not yet replayed"
    " deterministically"
)


@posix_processes
@pytest.mark.parametrize(
    "refint",
    [
        pytest.param(True, id="refint", marks=pytest.mark.xfail(strict=False, reason=REFINT_SWAP)),
        pytest.param(False, id="no-refint", marks=pytest.mark.xfail(strict=False, reason=SWAP_FOLLOW_UP)),
    ],
)
async def test_crashes_with_the_ldap_directory(
    refint: bool, slapd_refint: Slapd, slapd: Slapd, tmp_path: Path, cleanup: Closers, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a slapd with the refint overlay, as directories are usually run, and on one without it: there the
    connector rewrites the member DNs naming a renamed or deleted entry, and a kill between the modrdn (or delete)
    and that rewrite is finished by recovery (found by this run; replayed below)."""
    slapd = slapd_refint if refint else slapd
    top = slapd.subtree("people", "groups")
    for ou in ("rnd", "sales"):
        slapd.add(f"dn: ou={ou},ou=people,{top}\nobjectClass: organizationalUnit\nou: {ou}\n")
    started = time.monotonic()

    def change(doc: dict[str, Any]) -> None:
        text = yaml.safe_dump(doc).replace("cn=scim-gateway,ou=services,dc=example,dc=com", ADMIN_DN)
        doc.clear()
        doc.update(yaml.safe_load(text.replace("dc=example,dc=com", top)))

    mapping = _mapping(tmp_path, "openldap.yaml", change)
    env = {"OPENLDAP_URL": slapd.url, "OPENLDAP_BIND_PASSWORD": ADMIN_PASSWORD, "OPENLDAP_SCIM_TOKEN": TOKEN}
    gateway = GatewayProcess(tmp_path, "--config", str(mapping), env=env, app="openldap")
    cleanup.append(gateway.close)
    # A group's members are changed one value at a time; an inactive user has no entry (deactivate: {via: delete}).
    model = Model(atomic_members=False, deactivation_drops=True)

    async def holdings() -> Holdings:
        return await asyncio.to_thread(ldap_holdings, slapd, top)

    tally = await crash_loop(
        gateway, "openldap", model, holdings, seed=5102 if refint else 5106, kills=KILLS, extended=True, swaps=True
    )
    report(
        f"ldap directory, {'refint' if refint else 'no refint'} (deactivate: via delete)",
        tally,
        model,
        time.monotonic() - started,
        capsys,
    )


# ---------------------------------------------------------------- the REST app through outages (the breaker open)


@posix_processes
async def test_crashes_with_the_rest_hr_app_through_outages(
    tmp_path: Path, cleanup: Closers, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every other stretch of the stream, the app goes down (every call 503) after a moment and stays down until the
    kill: three failures open the circuit, and the writes that follow are refused without calling the app."""
    down = tmp_path / "hr-down"
    fake = HrFake(tmp_path, "--outage-file", str(down))
    cleanup.append(fake.close)
    await fake.started()
    started = time.monotonic()

    def change(doc: dict[str, Any]) -> None:
        doc["connector"]["retries"] = 0  # each 503 is one failure: the circuit opens in a few calls
        doc["breaker"] = {"failures": 3, "reset_after": 5.0, "max_reset_after": 5.0}  # no probe before the kill

    mapping = _mapping(tmp_path, "hr_rest.yaml", change)
    gateway = GatewayProcess(tmp_path, "--config", str(mapping), env=fake.gateway_env, app="hr")
    cleanup.append(gateway.close)
    model = Model(atomic_members=False)
    outage = Outage(gateway.store_file)
    rng = random.Random(5103)
    outages = 0

    async def during(point: int) -> None:
        nonlocal outages
        if point % 2 == 0:
            return
        await asyncio.sleep(rng.uniform(0.05, 0.2))
        down.touch()
        outages += 1
        try:
            await asyncio.sleep(3600)  # until the kill
        finally:
            down.unlink()

    async with aiohttp.ClientSession() as reader:

        async def holdings() -> Holdings:
            return await hr_app_holdings(reader, fake.api)

        async def app_idle() -> None:
            for _ in range(2):  # the app finishes what the dead gateway had sent in full (as in test_crash.py)
                async with reader.get(f"{fake.api}/users", params={"per_page": 1}, headers=READER) as resp:
                    assert resp.status == 200

        tally = await crash_loop(
            gateway, "hr", model, holdings, seed=5104, kills=KILLS, app_idle=app_idle, extended=True, swaps=True,
            outage=outage, during=during, window=(0.3, 0.6),
        )  # fmt: skip
    checked, journaled = outage.journaled_refusals()
    report(
        f"rest hr through {outages} outages ({len(outage.refused)} writes refused by the open breaker, {checked} of them"
        f" checked against the journal; {outage.failed} failed by the app)",
        tally, model, time.monotonic() - started, capsys,
    )  # fmt: skip
    assert not journaled, "\n".join(journaled)
    assert checked >= outages, "the breaker refused too few writes to one resource: the circuit did not open"


# ---------------------------------------------------------------- the hub's delivery on a PostgreSQL store


HUB_FILE = {
    "auth": {"bearer": [{"env": "HUB_SCIM_TOKEN"}]},
    # lease: a dead process's deliveries are taken again after 3 s (on PostgreSQL a new process cannot know it is alone)
    "delivery": {"concurrency": 4, "max_attempts": 1000, "backoff": 0.2, "max_backoff": 1.0, "poll_interval": 0.2, "lease": 3},
    "apps": {
        "hr": {"users": {"everyone": True}, "groups": "all", "leave": "delete"},
        "demo": {"users": {"everyone": True}, "groups": "all", "leave": "delete"},
    },
}


def by_name(held: Holdings) -> tuple[dict[str, list[tuple[Any, Any]]], dict[str, set[str]]]:
    """An app's holdings by name: lower login -> [(title, active)] (a duplicate shows twice), group name -> member logins."""
    users: dict[str, list[tuple[Any, Any]]] = {}
    for u in held.users.values():
        users.setdefault(u["login"].lower(), []).append((u["title"], u["active"]))
    groups = {name: set() for name in held.groups.values()}
    for g, m in held.members:
        groups[held.groups[g]].add(held.users[m]["login"].lower() if m in held.users else f"no user {m}")
    return users, groups


@posix_processes
@pytest.mark.xfail(
    strict=False,
    reason="open (found by this run at 50 kills, not a delivery bug): hr's group kept a member the hub removed, after"
    " hr's recovery settled a group update cut short ('the app's record shows it took effect'); every later PUT of the"
    " group computes its member change from the store's copy, which does not hold that member",
)
async def test_crashes_of_the_hub_s_delivery_on_a_postgresql_store(
    tmp_path: Path, cleanup: Closers, capsys: pytest.CaptureFixture[str]
) -> None:
    """The IdP writes to the hub; the gateway delivering each change to hr (REST, its own process) and demo (SQL) is
    killed. After each restart, once the outbox has drained, each app holds exactly the hub's directory (everyone,
    every group), each account once, nothing left pending or dead in the outbox or any journal."""
    database = await create_pg_database()
    cleanup.append(lambda: asyncio.run(drop_pg_database(database)))
    url = pg_url(database)
    fake = HrFake(tmp_path, "--slow-writes", "0.1")  # each delivery to hr takes a while: the kills find some in flight
    cleanup.append(fake.close)
    await fake.started()
    started = time.monotonic()
    ensure_demo_database(tmp_path / "data")
    demo_yaml, hr_yaml = write_mappings(tmp_path)
    hub_yaml = tmp_path / "hub.yaml"
    hub_yaml.write_text(yaml.safe_dump(HUB_FILE))
    env = fake.gateway_env | {"SCIM_GATEWAY_STORE": url, "HUB_SCIM_TOKEN": TOKEN}
    args = ("--config", str(demo_yaml), "--config", str(hr_yaml), "--hub", str(hub_yaml), "--recovery-interval", "1")
    gateway = GatewayProcess(tmp_path, *args, env=env)
    gateway.base_url = f"http://127.0.0.1:{gateway.port}/hub/scim/v2"
    cleanup.append(gateway.close)
    view = PgStoreView(url)
    model = Model(atomic_members=True)  # the hub's directory is the store: a write and its members in one transaction
    deliveries: list[int] = []  # app journal entries pending and outbox rows leased, right after each kill

    points: list[int] = []

    async def kill(point: int) -> None:
        points.append(point)
        gateway.kill()
        writes = await view._fetch("SELECT count(*) AS n FROM journal WHERE state = 'pending' AND app <> 'hub'")
        leased = await view._fetch("SELECT count(*) AS n FROM hub_outbox WHERE state = 'pending' AND lease_until IS NOT NULL")
        deliveries.append(int(writes[0]["n"]) + int(leased[0]["n"]))

    async with aiohttp.ClientSession() as reader:

        async def drained() -> list[str]:
            """What still differs between each app and the hub's directory (empty: delivered)."""
            hub = await view.rows("hub")
            logins = {rid: data["userName"].lower() for rid, (_n, data) in hub.users.items()}
            want_users = {logins[rid]: [(data.get("title"), data.get("active"))] for rid, (_n, data) in hub.users.items()}
            want_groups = {data["displayName"]: set() for _n, data in hub.groups.values()}
            names = {rid: data["displayName"] for rid, (_n, data) in hub.groups.items()}
            for g, m in hub.members:
                want_groups[names[g]].add(logins[m])
            outbox = await view._fetch(
                "SELECT app, type, resource_id, state, attempts, last_error FROM hub_outbox WHERE state <> 'done'"
            )
            differ = [f"outbox row not delivered: {dict(r)}" for r in outbox]
            try:
                hr = await hr_app_holdings(reader, fake.api)
            except AssertionError as exc:  # a group deleted by a delivery between the list and its members' read
                return [*differ, f"hr changed while it was read: {exc}"]
            for app, held in (("hr", hr), ("demo", demo_app_holdings(gateway.data))):
                users, groups = by_name(held)
                differ += [f"{app}: {n!r} is {users.get(n)}, the hub {w}" for n, w in want_users.items() if users.get(n) != w]
                differ += [f"{app}: {n!r} {v} is not in the hub" for n, v in users.items() if n not in want_users]
                differ += [
                    f"{app}: group {n!r} has {groups.get(n)}, the hub {w}" for n, w in want_groups.items() if groups.get(n) != w
                ]
                differ += [f"{app}: group {n!r} is not in the hub" for n in groups if n not in want_groups]
            return differ

        async def holdings() -> Holdings:
            # The hub's directory is the store's copy (its connector keeps nothing): the app side of the check is the
            # hub's rows themselves; what the check adds is the IdP's acknowledged writes. Delivery is checked here.
            deadline = time.monotonic() + 30
            while differ := await drained():
                assert time.monotonic() < deadline, (
                    f"kill point {points[-1] if points else None}: 30 s after the restart the apps still differ from the hub:\n"
                    + "\n".join(differ[:30])
                )
                await asyncio.sleep(0.3)
            hub = await view.rows("hub")
            users = {
                n: {"login": d["userName"], "title": d.get("title"), "active": d.get("active")}
                for n, d in hub.users.values()
                if n
            }
            groups = {n: d["displayName"] for n, d in hub.groups.values() if n}
            natives = {rid: n for rid, (n, _d) in (hub.users | hub.groups).items()}
            return Holdings(users, groups, {(natives[g], natives[m]) for g, m in hub.members})

        tally = await crash_loop(
            gateway, "hub", model, holdings, seed=5105, kills=KILLS, kill=kill, view=view, settle_wait=15.0, extended=True,
            swaps=True,
            window=(0.5, 1.2),  # a hub write commits the outbox rows too: longer stretches, or most die unanswered
        )  # fmt: skip
    hit = sum(1 for n in deliveries if n)
    report(
        f"hub delivery to hr and demo on postgresql ({hit} kills with deliveries in flight, {sum(deliveries)} app writes"
        " or leased outbox rows at the kills)",
        tally, model, time.monotonic() - started, capsys,
    )  # fmt: skip
    assert hit * 3 >= tally.kills, f"only {hit} of {tally.kills} kills caught a delivery in flight: {deliveries}"


# ---------------------------------------------------------------- what the runs found, replayed by hand


@pytest.mark.parametrize("reached_the_app", [False, True], ids=["not-reached", "reached"])
async def test_a_deactivation_by_delete_that_also_changed_the_title_cut_short_settles_to_what_it_meant(
    reached_the_app: bool, slapd: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, aiohttp_client: Any
) -> None:
    """A PATCH of title and active false on the directory (deactivate: {via: delete}), killed once the entry was
    deleted: recovery settled the deactivation from the copy before it, so the new title was lost (found by the LDAP
    run above: the user held its old title, inactive). It settles with the journal's intent now."""
    top = slapd.subtree("people", "groups")
    for ou in ("rnd", "sales"):
        slapd.add(f"dn: ou={ou},ou=people,{top}\nobjectClass: organizationalUnit\nou: {ou}\n")
    for name, value in (("OPENLDAP_URL", slapd.url), ("OPENLDAP_BIND_PASSWORD", ADMIN_PASSWORD), ("OPENLDAP_SCIM_TOKEN", TOKEN)):
        monkeypatch.setenv(name, value)
    settings = GatewaySettings(mappings=[shipped_mapping(top, tmp_path)], data_dir=tmp_path / "data")
    client = await aiohttp_client(create_app(settings))
    scim = Scim(client, TOKEN, "/apps/openldap/scim/v2")
    resp, ann = await scim.post("/Users", {"schemas": [USER_URN], "userName": "ann", "title": "Clerk"})
    assert resp.status == 201, ann
    runtime = client.app[APPS]["openldap"]
    store, connector = runtime.provisioner.store, runtime.connector
    row = await store.get("openldap", "User", ann["id"])
    assert row is not None and row.native_id is not None
    intent = {**row.data, "title": "Lead", "active": False}
    payload = {"add": [], "remove": [], "intent": intent, "switch": False, "relink": "drop"}
    await store.begin_write("openldap", "User", ann["id"], "update", if_match=row.version, payload=payload)
    if reached_the_app:
        await connector.delete("User", row.native_id)  # the crash comes here: the entry is gone, nothing settled
    await client.close()

    again = Scim(await aiohttp_client(create_app(settings)), TOKEN, "/apps/openldap/scim/v2")
    assert await again.client.app[APPS]["openldap"].provisioner.store.pending("openldap") == []
    resp, got = await again.get(f"/Users/{ann['id']}")
    assert resp.status == 200
    if reached_the_app:
        assert (got["active"], got.get("title")) == (False, "Lead"), got  # the whole PATCH, as it was meant
        assert slapd.search(f"ou=people,{top}", "(uid=ann)") == []
    else:
        assert got.get("active") is not False and got.get("title") == "Clerk", got  # none of it
        assert [e["title"] for e in slapd.search(f"ou=people,{top}", "(uid=ann)", "title")] == [["Clerk"]]


async def _team_of_two(hr: Any) -> tuple[list[str], dict[str, Any]]:
    ids = []
    for name in ("ann", "bob"):
        resp, body = await hr.scim.post("/Users", {"schemas": [USER_URN], "userName": name})
        assert resp.status == 201, body
        ids.append(body["id"])
    resp, team = await hr.scim.post(
        "/Groups", {"schemas": [GROUP_URN], "displayName": "Team", "members": [{"value": i} for i in ids]}
    )
    assert resp.status == 201, team
    return ids, team


async def test_a_member_change_the_app_fails_halfway_is_undone_in_the_app(
    aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PATCH removing two members from a REST group (one app call each); the app fails the second (503, as at the
    start of an outage). The first removal took effect (found by the outage run: the entry was aborted, so the store
    kept both members while the app had one): the gateway adds that member back, then aborts, and answers 503."""
    async with hr_gateway(aiohttp_client, tmp_path, monkeypatch) as hr:
        ids, team = await _team_of_two(hr)
        first, second = hr.state.user_by_login("ann"), hr.state.user_by_login("bob")
        assert first is not None and second is not None
        hr.state.fault("DELETE", rf"/groups/\d+/members/{second['id']}", status=503)
        ops = [{"op": "remove", "path": f'members[value eq "{i}"]'} for i in ids]
        resp, body = await hr.scim.patch(f"/Groups/{team['id']}", ops)
        assert resp.status == 503, body
        assert any(m == "DELETE" and p.endswith(f"/members/{first['id']}") for m, p in hr.state.calls), "first removal sent"
        assert hr.state.member_logins("Team") == ["ann", "bob"], "the first removal is undone in the app"
        rows = hr.rows()
        assert [j["state"] for j in rows["journal"] if j["state"] == "pending"] == []
        assert rows["journal"][-1]["state"] == "aborted", rows["journal"][-1]
        in_store = {m["member_id"] for m in rows["members"] if m["group_id"] == team["id"]}
        assert in_store == set(ids)
        resp, got = await hr.scim.get(f"/Groups/{team['id']}")
        assert resp.status == 200 and {m["value"] for m in got["members"]} == set(ids), got


async def test_a_member_change_failed_halfway_that_cannot_be_undone_is_settled_from_the_app(
    aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, but the app fails the undo too (the member cannot be added back): the entry is left pending, not
    aborted, the client is told part of the change took effect, and recovery settles it from the app: the app back, it
    finishes the change (bob removed there too), and the copy is what the app then holds."""
    async with hr_gateway(aiohttp_client, tmp_path, monkeypatch) as hr:
        ids, team = await _team_of_two(hr)
        second = hr.state.user_by_login("bob")
        assert second is not None
        hr.state.fault("DELETE", rf"/groups/\d+/members/{second['id']}", status=503)
        hr.state.fault("POST", r"/groups/\d+/members", status=503)
        ops = [{"op": "remove", "path": f'members[value eq "{i}"]'} for i in ids]
        resp, body = await hr.scim.patch(f"/Groups/{team['id']}", ops)
        assert resp.status == 503, body
        assert "part of the change took effect" in body["detail"], body
        assert hr.state.member_logins("Team") == ["bob"]
        rows = hr.rows()
        assert rows["journal"][-1]["state"] == "pending", rows["journal"][-1]
        provisioner = hr.client.app[APPS]["hr"].provisioner
        assert await provisioner.recover() == 1
        rows = hr.rows()
        assert [j for j in rows["journal"] if j["state"] == "pending"] == []
        assert hr.state.member_logins("Team") == [], "recovery finished the change in the app"
        assert {m["member_id"] for m in rows["members"] if m["group_id"] == team["id"]} == set(), "the copy is the app"
        resp, got = await hr.scim.get(f"/Groups/{team['id']}")
        assert resp.status == 200 and got.get("members", []) == [], got


async def test_a_group_create_whose_members_and_undo_fail_leaves_no_orphan(
    aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group created with members on a REST app: the group is made, adding its members fails (503), and so does
    deleting the group again (found by the outage run: the entry was aborted, the group left in the app linked to
    nothing). The entry is left pending, and recovery settles it from the app: no orphan."""
    async with hr_gateway(aiohttp_client, tmp_path, monkeypatch) as hr:
        resp, ann = await hr.scim.post("/Users", {"schemas": [USER_URN], "userName": "ann"})
        assert resp.status == 201, ann
        hr.state.fault("POST", r"/groups/\d+/members", status=503)
        hr.state.fault("DELETE", r"/groups/\d+", status=503)
        body = {"schemas": [GROUP_URN], "displayName": "Team", "members": [{"value": ann["id"]}]}
        resp, answer = await hr.scim.post("/Groups", body)
        assert resp.status == 503, answer
        assert "part of the change took effect" in answer["detail"], answer
        assert hr.state.group_by_name("Team") is not None, "the group was made in the app"
        assert hr.rows()["journal"][-1]["state"] == "pending"
        assert await hr.client.app[APPS]["hr"].provisioner.recover() == 1
        rows = hr.rows()
        assert [j for j in rows["journal"] if j["state"] == "pending"] == []
        group = hr.state.group_by_name("Team")
        linked = [r for r in rows["resources"] if r["type"] == "Group"]
        if group is None:
            assert linked == [], linked
        else:
            assert [r["native_id"] for r in linked] == [str(group["id"])], (linked, group)
            members = {m["member_id"] for m in rows["members"] if m["group_id"] == linked[0]["id"]}
            assert members == ({ann["id"]} if hr.state.member_logins("Team") == ["ann"] else set())


async def _until(done: Any) -> None:
    for _ in range(500):
        if done():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not reached")


async def test_a_rename_the_app_fails_whose_old_name_was_taken_meanwhile_is_left_for_recovery(
    aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user renamed ann -> amy; while the app holds the rename's call, another user is created as ann (the name the
    rename gave up); then the app fails the rename (503). Its claim could not be undone (ann is taken), and that
    was a 500 (found by the outage run). The entry is left pending, the client told so, and recovery settles it."""
    async with hr_gateway(aiohttp_client, tmp_path, monkeypatch) as hr:
        resp, ann = await hr.scim.post("/Users", {"schemas": [USER_URN], "userName": "ann"})
        assert resp.status == 201, ann
        hold = asyncio.Event()
        hr.state.fault("PATCH", r"/users/\d+", status=503, hold=hold)
        rename = asyncio.create_task(
            hr.scim.patch(f"/Users/{ann['id']}", [{"op": "replace", "path": "userName", "value": "amy"}])
        )
        await _until(lambda: any(m == "PATCH" for m, _p in hr.state.calls))
        held = asyncio.Event()  # the create of ann, its claim made, held at the app
        hr.state.fault("POST", r"/users$", status=None, hold=held)
        create = asyncio.create_task(hr.scim.post("/Users", {"schemas": [USER_URN], "userName": "ann"}))
        await _until(lambda: any(m == "POST" for m, _p in hr.state.calls[2:]))
        hold.set()
        resp, body = await rename
        assert resp.status == 503, body
        assert "recovery settles it from the app" in body["detail"], body
        held.set()
        resp, other = await create
        assert resp.status in (201, 409), other  # the app still has ann, or (after recovery) not
        assert await hr.client.app[APPS]["hr"].provisioner.recover() == 1
        rows = hr.rows()
        assert [j for j in rows["journal"] if j["state"] == "pending"] == []
        names = sorted(u["login"] for u in hr.state.users.values())
        copies = sorted(json.loads(r["data"])["userName"] for r in rows["resources"] if r["type"] == "User")
        assert names == copies, (names, copies)


async def test_a_delete_that_deactivates_cut_short_before_the_app_call_is_finished_by_recovery(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    """`delete: deactivate` (the app keeps the record, inactive): a DELETE killed after its claim, before the app
    call. Recovery settled it as done because the record is there either way, so the app kept an active account
    linked to nothing (found by the SQL-on-PostgreSQL run: an orphan, still active). It sends the deactivation again."""
    import sqlite3

    from pydantic import SecretStr

    def change(doc: dict[str, Any]) -> None:
        doc["resources"]["User"]["delete"] = "deactivate"

    data_dir = tmp_path / "data"
    ensure_demo_database(data_dir)
    settings = GatewaySettings(
        mappings=[_mapping(tmp_path, "demo.yaml", change)], data_dir=data_dir, extra_tokens={"demo": [SecretStr(TOKEN)]}
    )
    client = await aiohttp_client(create_app(settings))
    scim = Scim(client, TOKEN, "/apps/demo/scim/v2")
    resp, ann = await scim.post("/Users", {"schemas": [USER_URN], "userName": "ann", "active": True})
    assert resp.status == 201, ann
    store = client.app[APPS]["demo"].provisioner.store
    await store.begin_write("demo", "User", ann["id"], "delete")  # the crash comes here: nothing sent to the app
    await client.close()

    again = Scim(await aiohttp_client(create_app(settings)), TOKEN, "/apps/demo/scim/v2")
    assert await again.client.app[APPS]["demo"].provisioner.store.pending("demo") == []
    resp, _ = await again.get(f"/Users/{ann['id']}")
    assert resp.status == 404
    db = sqlite3.connect(data_dir / "demo.db")
    try:
        assert db.execute("SELECT status FROM employees WHERE login = 'ann'").fetchall() == [("I",)], "left active"
    finally:
        db.close()


async def test_a_hub_group_update_cut_short_keeps_the_group_s_members(
    tmp_path: Path, aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member removal on a hub group, cut short after its claim. Recovery read the members back from "the app",
    the hub directory's connector, which keeps nothing and lists none, and replaced the group's members with that
    empty list (found by the hub run: a group lost every member, and delivery then removed them from every app).
    The hub's mapping reads `cached`: recovery keeps the copy's members and applies the change's own."""
    from gateway.demo import demo_mapping_path

    monkeypatch.setenv("HUB_SCIM_TOKEN", TOKEN)
    data_dir = tmp_path / "data"
    ensure_demo_database(data_dir)
    hub_yaml = tmp_path / "hub.yaml"
    hub_yaml.write_text(yaml.safe_dump(HUB_FILE | {"apps": {"demo": HUB_FILE["apps"]["demo"]}}))
    settings = GatewaySettings(mappings=[demo_mapping_path()], data_dir=data_dir, hub_file=hub_yaml)
    client = await aiohttp_client(create_app(settings))
    scim = Scim(client, TOKEN, "/hub/scim/v2")
    ids = []
    for name in ("ann", "bob"):
        resp, body = await scim.post("/Users", {"schemas": [USER_URN], "userName": name})
        assert resp.status == 201, body
        ids.append(body["id"])
    resp, team = await scim.post(
        "/Groups", {"schemas": [GROUP_URN], "displayName": "Team", "members": [{"value": i} for i in ids]}
    )
    assert resp.status == 201, team
    store = client.app[HUB].runtime.provisioner.store
    row = await store.get("hub", "Group", team["id"])
    assert row is not None
    payload = {"add": [], "remove": [ids[1]], "intent": row.data, "switch": None}
    await store.begin_write("hub", "Group", team["id"], "update", payload=payload)  # the crash comes here
    await client.close()

    again = Scim(await aiohttp_client(create_app(settings)), TOKEN, "/hub/scim/v2")
    assert await again.client.app[HUB].runtime.provisioner.store.pending("hub") == []
    resp, got = await again.get(f"/Groups/{team['id']}")
    assert resp.status == 200 and [m["value"] for m in got.get("members", [])] == [ids[0]], got


async def test_a_rename_cut_short_between_the_modrdn_and_the_member_rewrite_leaves_no_dangling_member(
    slapd: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, aiohttp_client: Any
) -> None:
    """A user renamed on a slapd without refint: the entry is renamed (modrdn), then the process dies before the
    connector rewrites the groups' member DNs. Recovery saw the rename took effect and settled it, the group still
    listing the old DN, which names no entry (found by the LDAP run without refint). The connector finishes it now."""
    top = slapd.subtree("people", "groups")
    for ou in ("rnd", "sales"):
        slapd.add(f"dn: ou={ou},ou=people,{top}\nobjectClass: organizationalUnit\nou: {ou}\n")
    for name, value in (("OPENLDAP_URL", slapd.url), ("OPENLDAP_BIND_PASSWORD", ADMIN_PASSWORD), ("OPENLDAP_SCIM_TOKEN", TOKEN)):
        monkeypatch.setenv(name, value)
    settings = GatewaySettings(mappings=[shipped_mapping(top, tmp_path)], data_dir=tmp_path / "data")
    client = await aiohttp_client(create_app(settings))
    scim = Scim(client, TOKEN, "/apps/openldap/scim/v2")
    resp, ann = await scim.post("/Users", {"schemas": [USER_URN], "userName": "ann", "title": "Clerk"})
    assert resp.status == 201, ann
    resp, team = await scim.post("/Groups", {"schemas": [GROUP_URN], "displayName": "Team", "members": [{"value": ann["id"]}]})
    assert resp.status == 201, team
    store = client.app[APPS]["openldap"].provisioner.store
    row = await store.get("openldap", "User", ann["id"])
    assert row is not None
    payload = {"add": [], "remove": [], "intent": {**row.data, "userName": "ann2"}, "switch": None}
    await store.begin_write("openldap", "User", ann["id"], "update", new_unique_key="ann2", payload=payload)
    slapd.modify(f"dn: uid=ann,ou=people,{top}\nchangetype: modrdn\nnewrdn: uid=ann2\ndeleteoldrdn: 1\n")  # then the crash
    await client.close()

    again = Scim(await aiohttp_client(create_app(settings)), TOKEN, "/apps/openldap/scim/v2")
    assert await again.client.app[APPS]["openldap"].provisioner.store.pending("openldap") == []
    members = slapd.search(f"ou=groups,{top}", "(cn=Team)", "member")[0]["member"]
    assert [m.lower() for m in members] == [f"uid=ann2,ou=people,{top}".lower()]


@pytest.mark.parametrize("write", ["deactivation", "delete"])
async def test_a_deletion_cut_short_between_the_delete_and_the_member_removal_leaves_no_dangling_member(
    write: str, slapd: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, aiohttp_client: Any
) -> None:
    """ann's entry deleted on a slapd without refint (a deactivation by deletion, or a DELETE), then the process dies
    before the connector removes her DN from the groups. Recovery sees the entry gone and settles the write; the
    connector finishes it (issue 16): the group lists bob only."""
    top = slapd.subtree("people", "groups")
    for ou in ("rnd", "sales"):
        slapd.add(f"dn: ou={ou},ou=people,{top}\nobjectClass: organizationalUnit\nou: {ou}\n")
    for name, value in (("OPENLDAP_URL", slapd.url), ("OPENLDAP_BIND_PASSWORD", ADMIN_PASSWORD), ("OPENLDAP_SCIM_TOKEN", TOKEN)):
        monkeypatch.setenv(name, value)
    settings = GatewaySettings(mappings=[shipped_mapping(top, tmp_path)], data_dir=tmp_path / "data")
    client = await aiohttp_client(create_app(settings))
    scim = Scim(client, TOKEN, "/apps/openldap/scim/v2")
    ids = []
    for name in ("ann", "bob"):
        resp, body = await scim.post("/Users", {"schemas": [USER_URN], "userName": name})
        assert resp.status == 201, body
        ids.append(body["id"])
    resp, team = await scim.post(
        "/Groups", {"schemas": [GROUP_URN], "displayName": "Team", "members": [{"value": i} for i in ids]}
    )
    assert resp.status == 201, team
    store = client.app[APPS]["openldap"].provisioner.store
    row = await store.get("openldap", "User", ids[0])
    assert row is not None
    if write == "deactivation":
        payload = {"add": [], "remove": [], "intent": {**row.data, "active": False}, "switch": False, "relink": "drop"}
        await store.begin_write("openldap", "User", ids[0], "update", if_match=row.version, payload=payload)
    else:
        await store.begin_write("openldap", "User", ids[0], "delete")
    slapd.modify(f"dn: uid=ann,ou=people,{top}\nchangetype: delete\n")  # then the crash
    await client.close()

    again = Scim(await aiohttp_client(create_app(settings)), TOKEN, "/apps/openldap/scim/v2")
    assert await again.client.app[APPS]["openldap"].provisioner.store.pending("openldap") == []
    members = slapd.search(f"ou=groups,{top}", "(cn=Team)", "member")[0]["member"]
    assert [m.lower() for m in members] == [f"uid=bob,ou=people,{top}".lower()]
    resp, got = await again.get(f"/Users/{ids[0]}")
    assert resp.status == (200 if write == "deactivation" else 404), got


async def test_a_group_update_and_a_member_s_deactivation_cut_short_together_keep_the_member(
    slapd: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, aiohttp_client: Any
) -> None:
    """Journal entries 819 (add carol to Team) and 820 (bob's PATCH active false, `deactivate: {via: delete}`) pending
    at the kill, bob's entry already deleted (found by the 50-kill LDAP run with refint, kill point 27). Recovery
    settled the group first, in journal order, from the directory's list, which no longer names bob, and bob was not
    recordless yet: he left the group. Users settle first now; bob, inactive, stays in the group."""
    top = slapd.subtree("people", "groups")
    for ou in ("rnd", "sales"):
        slapd.add(f"dn: ou={ou},ou=people,{top}\nobjectClass: organizationalUnit\nou: {ou}\n")
    for name, value in (("OPENLDAP_URL", slapd.url), ("OPENLDAP_BIND_PASSWORD", ADMIN_PASSWORD), ("OPENLDAP_SCIM_TOKEN", TOKEN)):
        monkeypatch.setenv(name, value)
    settings = GatewaySettings(mappings=[shipped_mapping(top, tmp_path)], data_dir=tmp_path / "data")
    client = await aiohttp_client(create_app(settings))
    scim = Scim(client, TOKEN, "/apps/openldap/scim/v2")
    ids = []
    for name in ("ann", "bob", "carol"):
        resp, body = await scim.post("/Users", {"schemas": [USER_URN], "userName": name})
        assert resp.status == 201, body
        ids.append(body["id"])
    resp, team = await scim.post(
        "/Groups", {"schemas": [GROUP_URN], "displayName": "Team", "members": [{"value": i} for i in ids[:2]]}
    )
    assert resp.status == 201, team
    store = client.app[APPS]["openldap"].provisioner.store
    group = await store.get("openldap", "Group", team["id"])
    bob = await store.get("openldap", "User", ids[1])
    assert group is not None and bob is not None
    payload = {"add": [ids[2]], "remove": [], "intent": group.data, "switch": None}
    await store.begin_write("openldap", "Group", team["id"], "update", payload=payload)
    payload = {"add": [], "remove": [], "intent": {**bob.data, "active": False}, "switch": False, "relink": "drop"}
    await store.begin_write("openldap", "User", ids[1], "update", if_match=bob.version, payload=payload)
    slapd.modify(f"dn: uid=bob,ou=people,{top}\nchangetype: delete\n")  # then the crash
    await client.close()

    again = Scim(await aiohttp_client(create_app(settings)), TOKEN, "/apps/openldap/scim/v2")
    assert await again.client.app[APPS]["openldap"].provisioner.store.pending("openldap") == []
    members = await again.client.app[APPS]["openldap"].provisioner.store.members("openldap", team["id"])
    assert ids[1] in {m.id for m in members}, "bob, inactive, stays in the group"


@pytest.mark.xfail(strict=True, reason=SWAP_FOLLOW_UP)
async def test_a_swap_cut_short_between_a_modrdn_and_its_member_rewrite_leaves_the_group_as_meant(
    slapd: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, aiohttp_client: Any
) -> None:
    """ann (in Team) and bob swap userNames as the crash run does: bob is renamed out of the way (swap1), then ann ->
    bob and bob -> ann, both in flight. Killed after both modrdns, before ann's member rewrite: Team's uid=ann names
    bob's entry now. The group must list ann's entry (uid=bob) only."""
    top = slapd.subtree("people", "groups")
    for ou in ("rnd", "sales"):
        slapd.add(f"dn: ou={ou},ou=people,{top}\nobjectClass: organizationalUnit\nou: {ou}\n")
    for name, value in (("OPENLDAP_URL", slapd.url), ("OPENLDAP_BIND_PASSWORD", ADMIN_PASSWORD), ("OPENLDAP_SCIM_TOKEN", TOKEN)):
        monkeypatch.setenv(name, value)
    settings = GatewaySettings(mappings=[shipped_mapping(top, tmp_path)], data_dir=tmp_path / "data")
    client = await aiohttp_client(create_app(settings))
    scim = Scim(client, TOKEN, "/apps/openldap/scim/v2")
    ids = []
    for name in ("ann", "bob"):
        resp, body = await scim.post("/Users", {"schemas": [USER_URN], "userName": name})
        assert resp.status == 201, body
        ids.append(body["id"])
    resp, team = await scim.post("/Groups", {"schemas": [GROUP_URN], "displayName": "Team", "members": [{"value": ids[0]}]})
    assert resp.status == 201, team
    resp, body = await scim.patch(f"/Users/{ids[1]}", [{"op": "replace", "path": "userName", "value": "swap1"}])
    assert resp.status == 200, body
    store = client.app[APPS]["openldap"].provisioner.store
    for rid, new in ((ids[0], "bob"), (ids[1], "ann")):
        row = await store.get("openldap", "User", rid)
        assert row is not None
        payload = {"add": [], "remove": [], "intent": {**row.data, "userName": new}, "switch": None}
        await store.begin_write("openldap", "User", rid, "update", new_unique_key=new, payload=payload)
    slapd.modify(f"dn: uid=ann,ou=people,{top}\nchangetype: modrdn\nnewrdn: uid=bob\ndeleteoldrdn: 1\n")
    slapd.modify(f"dn: uid=swap1,ou=people,{top}\nchangetype: modrdn\nnewrdn: uid=ann\ndeleteoldrdn: 1\n")  # the crash
    await client.close()

    again = Scim(await aiohttp_client(create_app(settings)), TOKEN, "/apps/openldap/scim/v2")
    assert await again.client.app[APPS]["openldap"].provisioner.store.pending("openldap") == []
    members = slapd.search(f"ou=groups,{top}", "(cn=Team)", "member")[0]["member"]
    assert [m.lower() for m in members] == [f"uid=bob,ou=people,{top}".lower()]


async def test_a_group_update_cut_short_keeps_its_members_deactivated_by_deletion(
    slapd: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, aiohttp_client: Any
) -> None:
    """bob is deactivated (deactivate: {via: delete}: his entry goes, the group keeps him in the gateway's copy for his
    return); a member removal of ann from the group is cut short. Recovery replaced the copy's members with the
    directory's list, which cannot name bob, so bob left the group (found by the LDAP run: a group lost a member)."""
    top = slapd.subtree("people", "groups")
    for ou in ("rnd", "sales"):
        slapd.add(f"dn: ou={ou},ou=people,{top}\nobjectClass: organizationalUnit\nou: {ou}\n")
    for name, value in (("OPENLDAP_URL", slapd.url), ("OPENLDAP_BIND_PASSWORD", ADMIN_PASSWORD), ("OPENLDAP_SCIM_TOKEN", TOKEN)):
        monkeypatch.setenv(name, value)
    settings = GatewaySettings(mappings=[shipped_mapping(top, tmp_path)], data_dir=tmp_path / "data")
    client = await aiohttp_client(create_app(settings))
    scim = Scim(client, TOKEN, "/apps/openldap/scim/v2")
    ids = []
    for name in ("ann", "bob"):
        resp, body = await scim.post("/Users", {"schemas": [USER_URN], "userName": name})
        assert resp.status == 201, body
        ids.append(body["id"])
    resp, team = await scim.post(
        "/Groups", {"schemas": [GROUP_URN], "displayName": "Team", "members": [{"value": i} for i in ids]}
    )
    assert resp.status == 201, team
    resp, body = await scim.patch(f"/Users/{ids[1]}", [{"op": "replace", "path": "active", "value": False}])
    assert resp.status == 200, body
    store = client.app[APPS]["openldap"].provisioner.store
    row = await store.get("openldap", "Group", team["id"])
    assert row is not None
    payload = {"add": [], "remove": [ids[0]], "intent": row.data, "switch": None}
    await store.begin_write("openldap", "Group", team["id"], "update", payload=payload)  # the crash comes here
    await client.close()

    again = Scim(await aiohttp_client(create_app(settings)), TOKEN, "/apps/openldap/scim/v2")
    assert await again.client.app[APPS]["openldap"].provisioner.store.pending("openldap") == []
    members = await again.client.app[APPS]["openldap"].provisioner.store.members("openldap", team["id"])
    assert [m.id for m in members] == [ids[1]], "bob, inactive, stays in the group; ann's removal is finished"
