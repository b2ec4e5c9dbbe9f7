"""The directory's own edges, through the gateway into a real slapd with the shipped mappings/openldap.yaml:
injection strings landing verbatim as data, the directory's refusals as SCIM errors that change nothing,
an unreachable or wrongly bound directory as 503, `check --connect`, `translate` and `import`."""

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
from tests.conftest import GROUP_URN, Scim, free_port, user_body
from tests.demo_rows import q
from tests.integration import test_ldap_openldap as openldap
from tests.integration.test_ldap_openldap import BASE, TOKEN, Directory, create

# The OpenLDAP module's fixtures: a fresh subtree with the shipped mapping, and a gateway on it.
directory = openldap.directory
client = openldap.client
scim = openldap.scim

# The usual LDAP injection strings: filter syntax, DN syntax, escapes, a NUL byte, leading and trailing specials.
HOSTILE = [
    "*)(uid=*",
    "*",
    "x)(|(objectClass=*)",
    ",ou=admins",
    "a,ou=admins,dc=gw",
    "a+cn=b",
    "back\\slash",
    "#lead",
    " pad ",
    "nul\x00byte",
    'quo"te',
    "<semi>;",
    "ünï€ødé",
]


async def gateway(aiohttp_client: Any, mapping: Path, data: Path) -> Scim:
    app: TestClient = await aiohttp_client(create_app(GatewaySettings(mappings=[mapping], data_dir=data)))
    return Scim(app, TOKEN, BASE)


async def test_injection_strings_land_verbatim_as_data(scim: Scim, directory: Directory) -> None:
    created: dict[str, str] = {}
    for i, value in enumerate(HOSTILE):
        body = user_body(f"h{i}-{value}", title=value, displayName=value)
        resp, data = await scim.post("/Users", body)
        if "\x00" in value:
            # A directory string cannot hold NUL: a clear 400 naming the attribute, and nothing written.
            assert (resp.status, data.get("scimType")) == (400, "invalidValue"), data
            assert directory.people("(title=nul*)") == []
            continue
        assert resp.status == 201, (value, data)
        created[value] = data["id"]
    everyone = directory.people()
    assert len(everyone) == len(created)
    by_uid = {e["uid"][0]: e for e in everyone}
    for i, value in enumerate(HOSTILE):
        if value not in created:
            continue
        entry = by_uid[f"h{i}-{value}".strip() if False else f"h{i}-{value}"]
        assert entry["title"] == [value] and entry["cn"] == [value], entry
        assert entry["dn"][0].endswith(f",ou=people,{directory.top}"), entry["dn"]  # never a DN elsewhere
        # Looked up by each value: exactly the one user, as the directory holds it (a filter value, escaped).
        resp, found = await scim.get("/Users?filter=" + q(f"userName eq {json.dumps(f'h{i}-{value}')}"))
        assert [r["id"] for r in found["Resources"]] == [created[value]], (value, found)
        resp, found = await scim.get("/Users?filter=" + q(f"title eq {json.dumps(value)}"))
        assert [r["id"] for r in found["Resources"]] == [created[value]], (value, found)
    # Groups named with DN syntax, and a member added.
    some = next(iter(created.values()))
    for name in (",ou=admins", "*)(cn=*", "g+cn=x"):
        group = await create(scim, "/Groups", {"schemas": [GROUP_URN], "displayName": name, "members": [{"value": some}]})
        assert directory.group(name.replace("*", "\\2a").replace("(", "\\28").replace(")", "\\29")) is not None
        resp, data = await scim.get(f"/Groups/{group['id']}")
        assert (data["displayName"], [m["value"] for m in data["members"]]) == (name, [some])


async def test_an_existing_entry_is_found_and_adopted_not_duplicated(scim: Scim, directory: Directory) -> None:
    directory.slapd.add(
        f"dn: uid=carol,ou=people,{directory.top}\nobjectClass: inetOrgPerson\nuid: carol\ncn: Carol King\nsn: King\nmail: carol@x.example\n"
    )
    # Entra's first question: does carol exist? The lookup asks the directory and links the entry.
    resp, data = await scim.get("/Users?filter=" + q('userName eq "carol"'))
    assert (resp.status, data["totalResults"]) == (200, 1), data
    carol = data["Resources"][0]
    assert (carol["name"]["familyName"], carol["emails"][0]["value"]) == ("King", "carol@x.example")
    # A create of the same name is a conflict, and the directory still has one carol.
    resp, data = await scim.post("/Users", user_body("carol"))
    assert (resp.status, data["scimType"]) == (409, "uniqueness"), data
    resp, data = await scim.patch(f"/Users/{carol['id']}", [{"op": "replace", "path": "title", "value": "Boss"}])
    assert resp.status == 200, data
    assert [e["title"] for e in directory.people("(uid=carol)")] == [["Boss"]]
    # `pr` is asked of the directory too: an entry made there since is found (and linked) by it.
    directory.slapd.add(f"dn: uid=dan,ou=people,{directory.top}\nobjectClass: inetOrgPerson\nuid: dan\ncn: Dan\nsn: D\n")
    resp, data = await scim.get("/Users?filter=" + q("userName pr"))
    assert sorted(r["userName"] for r in data["Resources"]) == ["carol", "dan"], data
    # A change made in the directory shows at once (reads are live).
    directory.slapd.modify(f"dn: uid=carol,ou=people,{directory.top}\nchangetype: modify\nreplace: title\ntitle: Chief\n")
    resp, data = await scim.get(f"/Users/{carol['id']}")
    assert data["title"] == "Chief"


async def test_a_directory_refusal_is_a_400_naming_the_attribute(scim: Scim, directory: Directory) -> None:
    # mail is an IA5 string: the directory refuses non-ASCII (invalidAttributeSyntax).
    body = user_body("dora", emails=[{"type": "work", "value": "dörä@example.com"}])
    resp, data = await scim.post("/Users", body)
    assert (resp.status, data["scimType"]) == (400, "invalidValue"), data
    assert "mail" in data["detail"], data
    assert directory.people() == []
    resp, data = await scim.get("/Users")
    assert data["totalResults"] == 0


async def test_a_wrong_bind_or_a_directory_down_is_a_503(
    aiohttp_client: Any, directory: Directory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENLDAP_BIND_PASSWORD", "not-the-password")
    scim = await gateway(aiohttp_client, directory.mapping, tmp_path / "a")
    resp, data = await scim.post("/Users", user_body("erin"))
    assert resp.status == 503, data
    assert "bind" in data["detail"].lower() or "credentials" in data["detail"].lower(), data
    assert "not-the-password" not in json.dumps(data)
    assert directory.people() == []

    monkeypatch.setenv("OPENLDAP_BIND_PASSWORD", "slapd-admin-secret")
    monkeypatch.setenv("OPENLDAP_URL", f"ldap://127.0.0.1:{free_port()}")
    scim = await gateway(aiohttp_client, directory.mapping, tmp_path / "b")
    resp, data = await scim.post("/Users", user_body("erin"))
    assert resp.status == 503 and resp.headers.get("Retry-After"), data


async def test_check_connect_reads_the_directory_schema(
    directory: Directory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await asyncio.to_thread(main, ["check", "--connect", str(directory.mapping)]) == 0
    assert "the live app fits" in capsys.readouterr().out
    bad = tmp_path / "typo.yaml"
    bad.write_text(
        directory.mapping.read_text()
        .replace("object_classes: [inetOrgPerson]", "object_classes: [inetOrgPersn]")
        .replace(f"base: ou=groups,{directory.top}", f"base: ou=grups,{directory.top}")
    )
    field = tmp_path / "field.yaml"
    field.write_text(directory.mapping.read_text().replace("field: telephoneNumber", "field: telephonNumber"))
    assert await asyncio.to_thread(main, ["check", "--connect", str(bad), str(field)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [
        f"{bad}:{line_of(bad, 'inetOrgPersn')}:24: connector.resources.User.object_classes[0]: "
        "the directory has no object class 'inetOrgPersn' (did you mean inetOrgPerson?)",
        f"{bad}:{line_of(bad, 'ou=grups')}:13: connector.resources.Group.base: the directory has no entry ou=grups,{directory.top}",
        f"{field}:{line_of(field, 'telephonNumber')}:16: resources.User.attributes[6].field: "
        "the app's User records have no field 'telephonNumber' (did you mean telephoneNumber?)",
    ]  # fmt: skip


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_translate_shows_the_ldap_operations(directory: Directory, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    request = tmp_path / "req.json"
    request.write_text(json.dumps(user_body("frank,ou=admins", title="*)(uid=*")))
    status = main(["translate", "openldap", str(request), "--config", str(directory.mapping), "--data-dir", str(tmp_path)])
    out = capsys.readouterr()
    assert status == 0, out.err
    plan = json.loads(out.out)
    [add] = plan["calls"]
    assert add["operation"] == "add" and add["dn"] == f"uid=frank\\,ou\\=admins,ou=people,{directory.top}", add
    assert add["attributes"]["title"] == "*)(uid=*"
    assert directory.people() == []  # translate touches nothing


def test_import_links_the_directory_entries(directory: Directory, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ldif = [
        f"dn: uid=imp{i},ou=people,{directory.top}\nobjectClass: inetOrgPerson\nuid: imp{i}\ncn: Imp {i}\nsn: Imp\n"
        for i in range(7)  # more than a page
    ]
    ldif.append(
        f"dn: cn=imported,ou=groups,{directory.top}\nobjectClass: groupOfNames\ncn: imported\nmember: uid=imp0,ou=people,{directory.top}\n"
    )
    directory.slapd.add("\n".join(ldif))
    status = main(["import", "openldap", "--config", str(directory.mapping), "--data-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "User: 7 in the app, 7 linked now" in out and "Group: 1 in the app, 1 linked now" in out, out


def test_translate_masks_the_active_directory_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """translate needs no directory: the AD mapping's add, with the DN escaped and the password masked."""
    monkeypatch.setenv("AD_URL", f"ldaps://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AD_BIND_PASSWORD", "bind-secret-1")
    request = tmp_path / "req.json"
    body = user_body("zed@example.com", displayName="Zed, Jr.", password="Hunter2-very-secret")
    request.write_text(json.dumps(body))
    mapping = Path(openldap.ROOT) / "mappings" / "active_directory.yaml"
    status = main(["translate", "active_directory", str(request), "--config", str(mapping), "--data-dir", str(tmp_path)])
    out = capsys.readouterr()
    assert status == 0, out.err
    assert "Hunter2-very-secret" not in out.out + out.err and "bind-secret-1" not in out.out + out.err
    [add] = json.loads(out.out)["calls"]
    assert add["dn"] == "cn=Zed\\, Jr.,OU=Users,OU=SCIM,DC=example,DC=com"
    assert (add["attributes"]["unicodePwd"], add["attributes"]["sAMAccountName"], add["attributes"]["enabled"]) == (
        "***",
        "zed",
        True,
    )


async def test_a_directory_stopped_then_back(aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped: 503 with Retry-After and nothing recorded, nothing half-written. Back: the pool reconnects, it heals."""
    from tests.directories import ADMIN_PASSWORD, Slapd

    own = Slapd(tmp_path / "slapd")  # a server of this test's own, to stop and start
    own.start()
    try:
        top = own.subtree("people", "groups")
        own.add("\n".join(f"dn: ou={ou},ou=people,{top}\nobjectClass: organizationalUnit\nou: {ou}\n" for ou in ("rnd", "sales")))
        monkeypatch.setenv("OPENLDAP_URL", own.url)
        monkeypatch.setenv("OPENLDAP_BIND_PASSWORD", ADMIN_PASSWORD)
        monkeypatch.setenv("OPENLDAP_SCIM_TOKEN", TOKEN)
        here = Directory(own, top, openldap.shipped_mapping(top, tmp_path))
        scim = await gateway(aiohttp_client, here.mapping, tmp_path / "data")
        gina = await create(scim, "/Users", user_body("gina", title="Before"))

        own.stop()
        resp, data = await scim.post("/Users", user_body("hal"))
        assert (resp.status, bool(resp.headers.get("Retry-After"))) == (503, True), data
        resp, data = await scim.patch(f"/Users/{gina['id']}", [{"op": "replace", "path": "title", "value": "During"}])
        assert resp.status == 503, data
        resp, data = await scim.get("/Users")
        assert [u["userName"] for u in data["Resources"]] == ["gina"]  # nothing recorded for hal
        assert data["Resources"][0]["title"] == "Before"  # nor half of the PATCH

        own.start()
        resp, data = await scim.post("/Users", user_body("hal"))
        assert resp.status == 201, data
        resp, data = await scim.patch(f"/Users/{gina['id']}", [{"op": "replace", "path": "title", "value": "After"}])
        assert (resp.status, data.get("title")) == (200, "After"), data
        assert sorted(e["uid"][0] for e in here.people()) == ["gina", "hal"]
        assert here.person("gina")["title"] == ["After"]
    finally:
        own.stop()
