"""`scim-gateway reconcile` against the demo SQLite app: accounts made, changed and deleted behind the gateway's
back (in the app's own database), then reconciled: each finding, each format, the exit codes, a dry run that
changes nothing, --apply doing what the demo mapping says, and a second run that finds nothing.

The gateway serves while the command runs (its own process would share the store the same way)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.store import Query, Store
from tests.conftest import GROUP_URN, USER_URN, Scim
from tests.demo_rows import emp_no, logins, team_pairs

pytestmark = pytest.mark.both_stores  # the same tests on the SQLite and the PostgreSQL store


def cli_args(data_dir: Path, store_overrides: dict[str, Any]) -> list[str]:
    args = ["--data-dir", str(data_dir)]
    if "store_url" in store_overrides:
        args += ["--store", store_overrides["store_url"].get_secret_value()]
    return args


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = await asyncio.to_thread(main, list(argv))
    out = capsys.readouterr()
    return status, out.out, out.err


async def provision(scim: Scim) -> dict[str, str]:
    ids = {}
    for name in ("ann", "bob", "cy", "dee"):
        resp, body = await scim.post(
            "/Users",
            {"schemas": [USER_URN], "userName": name, "name": {"givenName": name.title()}, "title": "Clerk", "active": True},
        )
        assert resp.status == 201, body
        ids[name] = body["id"]
    resp, group = await scim.post(
        "/Groups", {"schemas": [GROUP_URN], "displayName": "Ops", "members": [{"value": ids["ann"]}, {"value": ids["bob"]}]}
    )
    assert resp.status == 201, group
    ids["Ops"] = group["id"]
    return ids


def behind_the_back(db: sqlite3.Connection) -> None:
    db.execute("INSERT INTO employees (login, first_nm, status) VALUES ('eve', 'Eve', 'A')")  # an orphan
    db.execute("UPDATE employees SET job_title = 'Boss', first_nm = 'Robert' WHERE login = 'bob'")  # drift
    db.execute("DELETE FROM employees WHERE login = 'cy'")  # vanished
    dee = emp_no(db, "dee")
    db.execute("DELETE FROM employees WHERE login = 'dee'")  # vanished, then made again by hand: an orphan to link
    db.execute("INSERT INTO employees (login, first_nm, job_title, status) VALUES ('DEE', 'Dee', 'Clerk', 'A')")
    assert emp_no(db, "dee") != dee
    team = db.execute("SELECT team_id FROM teams WHERE team_name = 'Ops'").fetchone()[0]
    db.execute("DELETE FROM team_members WHERE team_id = ? AND emp_no = ?", (team, emp_no(db, "bob")))  # membership
    db.commit()


def snapshot(db: sqlite3.Connection) -> Any:
    return (
        [tuple(r) for r in db.execute("SELECT * FROM employees ORDER BY emp_no")],
        [tuple(r) for r in db.execute("SELECT * FROM team_members ORDER BY team_id, emp_no")],
    )


async def store_state(store: Store) -> Any:
    _n, users = await store.query("demo", "User", Query())
    return sorted((r.id, r.native_id, r.version, json.dumps(r.data, sort_keys=True)) for r in users), await store.pending("demo")


async def test_reconcile_finds_fixes_and_then_finds_nothing(
    scim: Scim, client: Any, data_dir: Path, store_overrides: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.http.keys import APPS

    store = client.app[APPS]["demo"].provisioner.store
    ids = await provision(scim)
    args = cli_args(data_dir, store_overrides)
    status, out, _ = await run(capsys, "reconcile", "demo", *args)
    assert status == 0, out
    assert "0 orphans, 0 vanished, 0 drifted attributes, 0 groups whose members differ" in out

    db = sqlite3.connect(data_dir / "demo.db")
    db.row_factory = sqlite3.Row
    behind_the_back(db)
    report_file = data_dir / "report.json"
    status, out, err = await run(capsys, "reconcile", "demo", *args, "--format", "json", "--output", str(report_file))
    assert status == 1 and out == "" and "2 orphans, 2 vanished" in err
    report = json.loads(report_file.read_text())
    orphans = {o["name"]: o for o in report["orphans"]}
    assert sorted(orphans) == ["DEE", "eve"]
    assert (orphans["eve"]["plan"], orphans["eve"]["resource"]) == ("delete", None)
    assert orphans["eve"]["match"] == {"attribute": "userName", "value": "eve"}
    assert (orphans["DEE"]["plan"], orphans["DEE"]["resource"]) == ("link", ids["dee"])
    assert sorted(v["id"] for v in report["vanished"]) == sorted([ids["cy"], ids["dee"]])
    assert sorted((d["id"], d["attribute"], d["app"], d["gateway"]) for d in report["drift"]) == [
        (ids["bob"], "name.givenName", "Robert", "Bob"),
        (ids["bob"], "title", "Boss", "Clerk"),
    ]
    [members] = report["membership"]
    assert (members["group"], members["only_in_app"], members["only_in_gateway"]) == (ids["Ops"], [], [ids["bob"]])
    assert members["names"] == {ids["bob"]: "bob"}
    assert report["found"] == 7 and report["counts"]["User"] == {"in_app": 4, "linked": 4}
    saved = await store.last_report("demo")
    assert saved is not None and saved.found == 7 and saved.ran_at == report["ran_at"]

    status, out, _ = await run(capsys, "reconcile", "demo", *args, "--format", "csv")
    assert status == 1
    rows = list(csv.DictReader(io.StringIO(out)))
    assert sorted(r["finding"] for r in rows) == ["drift", "drift", "membership", "orphan", "orphan", "vanished", "vanished"]
    assert next(r for r in rows if r["finding"] == "membership")["gateway"] == ids["bob"]
    status, out, _ = await run(capsys, "reconcile", "demo", *args)
    assert status == 1
    for heading in ("Orphans:", "Vanished:", "Drift:", "Membership:"):
        assert heading in out
    assert "Robert" in out and "Boss" in out

    # The dry run: the plan, and nothing changed in the app or the table.
    before_app, before_store = snapshot(db), await store_state(store)
    status, out, _ = await run(capsys, "reconcile", "demo", *args, "--fix", "--format", "json")
    plan = json.loads(out)["fixes"]
    assert status == 1 and {(f["fix"], f.get("name")) for f in plan} == {
        ("delete", "eve"), ("link", "DEE"), ("forget", "cy"), ("revert", "bob"), ("revert", "Ops"),
    }  # fmt: skip
    assert all(f["outcome"] == "planned" for f in plan)
    assert snapshot(db) == before_app and await store_state(store) == before_store
    assert not (data_dir / "audit.log").exists() or "reconcile-fix" not in (data_dir / "audit.log").read_text()

    status, out, _ = await run(capsys, "reconcile", "demo", *args, "--fix", "--apply", "--format", "json")
    fixes = json.loads(out)["fixes"]
    assert status == 1 and sorted((f["fix"], f["outcome"]) for f in fixes) == [
        ("delete", "done"), ("forget", "done"), ("link", "done"), ("revert", "done"), ("revert", "done"),
    ], fixes  # fmt: skip
    assert "eve" not in logins(db), "the orphan is deleted, as the demo mapping's delete says"
    assert ("Ops", "bob") in team_pairs(db), "the membership the IdP gave is back"
    bob = db.execute("SELECT first_nm, job_title FROM employees WHERE login = 'bob'").fetchone()
    assert tuple(bob) == ("Bob", "Clerk")
    resp, dee = await scim.get(f"/Users/{ids['dee']}")
    assert resp.status == 200 and dee["userName"] == "DEE", "the resource is linked to the record made by hand"
    resp, _ = await scim.get(f"/Users/{ids['cy']}")
    assert resp.status == 404
    audit = [json.loads(line) for line in (data_dir / "audit.log").read_text().splitlines()]
    lines = [a for a in audit if a.get("op") == "reconcile-fix"]
    assert sorted(a["fix"] for a in lines) == ["delete", "forget", "link", "revert", "revert"]
    assert all(a["app"] == "demo" and a["outcome"] == "done" and a["credential"] == "reconcile" for a in lines)
    assert await store.pending("demo") == []

    status, out, _ = await run(capsys, "reconcile", "demo", *args)
    assert status == 0, out
    assert "0 orphans, 0 vanished, 0 drifted attributes, 0 groups whose members differ" in out
    db.close()


async def test_reconcile_refuses_what_it_cannot_run(data_dir: Path, capsys: pytest.CaptureFixture[str], client: Any) -> None:
    status, _, err = await run(capsys, "reconcile", "nope", "--data-dir", str(data_dir))
    assert status == 2 and "no app 'nope'" in err
    status, _, err = await run(capsys, "reconcile", "demo", "--data-dir", str(data_dir), "--apply")
    assert status == 2 and "--apply goes with --fix" in err
    status, _, err = await run(capsys, "reconcile", "demo", "--data-dir", str(data_dir), "--store", "postgresql://127.0.0.1:1/x")
    assert status == 2 and "correlation store" in err


async def test_orphans_adopted_when_the_mapping_says_so(
    data_dir: Path, store_overrides: dict[str, Any], capsys: pytest.CaptureFixture[str], client: Any
) -> None:
    """`reconcile: {orphans: adopt}`: an orphan is linked as a new resource (as import does), its team too."""
    from gateway.demo import demo_mapping_path
    from gateway.http.keys import APPS

    mapping = data_dir / "adopting.yaml"
    mapping.write_text(demo_mapping_path().read_text() + "reconcile:\n  orphans: adopt\n")
    db = sqlite3.connect(data_dir / "demo.db")
    db.execute("INSERT INTO employees (login, first_nm, status) VALUES ('walt', 'Walt', 'A')")
    db.execute("INSERT INTO teams (team_name) VALUES ('Night shift')")
    db.execute("INSERT INTO team_members SELECT t.team_id, e.emp_no FROM teams t, employees e WHERE e.login = 'walt'")
    db.commit()
    args = ["--config", str(mapping), *cli_args(data_dir, store_overrides)]
    status, out, _ = await run(capsys, "reconcile", "demo", *args, "--fix", "--apply", "--format", "json")
    fixes = json.loads(out)["fixes"]
    assert status == 1 and sorted((f["fix"], f["name"], f["outcome"]) for f in fixes) == [
        ("adopt", "Night shift", "done"),
        ("adopt", "walt", "done"),
    ]
    store = client.app[APPS]["demo"].provisioner.store
    walt = next(f for f in fixes if f["name"] == "walt")
    [entry] = await store.writes_of("demo", f"native:User:{walt['native_id']}")
    assert (entry.op, entry.state) == ("reconcile", "done")
    row = await store.get("demo", "User", walt["id"])
    assert row is not None and row.data["name"]["givenName"] == "Walt"
    team = next(f for f in fixes if f["name"] == "Night shift")
    assert [m.id for m in await store.members("demo", team["id"])] == [walt["id"]], "its member, adopted first, is linked"
    status, out, _ = await run(capsys, "reconcile", "demo", *args)
    assert status == 0, out
    db.close()


async def test_writes_in_flight_are_left_alone_and_a_cut_short_fix_is_ended_by_recovery(
    scim: Scim, client: Any, data_dir: Path
) -> None:
    from gateway.http.keys import APPS
    from gateway.provisioning.reconcile_fix import plan

    provisioner = client.app[APPS]["demo"].provisioner
    store = provisioner.store
    ids = await provision(scim)
    db = sqlite3.connect(data_dir / "demo.db")
    # A create journaled and claimed whose app call has made the record but not settled yet: not an orphan to delete.
    await store.begin_create("demo", "User", "in-flight", "zoe", {"userName": "zoe"}, "2026-01-01T00:00:00Z")
    db.execute("INSERT INTO employees (login, status) VALUES ('zoe', 'A')")
    # An update in flight on bob, whose record already has the new title: no drift while it settles.
    await store.begin_write("demo", "User", ids["bob"], "update")
    db.execute("UPDATE employees SET job_title = 'Boss' WHERE login = 'bob'")
    db.commit()
    report = await provisioner.reconcile()
    [zoe] = report["orphans"]
    assert (zoe["name"], zoe["plan"]) == ("zoe", "none") and "in flight" in zoe["why"]
    assert report["drift"] == [] and plan(report) == []

    seq = await store.begin_fix("demo", "User", "native:User:99", "delete", {"native_id": "99"})
    await provisioner.recover()
    [entry] = await store.writes_of("demo", "native:User:99")
    assert (entry.seq, entry.state) == (seq, "aborted") and "cut short" in (entry.detail or "")
    db.close()


async def test_drift_accepted_into_the_copy_when_the_mapping_says_so(
    scim: Scim, data_dir: Path, store_overrides: dict[str, Any], capsys: pytest.CaptureFixture[str], client: Any
) -> None:
    """`reconcile: {drift: accept}`: the app's values and members are taken into the copy; the app is not written."""
    from gateway.demo import demo_mapping_path
    from gateway.http.keys import APPS

    ids = await provision(scim)
    mapping = data_dir / "accepting.yaml"
    mapping.write_text(demo_mapping_path().read_text() + "reconcile:\n  drift: accept\n")
    db = sqlite3.connect(data_dir / "demo.db")
    db.row_factory = sqlite3.Row
    db.execute("UPDATE employees SET job_title = 'Boss' WHERE login = 'bob'")
    db.execute("DELETE FROM team_members WHERE emp_no = ?", (emp_no(db, "ann"),))
    db.commit()
    before = snapshot(db)
    args = ["--config", str(mapping), *cli_args(data_dir, store_overrides)]
    status, out, _ = await run(capsys, "reconcile", "demo", *args, "--fix", "--apply", "--format", "json")
    assert status == 1 and sorted((f["fix"], f["name"], f["outcome"]) for f in json.loads(out)["fixes"]) == [
        ("accept", "Ops", "done"),
        ("accept", "bob", "done"),
    ]
    assert snapshot(db) == before, "accepting writes nothing to the app"
    store = client.app[APPS]["demo"].provisioner.store
    bob = await store.get("demo", "User", ids["bob"])
    assert bob is not None and bob.data["title"] == "Boss"
    assert [m.id for m in await store.members("demo", ids["Ops"])] == [ids["bob"]]
    assert [(w.op, w.state) for w in await store.writes_of("demo", ids["bob"])][0] == ("reconcile", "done")
    status, out, _ = await run(capsys, "reconcile", "demo", *args)
    assert status == 0, out
    db.close()


async def test_a_fix_checks_again_before_it_runs(scim: Scim, client: Any, data_dir: Path) -> None:
    """The report may be old by the time --apply runs: an orphan linked meanwhile, or whose name a create in flight
    now holds, is skipped, not deleted."""
    from gateway.http.keys import APPS

    provisioner = client.app[APPS]["demo"].provisioner
    db = sqlite3.connect(data_dir / "demo.db")
    db.executemany("INSERT INTO employees (login, status) VALUES (?, 'A')", [("kim",), ("lou",)])
    db.commit()
    report = await provisioner.reconcile()
    assert sorted((o["name"], o["plan"]) for o in report["orphans"]) == [("kim", "delete"), ("lou", "delete")]
    resp, _ = await scim.get("/Users?filter=userName%20eq%20%22kim%22")  # the IdP's lookup adopts kim
    assert resp.status == 200
    await provisioner.store.begin_create("demo", "User", "lou-in-flight", "lou", {"userName": "lou"}, "2026-01-01T00:00:00Z")
    fixes = {f["name"]: (f["outcome"], f["detail"]) for f in await provisioner.apply_fixes(report)}
    assert fixes["kim"] == ("skipped", "linked since the report")
    assert fixes["lou"][0] == "skipped" and "in flight" in fixes["lou"][1]
    assert {"kim", "lou"} <= {r[0] for r in db.execute("SELECT login FROM employees")}
    db.close()
