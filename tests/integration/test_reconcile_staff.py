"""Reconcile where membership is kept on each user's record (the staff fake: team codes on each employee,
`members: {via: user_field}`): a team code added to an employee in the app is membership drift of that team,
and --fix --apply takes it off the employee's record again."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gateway.cli import main
from tests.conftest import GROUP_URN, USER_URN, Scim
from tests.fakes.staff_app import StaffState
from tests.integration.test_rest_staff import MAPPING, create, employee, scim, state

__all__ = ["scim", "state"]


async def test_membership_kept_on_the_users_records(
    scim: Scim, state: StaffState, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = [await create(scim, "/Users", {"schemas": [USER_URN], "userName": n}) for n in "ab"]
    group = await create(scim, "/Groups", {"schemas": [GROUP_URN], "displayName": "Ops", "members": [{"value": a["id"]}]})
    args = ["--config", str(MAPPING), "--data-dir", str(tmp_path / "data"), "--format", "json"]
    assert await asyncio.to_thread(main, ["reconcile", "staff", *args]) == 0
    capsys.readouterr()

    employee(state, "b")["teams"].append("ops")  # HR adds b to the team in the app itself
    assert await asyncio.to_thread(main, ["reconcile", "staff", *args]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [(m["group"], m["only_in_app"], m["only_in_gateway"]) for m in report["membership"]] == [(group["id"], [b["id"]], [])]
    assert report["drift"] == [] and report["orphans"] == []

    assert await asyncio.to_thread(main, ["reconcile", "staff", *args, "--fix", "--apply"]) == 1
    assert [(f["fix"], f["outcome"]) for f in json.loads(capsys.readouterr().out)["fixes"]] == [("revert", "done")]
    assert state.team_members("Ops") == ["a"]
    assert await asyncio.to_thread(main, ["reconcile", "staff", *args]) == 0
