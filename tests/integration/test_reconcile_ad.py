"""Reconcile against a real Active Directory (a Samba AD DC started by the tests; skipped outside CI when it
cannot start) with the shipped mappings/active_directory.yaml, told to deactivate orphans: an account made
with ldapadd and enabled there is disabled by --fix --apply (the ACCOUNTDISABLE bit of userAccountControl, as
the mapping's `active` rule means), a title changed there is put back, and a second run finds nothing."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.cli import main
from gateway.settings import GatewaySettings
from tests.conftest import Scim
from tests.idp import entra_group, entra_user
from tests.integration.test_ldap_ad import BASE, DISABLED, TOKEN, Directory, directory

__all__ = ["directory"]


@pytest.fixture
async def scim(aiohttp_client: Any, directory: Directory, tmp_path: Path) -> Scim:
    directory.mapping.write_text(directory.mapping.read_text() + "reconcile:\n  orphans: deactivate\n")
    settings = GatewaySettings(mappings=[directory.mapping], data_dir=tmp_path / "data")
    client: TestClient = await aiohttp_client(create_app(settings))
    return Scim(client, TOKEN, BASE)


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = await asyncio.to_thread(main, list(argv))
    return status, capsys.readouterr().out


async def test_reconcile_active_directory(
    scim: Scim, directory: Directory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = directory
    resp, alice = await scim.post("/Users", entra_user(d.upn("alice"), "Alice", "Smith"))
    assert resp.status == 201, alice
    resp, group = await scim.post("/Groups", entra_group(f"Staff {d.tag}", [alice["id"]]))
    assert resp.status == 201, group
    args = ["--config", str(d.mapping), "--data-dir", str(tmp_path / "data"), "--format", "json"]
    status, out = await run(capsys, "reconcile", "active_directory", *args)
    assert status == 0, out

    upn = d.upn("mallory")
    dn = f"CN=Mallory Made,{d.users_ou}"
    password = base64.b64encode('"Orphan-Pass-2024!x"'.encode("utf-16-le")).decode()
    d.dc.add(f"dn: {dn}\nobjectClass: user\nsAMAccountName: mall.{d.tag}\nuserPrincipalName: {upn}\nunicodePwd:: {password}\n")
    d.dc.modify(f"dn: {dn}\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: 512\n")
    assert not d.uac(upn) & DISABLED
    alice_dn = d.user(d.upn("alice"))["dn"][0]
    d.dc.modify(f"dn: {alice_dn}\nchangetype: modify\nreplace: title\ntitle: Domain Admin\n")

    status, out = await run(capsys, "reconcile", "active_directory", *args)
    report = json.loads(out)
    assert status == 1
    assert [(o["name"], o["plan"]) for o in report["orphans"]] == [(upn, "deactivate")]
    assert [(x["id"], x["attribute"], x["app"]) for x in report["drift"]] == [(alice["id"], "title", "Domain Admin")]

    status, out = await run(capsys, "reconcile", "active_directory", *args, "--fix", "--apply")
    assert sorted((f["fix"], f["outcome"]) for f in json.loads(out)["fixes"]) == [("deactivate", "done"), ("revert", "done")]
    assert d.uac(upn) & DISABLED, "the orphan is disabled in AD, not deleted"
    assert d.user(d.upn("alice"))["title"] == ["Engineer"]
    status, out = await run(capsys, "reconcile", "active_directory", *args)
    report = json.loads(out)
    assert status == 0 and [o["name"] for o in report["inactive"]] == [upn], out
