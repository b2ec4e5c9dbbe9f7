"""Active Directory end to end: Entra ID's and Okta's sequences through the gateway, with the shipped
mappings/active_directory.yaml, into a real Samba AD domain controller (started by the tests), over LDAPS.
Every step asserts the directory's own entries, read back with ldapsearch, not only the SCIM answers."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.http.keys import APPS
from gateway.settings import GatewaySettings
from tests.conftest import ENTERPRISE_URN, GROUP_URN, Scim
from tests.demo_rows import q
from tests.directories import AD_ADMIN, AD_DOMAIN_DN, AD_PASSWORD
from tests.idp import PASSWORD, entra_group, entra_user, okta_user

ROOT = Path(__file__).resolve().parents[2]
MAPPING = ROOT / "mappings" / "active_directory.yaml"
TOKEN = "ad-scim-token-0123456789abcdef"
BASE = "/apps/active_directory/scim/v2"
DISABLED = 0x2  # userAccountControl: ACCOUNTDISABLE
DONT_EXPIRE_PASSWORD = 0x10000


@dataclass
class Directory:
    dc: Any
    top: str
    mapping: Path
    tag: str  # this test's own, in names the whole domain must hold once (userPrincipalName, sAMAccountName)

    @property
    def users_ou(self) -> str:
        return f"OU=Users,{self.top}"

    @property
    def groups_ou(self) -> str:
        return f"OU=Groups,{self.top}"

    def upn(self, name: str) -> str:
        return f"{name}.{self.tag}@gw.test"

    def users(self, search: str = "(objectClass=user)", *attributes: str) -> list[dict[str, list[str]]]:
        return self.dc.search(self.users_ou, search, *attributes)

    def user(self, upn: str) -> dict[str, list[str]]:
        found = self.users(f"(userPrincipalName={upn})", "*", "objectGUID")
        assert len(found) == 1, f"the directory has {len(found)} entries with userPrincipalName={upn}: {found}"
        return found[0]

    def uac(self, upn: str) -> int:
        return int(self.user(upn)["userAccountControl"][0])

    def group(self, cn: str) -> dict[str, list[str]] | None:
        found = self.dc.search(self.groups_ou, f"(&(objectClass=group)(cn={cn}))", "*", "objectGUID")
        return found[0] if found else None

    def members(self, cn: str) -> list[str]:
        """The group's member DNs, lowered and sorted."""
        group = self.group(cn)
        assert group is not None, f"no group {cn}"
        return sorted(dn.lower() for dn in group.get("member", []))


def shipped_mapping(
    dc: Any, top: str, folder: Path, name: str = "active_directory.yaml", *, retry_after: float | None = None
) -> Path:
    """The shipped file with its example domain replaced by the test's subtree, bound as the domain's administrator;
    `retry_after`: with a breaker retrying that soon (an app that cannot open is tried again that often)."""
    text = MAPPING.read_text()
    for example in ("OU=SCIM,DC=example,DC=com", "svc-scim@example.com", "ca_file: /etc/ssl/certs/example-ca.pem"):
        assert example in text, example
    text = (
        text.replace("OU=SCIM,DC=example,DC=com", top)
        .replace("svc-scim@example.com", AD_ADMIN)
        .replace(
            "ca_file: /etc/ssl/certs/example-ca.pem",
            # Samba's self-signed certificate names its host, not the loopback address the test connects to.
            f"ca_file: {dc.ca_file}\n  verify_hostname: false",
        )
    )
    if retry_after is not None:
        text += f"breaker:\n  reset_after: {retry_after}\n  max_reset_after: {retry_after}\n"
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture
def directory(samba_dc: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Directory:
    top = samba_dc.subtree("Users", "Groups")
    monkeypatch.setenv("AD_URL", samba_dc.url)
    monkeypatch.setenv("AD_BIND_PASSWORD", AD_PASSWORD)
    monkeypatch.setenv("AD_SCIM_TOKEN", TOKEN)
    tag = top.split(",", 1)[0][4:10]  # OU=t<hex>: six of its hex digits
    return Directory(samba_dc, top, shipped_mapping(samba_dc, top, tmp_path), tag)


@pytest.fixture
async def client(aiohttp_client: Any, directory: Directory, tmp_path: Path) -> TestClient:
    settings = GatewaySettings(mappings=[directory.mapping], data_dir=tmp_path / "data")
    return await aiohttp_client(create_app(settings))


@pytest.fixture
def scim(client: TestClient) -> Scim:
    return Scim(client, TOKEN, BASE)


async def native_id(scim: Scim, kind: str, rid: str) -> str | None:
    """The app record the gateway links the resource to."""
    row = await scim.client.app[APPS]["active_directory"].provisioner.store.get("active_directory", kind, rid)
    assert row is not None, f"{kind} {rid} is not in the store"
    return row.native_id


async def create(scim: Scim, path: str, body: dict[str, Any]) -> dict[str, Any]:
    resp, data = await scim.post(path, body)
    assert resp.status == 201, data
    return data


async def test_entra_sequence(scim: Scim, directory: Directory) -> None:
    d = directory
    alice_upn, bob_upn = d.upn("alice"), d.upn("bob")
    resp, data = await scim.get("/Users?filter=" + q(f'userName eq "{alice_upn}"'))
    assert (resp.status, data["totalResults"]) == (200, 0), data

    alice = await create(scim, "/Users", entra_user(alice_upn, "Alice", "Smith", mail="Alice.Smith@contoso.com"))
    entry = d.user(alice_upn)
    alice_dn = f"CN=Alice Smith,{d.users_ou}"
    assert entry["dn"] == [alice_dn]
    assert {k: entry[k] for k in ("cn", "userPrincipalName", "sAMAccountName", "displayName", "givenName", "sn")} == {
        "cn": ["Alice Smith"], "userPrincipalName": [alice_upn], "sAMAccountName": [f"alice.{d.tag}"],
        "displayName": ["Alice Smith"], "givenName": ["Alice"], "sn": ["Smith"],
    }  # fmt: skip
    assert (entry["mail"], entry["title"], entry["department"]) == (["Alice.Smith@contoso.com"], ["Engineer"], ["R&D"])
    # Entra sends no password: AD refuses an enabled account without one under a password policy, so the
    # connector gives it a random one no one knows (new_password: random): enabled, with a password set.
    assert int(entry["userAccountControl"][0]) == 0x200 and entry["pwdLastSet"] != ["0"], entry
    assert await native_id(scim, "User", alice["id"]) == entry["objectGUID"][0]  # the link: the entry's objectGUID
    resp, got = await scim.get(f"/Users/{alice['id']}")
    assert (resp.status, got["userName"], got["active"]) == (200, alice_upn, True), got
    assert (got["emails"][0]["value"], got[ENTERPRISE_URN]["department"]) == ("Alice.Smith@contoso.com", "R&D")

    # A manager: the entry holds the manager's DN.
    bob = await create(scim, "/Users", entra_user(bob_upn, "Bob", "Jones", department="Sales", manager=alice["id"]))
    assert d.user(bob_upn)["manager"] == [alice_dn]
    resp, got = await scim.get(f"/Users/{bob['id']}")
    assert got[ENTERPRISE_URN]["manager"]["value"] == alice["id"]

    # Entra's string booleans flip ACCOUNTDISABLE, read-modify-write: a flag set by someone else stays.
    d.dc.modify(
        f"dn: {alice_dn}\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: {0x200 | DONT_EXPIRE_PASSWORD}\n"
    )
    resp, data = await scim.patch(f"/Users/{alice['id']}", [{"op": "Replace", "path": "active", "value": "False"}])
    assert (resp.status, data["active"]) == (200, False), data
    assert d.uac(alice_upn) == 0x200 | DONT_EXPIRE_PASSWORD | DISABLED
    resp, got = await scim.get(f"/Users/{alice['id']}")
    assert got["active"] is False
    resp, data = await scim.patch(f"/Users/{alice['id']}", [{"op": "Replace", "path": "active", "value": "True"}])
    assert (resp.status, data["active"]) == (200, True), data
    assert d.uac(alice_upn) == 0x200 | DONT_EXPIRE_PASSWORD

    # A new display name renames the entry (modrdn): same objectGUID, same SCIM id.
    guid = d.user(alice_upn)["objectGUID"]
    resp, data = await scim.patch(
        f"/Users/{alice['id']}",
        [{"op": "Replace", "path": "displayName", "value": "Alice Jones"}, {"op": "Replace", "value": {"title": "Lead"}}],
    )
    assert (resp.status, data["id"], data["displayName"]) == (200, alice["id"], "Alice Jones"), data
    entry = d.user(alice_upn)
    alice_dn = f"CN=Alice Jones,{d.users_ou}"
    assert (entry["dn"], entry["cn"], entry["displayName"], entry["title"]) == (
        [alice_dn], ["Alice Jones"], ["Alice Jones"], ["Lead"]
    )  # fmt: skip
    assert entry["objectGUID"] == guid and d.users("(cn=Alice Smith)") == []
    assert await native_id(scim, "User", alice["id"]) == guid[0]
    # AD keeps the manager link itself (it is by GUID): bob's manager names alice's new DN, and reads as her id.
    assert d.user(bob_upn)["manager"] == [alice_dn]
    resp, got = await scim.get(f"/Users/{bob['id']}")
    assert got[ENTERPRISE_URN]["manager"]["value"] == alice["id"]
    resp, got = await scim.get(f"/Users/{alice['id']}")
    assert (got["displayName"], got["title"], got["userName"]) == ("Alice Jones", "Lead", alice_upn)

    # Groups: create as Entra does, add members, remove one, rename.
    engineering, platform = f"Engineering {d.tag}", f"Platform {d.tag}"
    resp, data = await scim.get("/Groups?excludedAttributes=members&filter=" + q(f'displayName eq "{engineering}"'))
    assert (resp.status, data["totalResults"]) == (200, 0), data
    group = await create(scim, "/Groups", entra_group(engineering))
    found = d.group(engineering)
    assert found is not None and found["dn"] == [f"CN={engineering},{d.groups_ou}"], found
    assert found["sAMAccountName"] == [engineering] and "member" not in found
    group_guid = found["objectGUID"]
    assert await native_id(scim, "Group", group["id"]) == group_guid[0]
    resp, data = await scim.patch(
        f"/Groups/{group['id']}", [{"op": "Add", "path": "members", "value": [{"value": alice["id"]}, {"value": bob["id"]}]}]
    )
    assert resp.status == 200, data
    bob_dn = f"CN=Bob Jones,{d.users_ou}"
    assert d.members(engineering) == sorted([alice_dn.lower(), bob_dn.lower()])
    group_dn = f"CN={engineering},{d.groups_ou}"
    assert d.user(alice_upn)["memberOf"] == [group_dn] and d.user(bob_upn)["memberOf"] == [group_dn]
    resp, data = await scim.patch(
        f"/Groups/{group['id']}", [{"op": "Remove", "path": "members", "value": [{"value": alice["id"]}]}]
    )
    assert resp.status == 200, data
    assert d.members(engineering) == [bob_dn.lower()] and "memberOf" not in d.user(alice_upn)
    resp, data = await scim.get(f"/Users/{bob['id']}")
    assert [g["value"] for g in data["groups"]] == [group["id"]]
    resp, data = await scim.patch(f"/Groups/{group['id']}", [{"op": "Replace", "path": "displayName", "value": platform}])
    assert resp.status == 200, data
    found = d.group(platform)
    assert d.group(engineering) is None and found is not None
    assert (found["dn"], found["sAMAccountName"], found["objectGUID"]) == (
        [f"CN={platform},{d.groups_ou}"], [platform], group_guid
    )  # fmt: skip
    assert await native_id(scim, "Group", group["id"]) == group_guid[0]
    assert d.members(platform) == [bob_dn.lower()] and d.user(bob_upn)["memberOf"] == [f"CN={platform},{d.groups_ou}"]
    resp, data = await scim.get(f"/Groups/{group['id']}")
    assert (data["displayName"], [m["value"] for m in data["members"]]) == (platform, [bob["id"]]), data

    # Delete: AD takes the user out of its groups itself, then the group goes.
    resp, _ = await scim.delete(f"/Users/{bob['id']}")
    assert resp.status == 204
    assert d.users(f"(userPrincipalName={bob_upn})") == [] and d.members(platform) == []
    resp, _ = await scim.delete(f"/Groups/{group['id']}")
    assert resp.status == 204
    assert d.group(platform) is None
    assert [e["userPrincipalName"] for e in d.users()] == [[alice_upn]]
    resp, _ = await scim.get(f"/Users/{bob['id']}")
    assert resp.status == 404


def bind_as(dc: Any, upn: str, password: str) -> subprocess.CompletedProcess[str]:
    """A simple bind as the account over LDAPS, then a read of its own entry, with the OpenLDAP tools (not through
    the gateway; Samba has no Who am I? operation). Exit status 49: the bind was refused."""
    search = f"(userPrincipalName={upn})"
    return subprocess.run(
        ["ldapsearch", "-x", "-LLL", "-H", dc.url, "-D", upn, "-w", password, "-b", AD_DOMAIN_DN, search, "sAMAccountName"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **dc.ldap_env},
    )


def written(folder: Path) -> bytes:
    """Every byte the gateway wrote under its data directory: the store's files, the audit log."""
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def forms(secret: str) -> list[bytes]:
    """How a password could appear written down: as it is, as AD takes it (quoted UTF-16LE), in base64."""
    raw, ad = secret.encode(), f'"{secret}"'.encode("utf-16-le")
    return [raw, ad, secret.encode("utf-16-le"), base64.b64encode(raw), base64.b64encode(ad)]


async def test_okta_sequence(scim: Scim, directory: Directory, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    d = directory
    isaac_upn = d.upn("isaac")
    isaac = await create(scim, "/Users", okta_user(isaac_upn, "Isaac", "Brock"))
    entry = d.user(isaac_upn)
    assert (entry["dn"], entry["sn"], entry["givenName"], entry["sAMAccountName"]) == (
        [f"CN=Isaac Brock,{d.users_ou}"], ["Brock"], ["Isaac"], [f"isaac.{d.tag}"]
    )  # fmt: skip
    # The password was set (over LDAPS): the account binds with it, and only with it; AD never shows it.
    assert int(entry["userAccountControl"][0]) == 0x200 and entry["pwdLastSet"] != ["0"], entry
    bound = bind_as(d.dc, isaac_upn, PASSWORD)
    assert bound.returncode == 0 and f"sAMAccountName: isaac.{d.tag}" in bound.stdout, bound
    assert bind_as(d.dc, isaac_upn, PASSWORD + "x").returncode == 49
    assert "unicodePwd" not in entry
    assert "password" not in isaac
    resp, got = await scim.get(f"/Users/{isaac['id']}")
    assert resp.status == 200 and "password" not in got and PASSWORD not in repr(got)

    # PUT with new values: a new display name renames the entry; the others are replaced.
    body = okta_user(isaac_upn, "Izzy", "Brock", title="Director", id=isaac["id"])
    resp, data = await scim.put(f"/Users/{isaac['id']}", body)
    assert resp.status == 200, data
    assert "password" not in data
    entry = d.user(isaac_upn)
    assert (entry["dn"], entry["givenName"], entry["title"], entry["displayName"]) == (
        [f"CN=Izzy Brock,{d.users_ou}"], ["Izzy"], ["Director"], ["Izzy Brock"]
    )  # fmt: skip
    assert bind_as(d.dc, isaac_upn, PASSWORD).returncode == 0

    # Group Push: create with members, replace them, remove one by filter, rename with a PUT, delete.
    a, b, c = [await create(scim, "/Users", okta_user(d.upn(n), n.upper(), "Pusher")) for n in "abc"]
    dn = {u["id"]: f"CN={n.upper()} Pusher,{d.users_ou}".lower() for n, u in zip("abc", (a, b, c), strict=True)}
    dn[isaac["id"]] = f"CN=Izzy Brock,{d.users_ou}".lower()
    pushed, renamed = f"Okta Pushed {d.tag}", f"Okta Renamed {d.tag}"
    group = await create(
        scim, "/Groups", {"schemas": [GROUP_URN], "displayName": pushed, "members": [{"value": a["id"]}, {"value": b["id"]}]}
    )
    gid = group["id"]
    assert d.members(pushed) == sorted([dn[a["id"]], dn[b["id"]]])
    resp, data = await scim.patch(
        f"/Groups/{gid}", [{"op": "replace", "path": "members", "value": [{"value": b["id"]}, {"value": c["id"]}]}]
    )
    assert resp.status == 200, data
    assert d.members(pushed) == sorted([dn[b["id"]], dn[c["id"]]])
    assert "memberOf" not in d.user(d.upn("a"))
    resp, data = await scim.patch(f"/Groups/{gid}", [{"op": "remove", "path": f'members[value eq "{c["id"]}"]'}])
    assert resp.status == 200, data
    assert d.members(pushed) == [dn[b["id"]]]
    resp, data = await scim.put(
        f"/Groups/{gid}", {"schemas": [GROUP_URN], "id": gid, "displayName": renamed, "members": [{"value": isaac["id"]}]}
    )
    assert resp.status == 200, data
    assert d.group(pushed) is None and d.members(renamed) == [dn[isaac["id"]]]
    assert d.user(isaac_upn)["memberOf"] == [f"CN={renamed},{d.groups_ou}"]
    resp, _ = await scim.delete(f"/Groups/{gid}")
    assert resp.status == 204 and d.group(renamed) is None
    assert "memberOf" not in d.user(isaac_upn)

    # Deactivation by PUT: the ACCOUNTDISABLE bit; the entry stays, and so does the SCIM user, inactive.
    resp, data = await scim.put(f"/Users/{isaac['id']}", body | {"active": False})
    assert (resp.status, data["active"]) == (200, False), data
    assert d.uac(isaac_upn) == 0x200 | DISABLED
    assert bind_as(d.dc, isaac_upn, PASSWORD).returncode == 49  # a disabled account cannot bind
    resp, data = await scim.get("/Users?filter=" + q(f'userName eq "{isaac_upn}"'))
    assert (data["totalResults"], data["Resources"][0]["active"]) == (1, False), data
    resp, data = await scim.put(f"/Users/{isaac['id']}", body | {"active": True})
    assert (resp.status, data["active"]) == (200, True), data
    assert d.uac(isaac_upn) == 0x200

    # The password is nowhere the gateway wrote: not in its store or audit log, not in its log.
    stored = written(tmp_path / "data")
    audit = (tmp_path / "data" / "audit.log").read_text()
    assert isaac["id"] in audit and gid in audit  # the audit log recorded these writes
    for form in forms(PASSWORD):
        assert form not in stored, form
    assert PASSWORD not in caplog.text


async def test_existing_user_principal_name(scim: Scim, directory: Directory) -> None:
    d = directory
    upn = d.upn("dup")
    first = await create(scim, "/Users", entra_user(upn, "Dana", "First"))
    before = d.users("(objectClass=user)", "cn")

    # The same userName again, through the gateway: its own uniqueness, and nothing new in the directory.
    resp, data = await scim.post("/Users", entra_user(upn, "Dana", "Second", external_id="ext-2"))
    assert (resp.status, data.get("scimType")) == (409, "uniqueness"), data
    assert d.users("(objectClass=user)", "cn") == before

    # An account the directory has that the gateway never made: AD refuses a second one with its userPrincipalName.
    other = d.upn("other")
    d.dc.add(f"dn: CN=Elsewhere Made,{d.users_ou}\nobjectClass: user\nsAMAccountName: made.{d.tag}\nuserPrincipalName: {other}\n")
    before = d.users("(objectClass=user)", "cn")
    resp, data = await scim.post("/Users", entra_user(other, "Other", "Person"))
    assert (resp.status, data.get("scimType")) == (409, "uniqueness"), data
    assert "userPrincipalName" in data["detail"], data
    assert d.users("(objectClass=user)", "cn") == before
    # What Entra does next, a lookup by userName, finds that account and links it: the IdP can take it over.
    resp, data = await scim.get("/Users?filter=" + q(f'userName eq "{other}"'))
    assert (resp.status, data["totalResults"]) == (200, 1), data
    made = d.user(other)
    assert await native_id(scim, "User", data["Resources"][0]["id"]) == made["objectGUID"][0]
    resp, data = await scim.get(f"/Users/{first['id']}")
    assert (resp.status, data["displayName"]) == (200, "Dana First"), data


async def test_password_the_policy_refuses(scim: Scim, directory: Directory) -> None:
    """AD answers a password its policy refuses with constraintViolation (0000052D), as it answers a taken name:
    the IdP must hear that the value is at fault (400), not that the user exists (409)."""
    d = directory
    weak = "Zq1"
    resp, data = await scim.post("/Users", okta_user(d.upn("weak"), "Weak", "Password", password=weak))
    assert (resp.status, data.get("scimType")) == (400, "invalidValue"), data
    assert "password policy" in data["detail"] and weak not in data["detail"], data
    assert d.users() == []  # the add was refused whole: no account without its password
    resp, data = await scim.get("/Users?filter=" + q(f'userName eq "{d.upn("weak")}"'))
    assert (resp.status, data["totalResults"]) == (200, 0), data


async def test_wrong_bind_password(
    aiohttp_client: Any, directory: Directory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bind the directory refuses: the gateway starts, the app answers 503 naming the bind, and it serves by
    itself once the password is right (a copy of the mapping retrying quickly)."""
    domain = directory.dc.search(AD_DOMAIN_DN, "(objectClass=domainDNS)", "lockoutThreshold")
    assert domain[0]["lockoutThreshold"] == ["0"]  # failed binds as the administrator lock nobody out of the domain
    wrong = "Wr0ng-Bind-Passw0rd!"
    monkeypatch.setenv("AD_BIND_PASSWORD", wrong)
    mapping = shipped_mapping(directory.dc, directory.top, tmp_path, "wrong_password.yaml", retry_after=0.5)
    settings = GatewaySettings(mappings=[mapping], data_dir=tmp_path / "data-wrong")
    scim = Scim(await aiohttp_client(create_app(settings)), TOKEN, BASE)
    resp, data = await scim.get("/ServiceProviderConfig")  # discovery, from the mapping
    assert resp.status == 200, data
    nobody = directory.upn("nobody")
    for method, path, body in (
        ("GET", "/Users?filter=" + q(f'userName eq "{nobody}"'), None),
        ("POST", "/Users", entra_user(nobody, "No", "Body")),
        ("GET", "/Groups", None),
    ):
        resp, data = await scim.request(method, path, body)
        assert resp.status == 503, (method, path, data)
        assert "refused the gateway's bind" in data["detail"] and "invalidCredentials" in data["detail"], data
        assert wrong not in data["detail"] and int(resp.headers["Retry-After"]) >= 1, data
    assert directory.users() == []

    monkeypatch.setenv("AD_BIND_PASSWORD", AD_PASSWORD)  # the operator fixes it: no restart
    deadline = asyncio.get_running_loop().time() + 10
    while (resp := (await scim.get("/Users?filter=" + q(f'userName eq "{nobody}"')))[0]).status == 503:
        assert asyncio.get_running_loop().time() < deadline, "the app did not open once the password was right"
        await asyncio.sleep(0.2)
    assert resp.status == 200
    await create(scim, "/Users", entra_user(nobody, "No", "Body"))
    assert directory.user(nobody)["cn"] == ["No Body"]
