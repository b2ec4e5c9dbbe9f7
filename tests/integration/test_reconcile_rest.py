"""Reconcile against the fake HR app over REST (tests/fakes/hr_app.py on loopback), changed behind the gateway's
back through the app's own API; an HR mapping that deactivates orphans; the app down; and the access review
of people provisioned into two apps (HR and the demo)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from gateway.app import create_app
from gateway.cli import main
from gateway.demo import demo_mapping_path, ensure_demo_database
from gateway.settings import GatewaySettings
from tests.conftest import GROUP_URN, TOKEN, USER_URN, Scim, free_port
from tests.fakes.hr_app import HR_STATE, HrState, create_hr_app, serve

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "hr-api-key-for-tests-0123"
HR_TOKEN = "hr-scim-token-0123456789"


@pytest.fixture
async def hr(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[HrState, str]]:
    app = create_hr_app(api_key=API_KEY)
    async with serve(app) as url:
        monkeypatch.setenv("HR_API_URL", url)
        monkeypatch.setenv("HR_API_KEY", API_KEY)
        monkeypatch.setenv("HR_SCIM_TOKEN", "unused-token-0123456789")
        yield app[HR_STATE], url


@pytest.fixture
def mappings(tmp_path: Path) -> Path:
    """The shipped HR mapping, told to deactivate the accounts no resource manages; and the demo's."""
    folder = tmp_path / "mappings"
    folder.mkdir()
    text = (ROOT / "mappings" / "hr_rest.yaml").read_text()
    (folder / "hr.yaml").write_text(text + "reconcile:\n  orphans: deactivate\n")
    (folder / "demo.yaml").write_text(demo_mapping_path().read_text())
    return folder


@pytest.fixture
async def gateway(aiohttp_client: Any, hr: tuple[HrState, str], mappings: Path, tmp_path: Path) -> TestClient:
    data = tmp_path / "data"
    ensure_demo_database(data)
    settings = GatewaySettings(
        mappings=sorted(mappings.iterdir()),
        data_dir=data,
        extra_tokens={"hr": [SecretStr(HR_TOKEN)], "demo": [SecretStr(TOKEN)]},
    )
    return await aiohttp_client(create_app(settings))


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = await asyncio.to_thread(main, list(argv))
    out = capsys.readouterr()
    return status, out.out, out.err


async def app_call(url: str, method: str, path: str, body: Any = None) -> Any:
    """The HR app's own API, as someone working in the app (not through the gateway) calls it."""
    async with aiohttp.ClientSession(headers={"X-API-Key": API_KEY}) as session:
        async with session.request(method, url + path, json=body) as resp:
            assert resp.status < 300, await resp.text()
            return await resp.json() if resp.status != 204 else None


async def test_reconcile_rest_app_deactivates_orphans_as_its_mapping_says(
    gateway: TestClient, hr: tuple[HrState, str], mappings: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state, url = hr
    scim = Scim(gateway, HR_TOKEN, "/apps/hr/scim/v2")
    ids = {}
    for login in ("ann", "bob", "cy"):
        resp, body = await scim.post("/Users", {"schemas": [USER_URN], "userName": login, "title": "Clerk", "active": True})
        assert resp.status == 201, body
        ids[login] = body["id"]
    resp, group = await scim.post("/Groups", {"schemas": [GROUP_URN], "displayName": "Staff", "members": [{"value": ids["ann"]}]})
    assert resp.status == 201
    args = ["--config", str(mappings), "--data-dir", str(tmp_path / "data")]
    assert (await run(capsys, "reconcile", "hr", *args))[0] == 0

    mallory = await app_call(url, "POST", "/users", {"login": "mallory", "first_name": "M", "status": "enabled"})
    await app_call(url, "PATCH", f"/users/{state.user_by_login('ann')['id']}", {"title": "Admin"})  # type: ignore[index]
    await app_call(url, "DELETE", f"/users/{state.user_by_login('cy')['id']}")  # type: ignore[index]
    staff = state.group_by_name("Staff")
    assert staff is not None
    await app_call(url, "POST", f"/groups/{staff['id']}/members", {"user_id": state.user_by_login("bob")["id"]})  # type: ignore[index]
    await app_call(url, "POST", f"/groups/{staff['id']}/members", {"user_id": mallory["id"]})

    status, out, _ = await run(capsys, "reconcile", "hr", *args, "--format", "json")
    report = json.loads(out)
    assert status == 1
    [orphan] = report["orphans"]
    assert (orphan["name"], orphan["native_id"], orphan["plan"]) == ("mallory", str(mallory["id"]), "deactivate")
    assert [v["id"] for v in report["vanished"]] == [ids["cy"]]
    assert [(d["id"], d["attribute"], d["app"], d["gateway"]) for d in report["drift"]] == [
        (ids["ann"], "title", "Admin", "Clerk")
    ]
    [members] = report["membership"]
    # mallory is in the group too, but no resource of the gateway: a member the table cannot hold, not a difference.
    assert (members["group"], members["only_in_app"], members["only_in_gateway"]) == (group["id"], [ids["bob"]], [])

    calls = len(state.bodies)
    status, out, _ = await run(capsys, "reconcile", "hr", *args, "--fix")
    assert status == 1 and "dry run" in out and len(state.bodies) == calls, "a dry run calls the app for no write"
    status, out, _ = await run(capsys, "reconcile", "hr", *args, "--fix", "--apply", "--format", "json")
    fixes = {(f["fix"], f["name"]): f["outcome"] for f in json.loads(out)["fixes"]}
    assert fixes == {
        ("deactivate", "mallory"): "done",
        ("forget", "cy"): "done",
        ("revert", "ann"): "done",
        ("revert", "Staff"): "done",
    }
    assert state.user_by_login("mallory")["status"] == "disabled"  # type: ignore[index]
    assert state.user_by_login("ann")["title"] == "Clerk"  # type: ignore[index]
    assert state.member_logins("Staff") == ["ann", "mallory"], "bob, added behind the gateway's back, is removed"
    status, out, _ = await run(capsys, "reconcile", "hr", *args)
    assert status == 0, out
    assert "Unmanaged but inactive (not findings): 1: User mallory" in out


async def test_reconcile_exits_2_when_the_app_is_down(
    gateway: TestClient, mappings: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HR_API_URL", f"http://127.0.0.1:{free_port()}/api")
    status, out, err = await run(capsys, "reconcile", "hr", "--config", str(mappings), "--data-dir", str(tmp_path / "data"))
    assert status == 2 and out == "" and "reconcile hr: could not run" in err and "Traceback" not in err


async def test_review_lists_people_provisioned_into_two_apps(
    gateway: TestClient, mappings: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hr_scim = Scim(gateway, HR_TOKEN, "/apps/hr/scim/v2")
    demo_scim = Scim(gateway)
    made: dict[tuple[str, str], str] = {}
    for scim, app, name in ((hr_scim, "hr", "Ann.Lee"), (demo_scim, "demo", "ann.lee"), (demo_scim, "demo", "zed")):
        resp, body = await scim.post("/Users", {"schemas": [USER_URN], "userName": name, "externalId": f"ext-{name.lower()}"})
        assert resp.status == 201, body
        made[(app, name)] = body["id"]
    resp, _ = await demo_scim.post(
        "/Groups", {"schemas": [GROUP_URN], "displayName": "Ops", "members": [{"value": made[("demo", "ann.lee")]}]}
    )
    assert resp.status == 201
    out_file = tmp_path / "review.csv"
    status, _, err = await run(capsys, "review", "--data-dir", str(tmp_path / "data"), "--output", str(out_file))
    assert status == 0, err
    rows = list(csv.DictReader(io.StringIO(out_file.read_text())))
    by_scim = {r["scimId"]: r for r in rows}
    assert len(rows) == 3
    hr_ann, demo_ann = by_scim[made[("hr", "Ann.Lee")]], by_scim[made[("demo", "ann.lee")]]
    assert hr_ann["person"] == demo_ann["person"] == "ann.lee"
    assert (hr_ann["app"], hr_ann["groups"], demo_ann["app"], demo_ann["groups"]) == ("hr", "", "demo", "Ops")
    assert hr_ann["nativeId"] and demo_ann["nativeId"] and hr_ann["active"] == "true", "the HR app enables a new user"
    assert by_scim[made[("demo", "zed")]]["person"] == "zed"
    status, out, _ = await run(capsys, "review", "--config", str(mappings / "hr.yaml"), "--data-dir", str(tmp_path / "data"))
    assert status == 0 and [r["app"] for r in csv.DictReader(io.StringIO(out))] == ["hr"]


async def test_review_who_shows_one_persons_footprint(
    gateway: TestClient, mappings: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hr_scim, demo_scim = Scim(gateway, HR_TOKEN, "/apps/hr/scim/v2"), Scim(gateway)
    resp, hr_ann = await hr_scim.post("/Users", {"schemas": [USER_URN], "userName": "Ann.Lee", "externalId": "E-7"})
    assert resp.status == 201
    resp, demo_ann = await demo_scim.post("/Users", {"schemas": [USER_URN], "userName": "someone.else", "externalId": "E-7"})
    assert resp.status == 201
    data = ["--data-dir", str(tmp_path / "data")]
    for who in ("ann.lee", "E-7", demo_ann["id"]):
        status, out, err = await run(capsys, "review", *data, "--who", who)
        assert status == 0, err
        person = json.loads(out)["person"]
        assert sorted((a["app"], a["scim_id"]) for a in person["accounts"]) == [("demo", demo_ann["id"]), ("hr", hr_ann["id"])]
        hr = next(a for a in person["accounts"] if a["app"] == "hr")
        assert hr["native_id"] and [(w["op"], w["state"]) for w in hr["writes"]] == [("create", "done")]
    status, _, err = await run(capsys, "review", *data, "--who", "nobody")
    assert status == 1 and "no account of any app matches 'nobody'" in err
