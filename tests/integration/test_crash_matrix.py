"""The crash matrix, continued (issue 16): SIGKILL at random points for the configurations test_crash.py does not run.

- An SQL app on PostgreSQL: the legacy example (mappings/legacy_pg.yaml, its schema in a fresh database) whose
  DELETE deactivates the person and forgets the resource (`delete: deactivate`): the app keeps the inactive row.
- The LDAP directory: a real slapd, the shipped mappings/openldap.yaml, whose deactivation deletes the entry
  (`deactivate: {via: delete}`) and whose reactivation creates it again.
- The REST hr app through outages: the fake answers 503 to everything for a while during some stretches of the
  stream, so the breaker opens; its refusals must leave no journal row and never count as acknowledged.
- The hub's delivery on a PostgreSQL store: the IdP writes to /hub/scim/v2, the gateway delivering to the hr app is
  killed; once the outbox drains, the app holds what the hub's directory and its rules say, each account once.

Every configuration's write stream has POST, PUT, PATCH, DELETE, Bulk with and without failOnErrors, member
changes, renames and swaps (two users exchanging their userNames, the two PATCHes in flight at once). The loop,
the model of what the IdP was told and the checks are crash_loop.py's. SCIM_GATEWAY_CRASH_KILLS sets the kill
points per configuration (12 by default; 50 for the documented full run).
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.directories import ADMIN_DN, ADMIN_PASSWORD
from tests.integration.crash_loop import (
    CRASH_KILLS,
    READER,
    ROOT,
    TOKEN,
    Closers,
    GatewayProcess,
    Holdings,
    HrFake,
    Model,
    Outage,
    cleanup_fixture,  # noqa: F401 (the fixture `cleanup`)
    crash_loop,
    hr_app_holdings,
    posix_processes,
    report,
)


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
    from tests.services import create_pg_database, drop_pg_database, load_schema, pg_url

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
        gateway, "legacy_pg", model, holdings, seed=5101, kills=CRASH_KILLS, extended=True, swaps=True
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


@posix_processes
async def test_crashes_with_the_ldap_directory(
    slapd: Any, tmp_path: Path, cleanup: Closers, capsys: pytest.CaptureFixture[str]
) -> None:
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

    tally = await crash_loop(gateway, "openldap", model, holdings, seed=5102, kills=CRASH_KILLS, extended=True, swaps=True)
    report("ldap directory (deactivate: via delete)", tally, model, time.monotonic() - started, capsys)


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
            gateway, "hr", model, holdings, seed=5104, kills=CRASH_KILLS, app_idle=app_idle, extended=True, swaps=True,
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
