"""The hub's delivery cut short (tests/integration/hub_stack.py): the gateway SIGKILLed while deliveries are in flight,
and a random directory written while hr is stopped and the gateway killed; every app ends as the hub says.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

from tests.conftest import ENTERPRISE_URN
from tests.idp import entra_group
from tests.integration.hub_stack import Stack, eventually, start_stack


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
