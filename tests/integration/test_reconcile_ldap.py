"""Reconcile against a real OpenLDAP directory (slapd, started by the tests; skipped outside CI when it cannot
start) with the shipped mappings/openldap.yaml: entries added, changed and removed with the directory's own
tools (ldapadd / ldapmodify), then reconcile, --fix --apply (the mapping deactivates by deleting the entry), and
a second run that finds nothing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.cli import main
from gateway.settings import GatewaySettings
from tests.conftest import GROUP_URN, USER_URN, Scim
from tests.integration.test_ldap_openldap import BASE, TOKEN, Directory, directory

__all__ = ["directory"]


@pytest.fixture
async def scim(aiohttp_client: Any, directory: Directory, tmp_path: Path) -> Scim:
    settings = GatewaySettings(mappings=[directory.mapping], data_dir=tmp_path / "data")
    client: TestClient = await aiohttp_client(create_app(settings))
    return Scim(client, TOKEN, BASE)


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = await asyncio.to_thread(main, list(argv))
    return status, capsys.readouterr().out


async def test_reconcile_openldap(scim: Scim, directory: Directory, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ids = {}
    for uid in ("alice", "bob"):
        resp, body = await scim.post(
            "/Users", {"schemas": [USER_URN], "userName": uid, "name": {"familyName": uid.title()}, "title": "Clerk"}
        )
        assert resp.status == 201, body
        ids[uid] = body["id"]
    resp, group = await scim.post(
        "/Groups", {"schemas": [GROUP_URN], "displayName": "staff", "members": [{"value": ids["alice"]}]}
    )
    assert resp.status == 201, group
    args = ["--config", str(directory.mapping), "--data-dir", str(tmp_path / "data"), "--format", "json"]
    status, out = await run(capsys, "reconcile", "openldap", *args)
    assert status == 0, out

    top = directory.top
    directory.slapd.add(
        f"dn: uid=mallory,ou=rnd,ou=people,{top}\nobjectClass: inetOrgPerson\nuid: mallory\ncn: Mallory\nsn: M\n\n"
        f"dn: cn=rogues,ou=groups,{top}\nobjectClass: groupOfNames\ncn: rogues\nmember: uid=mallory,ou=rnd,ou=people,{top}\n"
    )
    alice_dn = directory.person("alice")["dn"][0]
    bob_dn = directory.person("bob")["dn"][0]
    staff_dn = directory.group("staff")["dn"][0]  # type: ignore[index]
    directory.slapd.modify(f"dn: {alice_dn}\nchangetype: modify\nreplace: title\ntitle: Root\n")
    directory.slapd.modify(f"dn: {staff_dn}\nchangetype: modify\nadd: member\nmember: {bob_dn}\n")

    status, out = await run(capsys, "reconcile", "openldap", *args)
    report = json.loads(out)
    assert status == 1
    assert sorted((o["type"], o["name"], o["plan"]) for o in report["orphans"]) == [
        ("Group", "rogues", "delete"),
        ("User", "mallory", "delete"),  # deactivate: {via: delete}, delete: delete
    ]
    assert [(d["id"], d["attribute"], d["app"], d["gateway"]) for d in report["drift"]] == [
        (ids["alice"], "title", "Root", "Clerk")
    ]
    assert [(m["group"], m["only_in_app"]) for m in report["membership"]] == [(group["id"], [ids["bob"]])]

    status, out = await run(capsys, "reconcile", "openldap", *args, "--fix", "--apply")
    assert status == 1
    assert sorted((f["fix"], f["name"], f["outcome"]) for f in json.loads(out)["fixes"]) == [
        ("delete", "mallory", "done"), ("delete", "rogues", "done"), ("revert", "alice", "done"), ("revert", "staff", "done"),
    ]  # fmt: skip
    assert directory.people("(uid=mallory)") == [] and directory.group("rogues") is None
    assert directory.person("alice")["title"] == ["Clerk"] and directory.member_uids("staff") == ["alice"]
    status, out = await run(capsys, "reconcile", "openldap", *args)
    assert status == 0, out
