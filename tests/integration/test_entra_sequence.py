"""Microsoft Entra ID's provisioning sequence, end to end, in the request shapes Entra really sends.

Every step asserts the legacy rows of the demo HR database (employees, teams,
team_members), not only the SCIM answers. Where Entra deviates from RFC 7644
(strings for booleans, `Replace` in any case, `manager` as a plain id string,
path-less PATCH with dotted and URN keys, Remove members by value list, an
extra Microsoft group schema URN), the gateway follows Entra and the test says so.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from tests.conftest import ENTERPRISE_URN, GROUP_URN, USER_URN, Scim
from tests.demo_rows import count, emp_no, employee, q, team, team_pairs
from tests.idp import MS_GROUP_URN, entra_user
from tests.idp import entra_group as entra_group_body

pytestmark = pytest.mark.both_stores  # the same gateway tests on the SQLite and the PostgreSQL store

LIST_URN = "urn:ietf:params:scim:api:messages:2.0:ListResponse"


# ---------------------------------------------------------------- helpers


async def create_user(scim: Scim, user_name: str, **kw: Any) -> dict[str, Any]:
    parts = user_name.split("@")[0].split(".")
    body = entra_user(
        user_name,
        given=kw.pop("given", parts[0].title()),
        family=kw.pop("family", parts[-1].title()),
        mail=kw.pop("mail", user_name),
        **kw,
    )
    resp, data = await scim.post("/Users", body)
    assert resp.status == 201, data
    return data


async def create_group(scim: Scim, name: str, members: list[str] | None = None) -> dict[str, Any]:
    resp, data = await scim.post("/Groups", entra_group_body(name, members))
    assert resp.status == 201, data
    return data


# ---------------------------------------------------------------- the sequence, step by step


async def test_entra_get_by_username_that_does_not_exist_is_an_empty_list(scim: Scim, demo_db: sqlite3.Connection) -> None:
    resp, data = await scim.get("/Users?filter=" + q('userName eq "nobody@contoso.com"'))
    assert resp.status == 200
    assert resp.content_type == "application/scim+json"
    assert data["schemas"] == [LIST_URN]
    assert data["totalResults"] == 0
    assert data.get("Resources", []) == []
    assert count(demo_db, "employees") == 0


async def test_entra_create_user_writes_the_employee_row(scim: Scim, demo_db: sqlite3.Connection) -> None:
    body = entra_user(
        "Alice.Smith@Contoso.com",
        given="Alice",
        family="Smith",
        mail="Alice.Smith@Contoso.COM",
        title="Engineer",
        department="R&D",
        external_id="0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef",
    )
    resp, data = await scim.post("/Users", body)
    assert resp.status == 201, data
    assert data["userName"] == "Alice.Smith@Contoso.com"
    assert data["externalId"] == "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef"
    assert data["schemas"] == [USER_URN, ENTERPRISE_URN]
    assert "roles" not in data  # an empty list is unassigned
    assert data["active"] is True
    assert data["name"]["givenName"] == "Alice"
    assert data[ENTERPRISE_URN]["department"] == "R&D"
    assert resp.headers["Location"] == data["meta"]["location"]

    row = employee(demo_db, "Alice.Smith@Contoso.com")
    assert row is not None
    assert row["login"] == "Alice.Smith@Contoso.com"
    assert row["first_nm"] == "Alice"
    assert row["last_nm"] == "Smith"
    assert row["display_nm"] == "Alice Smith"
    assert row["mail"] == "alice.smith@contoso.com"  # the mapping lower-cases mail
    assert row["job_title"] == "Engineer"
    assert row["dept"] == "R&D"
    assert row["status"] == "A"
    assert row["mgr_emp_no"] is None
    assert count(demo_db, "employees") == 1

    # Entra's follow-up GET by userName now finds exactly this user.
    resp, found = await scim.get("/Users?filter=" + q('userName eq "alice.smith@contoso.com"'))
    assert resp.status == 200
    assert found["totalResults"] == 1
    assert found["Resources"][0]["id"] == data["id"]


async def test_entra_create_with_manager_as_plain_id_string(scim: Scim, demo_db: sqlite3.Connection) -> None:
    boss = await create_user(scim, "boss@contoso.com")
    body = entra_user("worker@contoso.com", given="Wendy", family="Worker", mail="worker@contoso.com", manager=boss["id"])
    resp, data = await scim.post("/Users", body)
    assert resp.status == 201, data
    assert data[ENTERPRISE_URN]["manager"]["value"] == boss["id"]
    assert employee(demo_db, "worker@contoso.com")["mgr_emp_no"] == emp_no(demo_db, "boss@contoso.com")


async def test_entra_get_with_aadoptscim062020_is_ignored(scim: Scim, demo_db: sqlite3.Connection) -> None:
    user = await create_user(scim, "flag.user@contoso.com")
    resp, data = await scim.get(f"/Users/{user['id']}?aadOptscim062020")
    assert resp.status == 200, data
    assert data["id"] == user["id"]
    resp, data = await scim.get("/Users?aadOptscim062020&filter=" + q('userName eq "flag.user@contoso.com"'))
    assert resp.status == 200, data
    assert [r["id"] for r in data["Resources"]] == [user["id"]]


async def test_entra_legacy_patch_shape(scim: Scim, demo_db: sqlite3.Connection) -> None:
    """Capitalised ops, emails[type eq "work"].value, manager as a plain id string."""
    manager = await create_user(scim, "manager@contoso.com")
    user = await create_user(scim, "legacy.patch@contoso.com", mail="legacy.patch@contoso.com")
    resp, data = await scim.patch(
        f"/Users/{user['id']}",
        [
            {"op": "Replace", "path": "displayName", "value": "Legacy Renamed"},
            {"op": "Add", "path": 'emails[type eq "work"].value', "value": "New.Address@Contoso.com"},
            {"op": "Add", "path": f"{ENTERPRISE_URN}:manager", "value": manager["id"]},
            {"op": "Replace", "path": "title", "value": "Lead"},
        ],
    )
    assert resp.status == 200, data
    assert data["id"] == user["id"]
    assert data["displayName"] == "Legacy Renamed"
    work = [e for e in data["emails"] if e.get("type") == "work"]
    assert [e["value"] for e in work] == ["new.address@contoso.com"]
    assert data[ENTERPRISE_URN]["manager"]["value"] == manager["id"]

    row = employee(demo_db, "legacy.patch@contoso.com")
    assert row["display_nm"] == "Legacy Renamed"
    assert row["mail"] == "new.address@contoso.com"
    assert row["job_title"] == "Lead"
    assert row["mgr_emp_no"] == emp_no(demo_db, "manager@contoso.com")
    assert row["first_nm"] == "Legacy"  # untouched


async def test_entra_add_work_email_to_user_without_one_creates_it(scim: Scim, demo_db: sqlite3.Connection) -> None:
    resp, user = await scim.post("/Users", {"schemas": [USER_URN], "userName": "noemail@contoso.com", "active": True})
    assert resp.status == 201, user
    assert employee(demo_db, "noemail@contoso.com")["mail"] is None
    resp, data = await scim.patch(
        f"/Users/{user['id']}",
        [
            {"op": "Add", "path": 'emails[type eq "work"].value', "value": "Fresh@Contoso.com"},
        ],
    )
    assert resp.status == 200, data
    assert data["emails"] == [{"type": "work", "value": "fresh@contoso.com"}]
    assert employee(demo_db, "noemail@contoso.com")["mail"] == "fresh@contoso.com"


async def test_entra_manager_replace_and_remove(scim: Scim, demo_db: sqlite3.Connection) -> None:
    m1 = await create_user(scim, "m1@contoso.com")
    m2 = await create_user(scim, "m2@contoso.com")
    user = await create_user(scim, "report@contoso.com", manager=m1["id"])
    assert employee(demo_db, "report@contoso.com")["mgr_emp_no"] == emp_no(demo_db, "m1@contoso.com")
    resp, data = await scim.patch(
        f"/Users/{user['id']}",
        [
            {"op": "Replace", "path": f"{ENTERPRISE_URN}:manager", "value": m2["id"]},
        ],
    )
    assert resp.status == 200, data
    assert employee(demo_db, "report@contoso.com")["mgr_emp_no"] == emp_no(demo_db, "m2@contoso.com")
    # Entra clears the manager with Remove on the URN path.
    resp, data = await scim.patch(
        f"/Users/{user['id']}",
        [
            {"op": "Remove", "path": f"{ENTERPRISE_URN}:manager"},
        ],
    )
    assert resp.status == 200, data
    assert "manager" not in data.get(ENTERPRISE_URN, {})
    assert employee(demo_db, "report@contoso.com")["mgr_emp_no"] is None


async def test_entra_unknown_manager_id_is_refused_and_nothing_changes(scim: Scim, demo_db: sqlite3.Connection) -> None:
    user = await create_user(scim, "lonely@contoso.com")
    before = dict(employee(demo_db, "lonely@contoso.com"))
    resp, data = await scim.patch(
        f"/Users/{user['id']}",
        [
            {"op": "Add", "path": f"{ENTERPRISE_URN}:manager", "value": "00000000-0000-0000-0000-000000000000"},
        ],
    )
    assert resp.status == 400, data
    assert data["scimType"] == "invalidValue"
    assert "manager" in data["detail"]
    assert dict(employee(demo_db, "lonely@contoso.com")) == before


async def test_entra_aadoptscim062020_pathless_patch(scim: Scim, demo_db: sqlite3.Connection) -> None:
    user = await create_user(scim, "new.shape@contoso.com", given="Old", family="Shape", department="Sales")
    resp, data = await scim.patch(
        f"/Users/{user['id']}?aadOptscim062020",
        [
            {
                "op": "replace",
                "value": {
                    "name.givenName": "Newgiven",
                    f"{ENTERPRISE_URN}:department": "Marketing",
                    "active": False,
                },
            },
        ],
    )
    assert resp.status == 200, data
    assert data["name"]["givenName"] == "Newgiven"
    assert data["name"]["familyName"] == "Shape"  # a dotted key replaces only that sub-attribute
    assert data[ENTERPRISE_URN]["department"] == "Marketing"
    assert data["active"] is False
    row = employee(demo_db, "new.shape@contoso.com")
    assert row["first_nm"] == "Newgiven"
    assert row["last_nm"] == "Shape"
    assert row["dept"] == "Marketing"
    assert row["status"] == "I"


async def test_entra_enterprise_dot_attr_key(scim: Scim, demo_db: sqlite3.Connection) -> None:
    """Entra also writes `URN.attr` (dot) for extension attributes in path-less values."""
    user = await create_user(scim, "dotted@contoso.com", department="Sales")
    resp, data = await scim.patch(
        f"/Users/{user['id']}",
        [
            {"op": "Replace", "value": {f"{ENTERPRISE_URN}.department": "Legal", f"{ENTERPRISE_URN}:employeeNumber": "E-77"}},
        ],
    )
    assert resp.status == 200, data
    row = employee(demo_db, "dotted@contoso.com")
    assert row["dept"] == "Legal"
    assert row["emp_code"] == "E-77"


async def test_entra_disable_with_string_false(scim: Scim, demo_db: sqlite3.Connection) -> None:
    user = await create_user(scim, "leaver@contoso.com")
    assert employee(demo_db, "leaver@contoso.com")["status"] == "A"
    resp, data = await scim.patch(f"/Users/{user['id']}", [{"op": "Replace", "path": "active", "value": "False"}])
    assert resp.status == 200, data
    assert data["active"] is False
    assert employee(demo_db, "leaver@contoso.com")["status"] == "I"
    resp, data = await scim.get(f"/Users/{user['id']}")
    assert data["active"] is False
    # ...and back with "True".
    resp, data = await scim.patch(f"/Users/{user['id']}", [{"op": "Replace", "path": "active", "value": "True"}])
    assert resp.status == 200, data
    assert data["active"] is True
    assert employee(demo_db, "leaver@contoso.com")["status"] == "A"
    # The user is still there: disabling is not deleting.
    assert count(demo_db, "employees") == 1


async def test_entra_group_create_with_microsoft_schema_urn(scim: Scim, demo_db: sqlite3.Connection) -> None:
    resp, data = await scim.post(
        "/Groups",
        {
            "schemas": [GROUP_URN, MS_GROUP_URN],
            "externalId": "8aa1a0c0-c4c3-4bc0-b4a5-2ef676900159",
            "displayName": "Engineering",
            "meta": {"resourceType": "Group"},
        },
    )
    assert resp.status == 201, data
    assert data["displayName"] == "Engineering"
    assert data["schemas"] == [GROUP_URN]
    assert resp.headers["Location"] == data["meta"]["location"]
    row = team(demo_db, "Engineering")
    assert row is not None and row["team_name"] == "Engineering"
    assert count(demo_db, "teams") == 1
    assert count(demo_db, "team_members") == 0


async def test_entra_group_lookup_by_display_name_excluding_members(scim: Scim, demo_db: sqlite3.Connection) -> None:
    u = await create_user(scim, "member.one@contoso.com")
    g = await create_group(scim, "Finance", [u["id"]])
    path = "/Groups?excludedAttributes=members&filter=" + q('displayName eq "Finance"')
    resp, data = await scim.get(path)
    assert resp.status == 200, data
    assert data["totalResults"] == 1
    [found] = data["Resources"]
    assert found["id"] == g["id"]
    assert found["displayName"] == "Finance"
    assert "members" not in found
    # No such group: empty list, never 404.
    resp, data = await scim.get("/Groups?excludedAttributes=members&filter=" + q('displayName eq "Nope"'))
    assert resp.status == 200
    assert data["totalResults"] == 0


async def test_entra_group_member_add_and_remove_by_value_list(scim: Scim, demo_db: sqlite3.Connection) -> None:
    u1 = await create_user(scim, "u1@contoso.com")
    u2 = await create_user(scim, "u2@contoso.com")
    u3 = await create_user(scim, "u3@contoso.com")
    g = await create_group(scim, "Ops")
    resp, data = await scim.patch(f"/Groups/{g['id']}", [{"op": "Add", "path": "members", "value": [{"value": u1["id"]}]}])
    assert resp.status == 200, data
    assert team_pairs(demo_db) == {("Ops", "u1@contoso.com")}
    resp, data = await scim.patch(
        f"/Groups/{g['id']}",
        [
            {"op": "Add", "path": "members", "value": [{"value": u2["id"]}, {"value": u3["id"]}]},
        ],
    )
    assert resp.status == 200, data
    assert {m["value"] for m in data["members"]} == {u1["id"], u2["id"], u3["id"]}
    assert team_pairs(demo_db) == {("Ops", "u1@contoso.com"), ("Ops", "u2@contoso.com"), ("Ops", "u3@contoso.com")}
    # Adding someone already there changes nothing.
    resp, data = await scim.patch(f"/Groups/{g['id']}", [{"op": "Add", "path": "members", "value": [{"value": u1["id"]}]}])
    assert resp.status == 200, data
    assert count(demo_db, "team_members") == 3

    # Entra's Remove with a value list removes only those members.
    resp, data = await scim.patch(f"/Groups/{g['id']}", [{"op": "Remove", "path": "members", "value": [{"value": u1["id"]}]}])
    assert resp.status == 200, data
    assert {m["value"] for m in data["members"]} == {u2["id"], u3["id"]}
    assert team_pairs(demo_db) == {("Ops", "u2@contoso.com"), ("Ops", "u3@contoso.com")}
    # The user's groups follow.
    resp, data = await scim.get(f"/Users/{u2['id']}")
    assert [gr["value"] for gr in data.get("groups", [])] == [g["id"]]
    resp, data = await scim.get(f"/Users/{u1['id']}")
    assert data.get("groups", []) == []


async def test_entra_rename_group(scim: Scim, demo_db: sqlite3.Connection) -> None:
    u = await create_user(scim, "stays@contoso.com")
    g = await create_group(scim, "Old Name", [u["id"]])
    team_id = team(demo_db, "Old Name")["team_id"]
    resp, data = await scim.patch(f"/Groups/{g['id']}", [{"op": "Replace", "path": "displayName", "value": "New Name"}])
    assert resp.status == 200, data
    assert data["displayName"] == "New Name"
    assert team(demo_db, "Old Name") is None
    assert team(demo_db, "New Name")["team_id"] == team_id
    assert team_pairs(demo_db) == {("New Name", "stays@contoso.com")}  # members untouched
    resp, data = await scim.get("/Groups?filter=" + q('displayName eq "New Name"'))
    assert [r["id"] for r in data["Resources"]] == [g["id"]]
    resp, data = await scim.get("/Groups?filter=" + q('displayName eq "Old Name"'))
    assert data["totalResults"] == 0


async def test_entra_group_display_name_is_unique(scim: Scim, demo_db: sqlite3.Connection) -> None:
    await create_group(scim, "Unique Team")
    resp, data = await scim.post("/Groups", {"schemas": [GROUP_URN, MS_GROUP_URN], "displayName": "unique team"})
    assert resp.status == 409, data
    assert data["scimType"] == "uniqueness"
    assert count(demo_db, "teams") == 1
    # Renaming another group onto the name is refused too, and changes nothing.
    other = await create_group(scim, "Other Team")
    resp, data = await scim.patch(f"/Groups/{other['id']}", [{"op": "Replace", "path": "displayName", "value": "UNIQUE TEAM"}])
    assert resp.status == 409, data
    assert data["scimType"] == "uniqueness"
    assert {r[0] for r in demo_db.execute("SELECT team_name FROM teams")} == {"Unique Team", "Other Team"}


async def test_entra_delete_user_removes_row_and_memberships(scim: Scim, demo_db: sqlite3.Connection) -> None:
    keep = await create_user(scim, "keep@contoso.com")
    gone = await create_user(scim, "gone@contoso.com")
    g = await create_group(scim, "Team", [keep["id"], gone["id"]])
    assert count(demo_db, "team_members") == 2
    resp, data = await scim.delete(f"/Users/{gone['id']}")
    assert resp.status == 204, data
    assert data is None
    assert employee(demo_db, "gone@contoso.com") is None
    assert team_pairs(demo_db) == {("Team", "keep@contoso.com")}
    resp, data = await scim.get(f"/Users/{gone['id']}")
    assert resp.status == 404
    resp, data = await scim.get(f"/Groups/{g['id']}")
    assert [m["value"] for m in data["members"]] == [keep["id"]]
    resp, data = await scim.get("/Users?filter=" + q('userName eq "gone@contoso.com"'))
    assert data["totalResults"] == 0


async def test_entra_delete_group(scim: Scim, demo_db: sqlite3.Connection) -> None:
    u = await create_user(scim, "survivor@contoso.com")
    g = await create_group(scim, "Doomed", [u["id"]])
    resp, _ = await scim.delete(f"/Groups/{g['id']}")
    assert resp.status == 204
    assert team(demo_db, "Doomed") is None
    assert count(demo_db, "team_members") == 0
    assert employee(demo_db, "survivor@contoso.com") is not None
    resp, _ = await scim.get(f"/Groups/{g['id']}")
    assert resp.status == 404
    resp, data = await scim.get(f"/Users/{u['id']}")
    assert data.get("groups", []) == []
    # The name is free again.
    g2 = await create_group(scim, "Doomed")
    assert g2["id"] != g["id"]


async def test_entra_more_legacy_paths(scim: Scim, demo_db: sqlite3.Connection) -> None:
    """userName rename, externalId, name.givenName, phoneNumbers[type eq "work"].value, replacing an existing work email."""
    user = await create_user(scim, "rename.me@contoso.com", mail="rename.me@contoso.com")
    emp = employee(demo_db, "rename.me@contoso.com")["emp_no"]
    resp, data = await scim.patch(
        f"/Users/{user['id']}",
        [
            {"op": "Replace", "path": "userName", "value": "Renamed@Contoso.com"},
            {"op": "Replace", "path": "externalId", "value": "new-ext-id"},
            {"op": "Replace", "path": "name.givenName", "value": "Ren"},
            {"op": "Add", "path": 'phoneNumbers[type eq "work"].value', "value": "+1 555 0100"},
            {"op": "Replace", "path": 'emails[type eq "work"].value', "value": "Renamed@Contoso.com"},
            {"op": "Replace", "path": f"{ENTERPRISE_URN}:employeeNumber", "value": "E-1"},
        ],
    )
    assert resp.status == 200, data
    assert data["id"] == user["id"]
    assert data["userName"] == "Renamed@Contoso.com"
    assert data["externalId"] == "new-ext-id"
    assert [(e.get("type"), e["value"]) for e in data["emails"]] == [("work", "renamed@contoso.com")]
    assert [(p.get("type"), p["value"]) for p in data["phoneNumbers"]] == [("work", "+1 555 0100")]
    assert employee(demo_db, "rename.me@contoso.com") is None
    row = employee(demo_db, "renamed@contoso.com")
    assert row["emp_no"] == emp
    assert (row["login"], row["first_nm"], row["mail"], row["phone"], row["emp_code"]) == (
        "Renamed@Contoso.com",
        "Ren",
        "renamed@contoso.com",
        "+1 555 0100",
        "E-1",
    )
    assert count(demo_db, "employees") == 1
    # Entra matches on externalId too (case-exact).
    resp, found = await scim.get("/Users?filter=" + q('externalId eq "new-ext-id"'))
    assert [r["id"] for r in found["Resources"]] == [user["id"]]
    resp, found = await scim.get("/Users?filter=" + q('userName eq "rename.me@contoso.com"'))
    assert found["totalResults"] == 0


async def test_entra_group_membership_check_filter(scim: Scim, demo_db: sqlite3.Connection) -> None:
    """Entra asks `id eq "<group>" and members eq "<user>"` with excludedAttributes=members."""
    inside = await create_user(scim, "inside@contoso.com")
    outside = await create_user(scim, "outside@contoso.com")
    g = await create_group(scim, "Checked", [inside["id"]])
    for user, expected in ((inside, 1), (outside, 0)):
        flt = f'id eq "{g["id"]}" and members eq "{user["id"]}"'
        resp, data = await scim.get("/Groups?excludedAttributes=members&filter=" + q(flt))
        assert resp.status == 200, data
        assert data["totalResults"] == expected
        if expected:
            assert data["Resources"][0]["id"] == g["id"]
            assert "members" not in data["Resources"][0]


async def test_entra_patch_group_add_member_unknown_to_gateway_is_ignored(scim: Scim, demo_db: sqlite3.Connection) -> None:
    """Entra sends members whose own provisioning failed: the known ones are added, the request succeeds."""
    known = await create_user(scim, "known@contoso.com")
    g = await create_group(scim, "Partly")
    resp, data = await scim.patch(
        f"/Groups/{g['id']}",
        [
            {
                "op": "Add",
                "path": "members",
                "value": [{"value": "11111111-2222-3333-4444-555555555555"}, {"value": known["id"]}],
            },
        ],
    )
    assert resp.status == 200, data
    assert [m["value"] for m in data["members"]] == [known["id"]]
    assert team_pairs(demo_db) == {("Partly", "known@contoso.com")}


async def test_entra_delete_manager_clears_reports_manager(scim: Scim, demo_db: sqlite3.Connection) -> None:
    boss = await create_user(scim, "old.boss@contoso.com")
    report = await create_user(scim, "report2@contoso.com", manager=boss["id"])
    assert employee(demo_db, "report2@contoso.com")["mgr_emp_no"] == emp_no(demo_db, "old.boss@contoso.com")
    resp, _ = await scim.delete(f"/Users/{boss['id']}")
    assert resp.status == 204
    assert employee(demo_db, "old.boss@contoso.com") is None
    assert employee(demo_db, "report2@contoso.com")["mgr_emp_no"] is None
    resp, data = await scim.get(f"/Users/{report['id']}")
    assert resp.status == 200, data
    assert "manager" not in data.get(ENTERPRISE_URN, {})
    # A list answer (served from the gateway's copy) names no deleted manager either.
    resp, listed = await scim.get("/Users?filter=" + q('userName eq "report2@contoso.com"'))
    assert "manager" not in listed["Resources"][0].get(ENTERPRISE_URN, {}), listed
    # The report can still be patched (its stored manager id no longer resolves, which must not block writes).
    resp, data = await scim.patch(f"/Users/{report['id']}", [{"op": "Replace", "path": "title", "value": "Orphan"}])
    assert resp.status == 200, data
    assert employee(demo_db, "report2@contoso.com")["job_title"] == "Orphan"


async def test_entra_full_sequence(scim: Scim, demo_db: sqlite3.Connection) -> None:
    """The whole cycle in Entra's order, the legacy rows checked after each step."""
    # 1. Does the user exist?
    resp, data = await scim.get("/Users?filter=" + q('userName eq "jdoe@contoso.com"'))
    assert (resp.status, data["totalResults"]) == (200, 0)
    # 2. Create the manager and the user.
    mgr = await create_user(scim, "chief@contoso.com", given="Chief", family="Boss")
    resp, user = await scim.post(
        "/Users", entra_user("JDoe@contoso.com", given="John", family="Doe", mail="John.Doe@Contoso.com", department="Eng")
    )
    assert resp.status == 201, user
    row = employee(demo_db, "jdoe@contoso.com")
    assert (row["login"], row["first_nm"], row["mail"], row["status"], row["mgr_emp_no"]) == (
        "JDoe@contoso.com",
        "John",
        "john.doe@contoso.com",
        "A",
        None,
    )
    # 3. Legacy PATCH shape: manager as plain id.
    resp, data = await scim.patch(
        f"/Users/{user['id']}",
        [
            {"op": "Add", "path": f"{ENTERPRISE_URN}:manager", "value": mgr["id"]},
            {"op": "Replace", "path": "displayName", "value": "Johnny Doe"},
        ],
    )
    assert resp.status == 200, data
    row = employee(demo_db, "jdoe@contoso.com")
    assert (row["display_nm"], row["mgr_emp_no"]) == ("Johnny Doe", emp_no(demo_db, "chief@contoso.com"))
    # 4. New PATCH shape.
    resp, data = await scim.patch(
        f"/Users/{user['id']}?aadOptscim062020",
        [
            {"op": "replace", "value": {"name.givenName": "Jon", f"{ENTERPRISE_URN}:department": "Platform"}},
        ],
    )
    assert resp.status == 200, data
    row = employee(demo_db, "jdoe@contoso.com")
    assert (row["first_nm"], row["dept"], row["mgr_emp_no"]) == ("Jon", "Platform", emp_no(demo_db, "chief@contoso.com"))
    # 5. Group, lookup, membership.
    resp, data = await scim.get("/Groups?excludedAttributes=members&filter=" + q('displayName eq "Platform Team"'))
    assert (resp.status, data["totalResults"]) == (200, 0)
    group = await create_group(scim, "Platform Team")
    resp, data = await scim.patch(
        f"/Groups/{group['id']}",
        [
            {"op": "Add", "path": "members", "value": [{"value": user["id"]}, {"value": mgr["id"]}]},
        ],
    )
    assert resp.status == 200, data
    assert team_pairs(demo_db) == {("Platform Team", "JDoe@contoso.com"), ("Platform Team", "chief@contoso.com")}
    resp, data = await scim.patch(
        f"/Groups/{group['id']}",
        [
            {"op": "Remove", "path": "members", "value": [{"value": mgr["id"]}]},
        ],
    )
    assert resp.status == 200, data
    assert team_pairs(demo_db) == {("Platform Team", "JDoe@contoso.com")}
    resp, data = await scim.patch(f"/Groups/{group['id']}", [{"op": "Replace", "path": "displayName", "value": "Platform"}])
    assert resp.status == 200, data
    assert team_pairs(demo_db) == {("Platform", "JDoe@contoso.com")}
    # 6. Disable.
    resp, data = await scim.patch(f"/Users/{user['id']}", [{"op": "Replace", "path": "active", "value": "False"}])
    assert resp.status == 200, data
    assert employee(demo_db, "jdoe@contoso.com")["status"] == "I"
    # 7. Delete user, then group.
    resp, _ = await scim.delete(f"/Users/{user['id']}")
    assert resp.status == 204
    assert employee(demo_db, "jdoe@contoso.com") is None
    assert count(demo_db, "team_members") == 0
    resp, _ = await scim.delete(f"/Groups/{group['id']}")
    assert resp.status == 204
    assert count(demo_db, "teams") == 0
    assert [r["login"] for r in demo_db.execute("SELECT login FROM employees")] == ["chief@contoso.com"]


@pytest.mark.parametrize(
    "operation",
    [
        {"op": "Replace", "path": f"{ENTERPRISE_URN}:manager", "value": ""},
        {"op": "Replace", "path": f"{ENTERPRISE_URN}:manager", "value": {"value": ""}},
        {"op": "Replace", "path": f"{ENTERPRISE_URN}:manager", "value": None},
    ],
    ids=["empty-string", "empty-value", "null"],
)
async def test_entra_clears_the_manager_with_an_empty_value(
    scim: Scim, demo_db: sqlite3.Connection, operation: dict[str, Any]
) -> None:
    boss = await create_user(scim, "boss-clear@contoso.com")
    user = await create_user(scim, "report-clear@contoso.com", manager=boss["id"])
    resp, data = await scim.patch(f"/Users/{user['id']}", [operation])
    assert resp.status == 200, data
    assert "manager" not in data.get(ENTERPRISE_URN, {}), data
    assert employee(demo_db, "report-clear@contoso.com")["mgr_emp_no"] is None
