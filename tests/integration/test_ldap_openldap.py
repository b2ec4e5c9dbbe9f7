"""OpenLDAP end to end: Entra ID's and Okta's sequences through the gateway, with the shipped
mappings/openldap.yaml, into a real slapd (started by the tests). Every step asserts the directory's own
entries, read back with ldapsearch, not only the SCIM answers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.settings import GatewaySettings
from tests.conftest import ENTERPRISE_URN, GROUP_URN, Scim
from tests.demo_rows import q
from tests.directories import ADMIN_DN, ADMIN_PASSWORD
from tests.idp import MS_GROUP_URN, PASSWORD, entra_user, okta_user

ROOT = Path(__file__).resolve().parents[2]
MAPPING = ROOT / "mappings" / "openldap.yaml"
TOKEN = "openldap-scim-token-0123456789"
BASE = "/apps/openldap/scim/v2"


@dataclass
class Directory:
    slapd: Any
    top: str
    mapping: Path

    def people(self, search: str = "(objectClass=inetOrgPerson)", *attributes: str) -> list[dict[str, list[str]]]:
        return self.slapd.search(f"ou=people,{self.top}", search, *attributes)

    def person(self, uid: str) -> dict[str, list[str]]:
        found = self.people(f"(uid={uid})")
        assert len(found) == 1, f"the directory has {len(found)} entries with uid={uid}: {found}"
        return found[0]

    def group(self, cn: str) -> dict[str, list[str]] | None:
        found = self.slapd.search(f"ou=groups,{self.top}", f"(cn={cn})")
        return found[0] if found else None

    def member_uids(self, cn: str) -> list[str]:
        group = self.group(cn)
        assert group is not None, f"no group {cn}"
        uids = []
        for dn in group.get("member", []):
            if dn.lower().startswith("cn=nobody,"):
                continue
            uids.append(dn.split(",", 1)[0].split("=", 1)[1])
        return sorted(uids)


def shipped_mapping(top: str, folder: Path) -> Path:
    """The shipped file with its example suffix replaced by the test's subtree, and bound as the rootdn."""
    text = MAPPING.read_text()
    assert "dc=example,dc=com" in text
    text = text.replace("cn=scim-gateway,ou=services,dc=example,dc=com", ADMIN_DN).replace("dc=example,dc=com", top)
    path = folder / "openldap.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def directory(slapd: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Directory:
    top = slapd.subtree("people", "groups")
    slapd.add(
        f"dn: ou=rnd,ou=people,{top}\nobjectClass: organizationalUnit\nou: rnd\n\n"
        f"dn: ou=sales,ou=people,{top}\nobjectClass: organizationalUnit\nou: sales\n"
    )
    monkeypatch.setenv("OPENLDAP_URL", slapd.url)
    monkeypatch.setenv("OPENLDAP_BIND_PASSWORD", ADMIN_PASSWORD)
    monkeypatch.setenv("OPENLDAP_SCIM_TOKEN", TOKEN)
    return Directory(slapd, top, shipped_mapping(top, tmp_path))


@pytest.fixture
async def client(aiohttp_client: Any, directory: Directory, tmp_path: Path) -> TestClient:
    settings = GatewaySettings(mappings=[directory.mapping], data_dir=tmp_path / "data")
    return await aiohttp_client(create_app(settings))


@pytest.fixture
def scim(client: TestClient) -> Scim:
    return Scim(client, TOKEN, BASE)


async def create(scim: Scim, path: str, body: dict[str, Any]) -> dict[str, Any]:
    resp, data = await scim.post(path, body)
    assert resp.status == 201, data
    return data


async def test_entra_sequence(scim: Scim, directory: Directory) -> None:
    resp, data = await scim.get("/Users?filter=" + q('userName eq "alice"'))
    assert (resp.status, data["totalResults"]) == (200, 0), data

    alice = await create(scim, "/Users", entra_user("alice", "Alice", "Smith", mail="Alice.Smith@contoso.com"))
    entry = directory.person("alice")
    assert entry["dn"] == [f"uid=alice,ou=rnd,ou=people,{directory.top}"]  # R&D -> ou=rnd
    assert {k: entry[k] for k in ("cn", "sn", "givenName", "mail", "title", "departmentNumber", "displayName")} == {
        "cn": ["Alice Smith"], "sn": ["Smith"], "givenName": ["Alice"], "mail": ["Alice.Smith@contoso.com"],
        "title": ["Engineer"], "departmentNumber": ["R&D"], "displayName": ["Alice Smith"],
    }  # fmt: skip
    resp, got = await scim.get(f"/Users/{alice['id']}")
    assert (resp.status, got["userName"], got["emails"][0]["value"]) == (200, "alice", "Alice.Smith@contoso.com")

    # A manager: the entry holds the manager's DN.
    bob = await create(scim, "/Users", entra_user("bob", "Bob", "Jones", department="Sales", manager=alice["id"]))
    assert directory.person("bob")["manager"] == [f"uid=alice,ou=rnd,ou=people,{directory.top}"]
    assert directory.person("bob")["dn"] == [f"uid=bob,ou=sales,ou=people,{directory.top}"]
    resp, got = await scim.get(f"/Users/{bob['id']}")
    assert got[ENTERPRISE_URN]["manager"]["value"] == alice["id"]

    # Entra's PATCH dialect; a new userName renames the entry, a new department moves it: the id stays.
    resp, data = await scim.patch(
        f"/Users/{alice['id']}",
        [
            {"op": "Replace", "path": "userName", "value": "alice.smith"},
            {"op": "Replace", "value": {"title": "Lead", f"{ENTERPRISE_URN}:department": "Sales"}},
        ],
    )
    assert resp.status == 200, data
    entry = directory.person("alice.smith")
    assert entry["dn"] == [f"uid=alice.smith,ou=sales,ou=people,{directory.top}"] and entry["title"] == ["Lead"]
    assert directory.people("(uid=alice)") == []
    # The manager reference followed the move (the directory's DN, read through the id).
    assert directory.person("bob")["manager"] == [f"uid=alice.smith,ou=sales,ou=people,{directory.top}"]
    resp, got = await scim.get(f"/Users/{bob['id']}")
    assert got[ENTERPRISE_URN]["manager"]["value"] == alice["id"]
    resp, got = await scim.get(f"/Users/{alice['id']}")
    assert (got["userName"], got["title"]) == ("alice.smith", "Lead")

    # Removing an attribute clears it in the directory.
    resp, data = await scim.patch(f"/Users/{alice['id']}", [{"op": "Remove", "path": "title"}])
    assert resp.status == 200, data
    assert "title" not in directory.person("alice.smith")

    # Groups: create with Microsoft's URN, add members, remove one, rename.
    resp, data = await scim.get("/Groups?excludedAttributes=members&filter=" + q('displayName eq "Engineering"'))
    assert (resp.status, data["totalResults"]) == (200, 0)
    group = await create(
        scim, "/Groups", {"schemas": [GROUP_URN, MS_GROUP_URN], "externalId": "g-1", "displayName": "Engineering"}
    )
    assert directory.member_uids("Engineering") == []
    resp, data = await scim.patch(
        f"/Groups/{group['id']}", [{"op": "Add", "path": "members", "value": [{"value": alice["id"]}, {"value": bob["id"]}]}]
    )
    assert resp.status == 200, data
    assert directory.member_uids("Engineering") == ["alice.smith", "bob"]
    assert [m.lower() for m in directory.group("Engineering")["member"]] == [  # type: ignore[index]
        f"uid=alice.smith,ou=sales,ou=people,{directory.top}".lower(),
        f"uid=bob,ou=sales,ou=people,{directory.top}".lower(),
    ]  # the placeholder left when the first member joined
    resp, data = await scim.patch(
        f"/Groups/{group['id']}", [{"op": "Remove", "path": "members", "value": [{"value": alice["id"]}]}]
    )
    assert resp.status == 200, data
    assert directory.member_uids("Engineering") == ["bob"]
    resp, data = await scim.get(f"/Users/{bob['id']}")
    assert [g["value"] for g in data["groups"]] == [group["id"]]
    resp, data = await scim.patch(f"/Groups/{group['id']}", [{"op": "Replace", "path": "displayName", "value": "Platform"}])
    assert resp.status == 200, data
    assert directory.group("Engineering") is None and directory.member_uids("Platform") == ["bob"]

    # Disable: inetOrgPerson has no switch, so the entry goes; enabling brings it back, in its group.
    resp, data = await scim.patch(f"/Users/{bob['id']}", [{"op": "Replace", "path": "active", "value": "False"}])
    assert (resp.status, data["active"]) == (200, False), data
    assert directory.people("(uid=bob)") == [] and directory.member_uids("Platform") == []
    resp, data = await scim.patch(f"/Users/{bob['id']}", [{"op": "Replace", "path": "active", "value": "True"}])
    assert (resp.status, data["active"]) == (200, True), data
    assert directory.person("bob")["mail"] == ["bob"] and directory.member_uids("Platform") == ["bob"]

    # Delete: the user leaves the group, then the group goes.
    resp, _ = await scim.delete(f"/Users/{bob['id']}")
    assert resp.status == 204
    assert directory.people("(uid=bob)") == [] and directory.member_uids("Platform") == []
    resp, _ = await scim.delete(f"/Groups/{group['id']}")
    assert resp.status == 204
    assert directory.group("Platform") is None
    assert [e["uid"] for e in directory.people()] == [["alice.smith"]]


async def test_okta_sequence(scim: Scim, directory: Directory) -> None:
    isaac = await create(scim, "/Users", okta_user("isaac@okta.example", "Isaac", "Brock"))
    entry = directory.person("isaac@okta.example")
    assert (entry["cn"], entry["sn"], entry["dn"]) == (
        ["Isaac Brock"],
        ["Brock"],
        [f"uid=isaac@okta.example,ou=people,{directory.top}"],
    )  # no department: the default OU
    assert PASSWORD not in repr(directory.people("(objectClass=*)", "*", "+"))

    body = okta_user("isaac@okta.example", "Izzy", "Brock", title="Director", id=isaac["id"])
    resp, data = await scim.put(f"/Users/{isaac['id']}", body)
    assert resp.status == 200, data
    entry = directory.person("isaac@okta.example")
    assert (entry["givenName"], entry["title"], entry["cn"]) == (["Izzy"], ["Director"], ["Izzy Brock"])

    a, b, c = [await create(scim, "/Users", okta_user(f"{n}@okta.example")) for n in "abc"]
    group = await create(
        scim,
        "/Groups",
        {"schemas": [GROUP_URN], "displayName": "Okta Pushed", "members": [{"value": a["id"]}, {"value": b["id"]}]},
    )
    assert directory.member_uids("Okta Pushed") == ["a@okta.example", "b@okta.example"]
    gid = group["id"]
    resp, data = await scim.patch(
        f"/Groups/{gid}", [{"op": "replace", "path": "members", "value": [{"value": b["id"]}, {"value": c["id"]}]}]
    )
    assert resp.status == 200, data
    assert directory.member_uids("Okta Pushed") == ["b@okta.example", "c@okta.example"]
    resp, data = await scim.patch(f"/Groups/{gid}", [{"op": "remove", "path": f'members[value eq "{c["id"]}"]'}])
    assert resp.status == 200, data
    assert directory.member_uids("Okta Pushed") == ["b@okta.example"]
    resp, data = await scim.put(
        f"/Groups/{gid}", {"schemas": [GROUP_URN], "id": gid, "displayName": "Okta Renamed", "members": [{"value": isaac["id"]}]}
    )
    assert resp.status == 200, data
    assert directory.group("Okta Pushed") is None and directory.member_uids("Okta Renamed") == ["isaac@okta.example"]
    resp, _ = await scim.delete(f"/Groups/{gid}")
    assert resp.status == 204 and directory.group("Okta Renamed") is None
    # Deactivation by PUT: the entry goes, the SCIM user stays inactive.
    resp, data = await scim.put(f"/Users/{isaac['id']}", body | {"active": False})
    assert (resp.status, data["active"]) == (200, False), data
    assert directory.people("(uid=isaac@okta.example)") == []
    resp, data = await scim.get("/Users?filter=" + q('userName eq "isaac@okta.example"'))
    assert data["Resources"][0]["active"] is False
