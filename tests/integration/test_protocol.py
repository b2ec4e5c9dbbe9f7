"""RFC 7644 protocol behaviour over real HTTP on the demo app: filters, sorting, paging,
projection, .search, ETags, Location, content types, uniqueness (also under concurrency),
per-app tokens, discovery, and error bodies."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from gateway.app import create_app
from gateway.demo import demo_mapping_path, ensure_demo_database
from gateway.settings import GatewaySettings
from tests.conftest import BASE, ENTERPRISE_URN, GROUP_URN, TOKEN, USER_URN, Scim, user_body

pytestmark = pytest.mark.both_stores  # the same gateway tests on the SQLite and the PostgreSQL store

LIST_URN = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
ERROR_URN = "urn:ietf:params:scim:api:messages:2.0:Error"
SEARCH_URN = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"
SPC_URN = "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"
SCIM_TYPE = "application/scim+json"


def q(text: str) -> str:
    return quote(text, safe="")


def count(db: sqlite3.Connection, table: str) -> int:
    return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def employee(db: sqlite3.Connection, login: str) -> dict[str, Any] | None:
    row = db.execute("SELECT * FROM employees WHERE login = ? COLLATE NOCASE", (login,)).fetchone()
    return None if row is None else dict(row)


def assert_error(resp: Any, data: Any, status: int, scim_type: str | None = None, mentions: str | None = None) -> None:
    assert resp.status == status, data
    assert resp.content_type == SCIM_TYPE, resp.content_type
    assert data["schemas"] == [ERROR_URN], data
    assert data["status"] == str(status), data
    if scim_type is not None:
        assert data.get("scimType") == scim_type, data
    if mentions is not None:
        assert mentions.lower() in data["detail"].lower(), data


# ---------------------------------------------------------------- seed data for filters

SEED = [
    # userName, given, family, title, work mail, externalId, department, active, employeeNumber
    ("alice@example.com", "Alice", "Anderson", "Engineer", "alice@x.example", "EXT-Alice", "Eng", True, "E100"),
    ("Bob@example.com", "Bob", "Brown", "Manager", "bob@Y.example", "ext-bob", "Sales", False, "E200"),
    ("carol@corp.example", "Carol", "Carlson", None, "carol@x.example", "ext-carol", "Eng", True, "E300"),
    ("dave@example.com", "Dave", "Davidson", "Engineer", None, "ext-dave", None, True, None),
]


async def seed_users(scim: Scim) -> dict[str, dict[str, Any]]:
    """Create the SEED users in order; return them keyed by the local part of userName, lower-cased."""
    out: dict[str, dict[str, Any]] = {}
    for user_name, given, family, title, mail, ext, dept, active, emp in SEED:
        body = user_body(
            user_name,
            active=active,
            externalId=ext,
            displayName=f"{given} {family}",
            name={"givenName": given, "familyName": family},
        )
        if title:
            body["title"] = title
        if mail:
            body["emails"] = [{"type": "work", "value": mail, "primary": True}]
        enterprise = {k: v for k, v in (("department", dept), ("employeeNumber", emp)) if v}
        if enterprise:
            body["schemas"] = [USER_URN, ENTERPRISE_URN]
            body[ENTERPRISE_URN] = enterprise
        resp, data = await scim.post("/Users", body)
        assert resp.status == 201, data
        out[user_name.split("@")[0].lower()] = data
    return out


async def filter_names(scim: Scim, text: str, endpoint: str = "/Users") -> set[str]:
    resp, data = await scim.get(f"{endpoint}?filter={q(text)}")
    assert resp.status == 200, (text, data)
    assert data["schemas"] == [LIST_URN]
    resources = data.get("Resources", [])
    assert data["totalResults"] == len(resources), data
    key = "userName" if endpoint == "/Users" else "displayName"
    return {r[key].split("@")[0].lower() for r in resources}


USER_FILTERS: list[tuple[str, set[str]]] = [
    ('userName eq "alice@example.com"', {"alice"}),
    ('userName ne "alice@example.com"', {"bob", "carol", "dave"}),
    ('name.familyName co "son"', {"alice", "carol", "dave"}),
    ('name.familyName co "SON"', {"alice", "carol", "dave"}),
    ('userName sw "B"', {"bob"}),
    ('userName ew "@example.com"', {"alice", "bob", "dave"}),
    ("title pr", {"alice", "bob", "dave"}),
    ("emails pr", {"alice", "bob", "carol"}),
    ('userName gt "bob@example.com"', {"carol", "dave"}),
    ('userName ge "bob@example.com"', {"bob", "carol", "dave"}),
    ('userName lt "bob@example.com"', {"alice"}),
    ('userName le "Bob@Example.com"', {"alice", "bob"}),
    ('title eq "engineer"', {"alice", "dave"}),
    ("active eq false", {"bob"}),
    ("active ne true", {"bob"}),
    ("active eq true", {"alice", "carol", "dave"}),
    ('title eq "Engineer" and active eq true', {"alice", "dave"}),
    ('title eq "Manager" or userName sw "carol"', {"bob", "carol"}),
    ('(title eq "Engineer" or title eq "Manager") and active eq false', {"bob"}),
    ('title eq "Engineer" or title eq "Manager" and active eq false', {"alice", "bob", "dave"}),  # and binds tighter
    ("not (title pr)", {"carol"}),
    ('not (userName sw "a") and not (userName sw "b")', {"carol", "dave"}),
    ('not (title eq "Engineer" or title eq "Manager")', {"carol"}),
    ('emails[type eq "work" and value co "@x"]', {"alice", "carol"}),
    ('emails[type eq "work" and value co "@X.EXAMPLE"]', {"alice", "carol"}),
    ('emails[type eq "home"]', set()),
    ('emails.value ew "y.example"', {"bob"}),
    ('emails[value sw "carol"] or emails[value sw "bob"]', {"bob", "carol"}),
    (f'{ENTERPRISE_URN}:department eq "Eng"', {"alice", "carol"}),
    (f'{ENTERPRISE_URN}:department eq "eng"', {"alice", "carol"}),
    (f'{ENTERPRISE_URN}:employeeNumber gt "E150"', {"bob", "carol"}),
    (f"{ENTERPRISE_URN}:department pr", {"alice", "bob", "carol"}),
    ('name.givenName eq "ALICE"', {"alice"}),
    ('displayName eq "Carol Carlson"', {"carol"}),
    ('externalId eq "EXT-Alice"', {"alice"}),
    ('externalId eq "ext-alice"', set()),  # externalId is caseExact
    ('userName eq "nobody@example.com"', set()),
]


@pytest.mark.parametrize(("text", "expected"), USER_FILTERS, ids=[f[0] for f in USER_FILTERS])
async def test_user_filters(scim: Scim, text: str, expected: set[str]) -> None:
    await seed_users(scim)
    assert await filter_names(scim, text) == expected


async def test_filter_username_eq_is_case_insensitive(scim: Scim) -> None:
    users = await seed_users(scim)
    for spelling in ("alice@example.com", "ALICE@EXAMPLE.COM", "Alice@Example.Com"):
        resp, data = await scim.get("/Users?filter=" + q(f'userName eq "{spelling}"'))
        assert resp.status == 200
        assert [r["id"] for r in data["Resources"]] == [users["alice"]["id"]]


async def test_filter_by_id(scim: Scim) -> None:
    users = await seed_users(scim)
    assert await filter_names(scim, f'id eq "{users["carol"]["id"]}"') == {"carol"}
    assert await filter_names(scim, f'id eq "{users["carol"]["id"]}" or id eq "{users["bob"]["id"]}"') == {"carol", "bob"}


async def test_filter_meta_datetimes(scim: Scim) -> None:
    users = await seed_users(scim)
    alice_modified = users["alice"]["meta"]["lastModified"]
    bob_modified = users["bob"]["meta"]["lastModified"]
    carol_created = users["carol"]["meta"]["created"]
    assert alice_modified < bob_modified < users["carol"]["meta"]["lastModified"]
    assert await filter_names(scim, f'meta.lastModified gt "{alice_modified}"') == {"bob", "carol", "dave"}
    assert await filter_names(scim, f'meta.lastModified ge "{bob_modified}"') == {"bob", "carol", "dave"}
    assert await filter_names(scim, f'meta.lastModified le "{bob_modified}"') == {"alice", "bob"}
    assert await filter_names(scim, f'meta.created lt "{carol_created}"') == {"alice", "bob"}
    # The same instant in another time zone compares the same.
    instant = datetime.fromisoformat(alice_modified.replace("Z", "+00:00"))
    shifted = instant.astimezone(timezone(timedelta(hours=2))).isoformat()
    assert await filter_names(scim, f'meta.lastModified gt "{shifted}"') == {"bob", "carol", "dave"}
    # Everything is modified after an instant in the past, nothing after one in the future.
    assert await filter_names(scim, 'meta.lastModified gt "2000-01-01T00:00:00Z"') == {"alice", "bob", "carol", "dave"}
    assert await filter_names(scim, 'meta.lastModified gt "2999-01-01T00:00:00Z"') == set()


async def test_filter_meta_lastmodified_moves_on_update(scim: Scim) -> None:
    users = await seed_users(scim)
    dave_modified = users["dave"]["meta"]["lastModified"]
    resp, data = await scim.patch(f"/Users/{users['alice']['id']}", [{"op": "replace", "path": "title", "value": "CTO"}])
    assert resp.status == 200, data
    assert data["meta"]["lastModified"] > dave_modified
    assert data["meta"]["created"] == users["alice"]["meta"]["created"]
    assert await filter_names(scim, f'meta.lastModified gt "{dave_modified}"') == {"alice"}


async def test_group_filters(scim: Scim) -> None:
    users = await seed_users(scim)
    alice, bob = users["alice"]["id"], users["bob"]["id"]
    created = {}
    for name, members in (("Engineering", [alice]), ("Sales", [bob]), ("Eng Leads", [alice, bob])):
        resp, data = await scim.post(
            "/Groups", {"schemas": [GROUP_URN], "displayName": name, "members": [{"value": m} for m in members]}
        )
        assert resp.status == 201, data
        created[name] = data["id"]
    assert await filter_names(scim, 'displayName eq "sales"', "/Groups") == {"sales"}
    assert await filter_names(scim, 'displayName sw "Eng"', "/Groups") == {"engineering", "eng leads"}
    assert await filter_names(scim, f'members[value eq "{bob}"]', "/Groups") == {"sales", "eng leads"}
    assert await filter_names(scim, f'members.value eq "{alice}"', "/Groups") == {"engineering", "eng leads"}
    # Entra checks membership with `id eq "g" and members eq "u"`.
    gid = created["Engineering"]
    assert await filter_names(scim, f'id eq "{gid}" and members eq "{alice}"', "/Groups") == {"engineering"}
    assert await filter_names(scim, f'id eq "{gid}" and members eq "{bob}"', "/Groups") == set()


INVALID_FILTERS: list[tuple[str, str | None]] = [
    ('foo eq "x"', "foo"),
    ('name.nickname eq "x"', "nickname"),
    (f'{ENTERPRISE_URN}:shoeSize eq "x"', "shoeSize"),
    ('emails[kind eq "work"]', "kind"),
    ('password eq "secret"', "password"),
    ("userName eq", None),
    ('userName "x"', None),
    ('(userName eq "x"', None),
    ('userName xx "x"', None),
    ('userName eq "x" and', None),
    ('userName eq "x" userName eq "y"', None),
]


@pytest.mark.parametrize(("text", "mentions"), INVALID_FILTERS, ids=[f[0] for f in INVALID_FILTERS])
async def test_invalid_filters(scim: Scim, text: str, mentions: str | None) -> None:
    await seed_users(scim)
    resp, data = await scim.get("/Users?filter=" + q(text))
    assert_error(resp, data, 400, "invalidFilter", mentions)
    resp, data = await scim.post("/Users/.search", {"schemas": [SEARCH_URN], "filter": text})
    assert_error(resp, data, 400, "invalidFilter", mentions)


async def test_unknown_attribute_in_group_filter(scim: Scim) -> None:
    resp, data = await scim.get("/Groups?filter=" + q('userName eq "x"'))
    assert_error(resp, data, 400, "invalidFilter", "userName")


# ---------------------------------------------------------------- sorting and paging


async def test_sort_by_username_case_insensitive(scim: Scim) -> None:
    await seed_users(scim)
    resp, data = await scim.get("/Users?sortBy=userName")
    assert resp.status == 200, data
    assert [r["userName"] for r in data["Resources"]] == [
        "alice@example.com",
        "Bob@example.com",
        "carol@corp.example",
        "dave@example.com",
    ]
    resp, data = await scim.get("/Users?sortBy=userName&sortOrder=descending")
    assert [r["userName"] for r in data["Resources"]] == [
        "dave@example.com",
        "carol@corp.example",
        "Bob@example.com",
        "alice@example.com",
    ]
    resp, data = await scim.get("/Users?sortBy=userName&sortOrder=ascending")
    assert [r["userName"] for r in data["Resources"]][0] == "alice@example.com"


async def test_sort_by_sub_attribute_and_extension(scim: Scim) -> None:
    await seed_users(scim)
    resp, data = await scim.get("/Users?sortBy=name.givenName&sortOrder=descending")
    assert resp.status == 200, data
    assert [r["name"]["givenName"] for r in data["Resources"]] == ["Dave", "Carol", "Bob", "Alice"]
    resp, data = await scim.get(f"/Users?sortBy={q(ENTERPRISE_URN + ':employeeNumber')}&sortOrder=descending")
    assert resp.status == 200, data
    # dave has no employeeNumber: RFC 7644 §3.4.2.3 puts him first when descending (last when ascending).
    assert [r["userName"] for r in data["Resources"]] == [
        "dave@example.com",
        "carol@corp.example",
        "Bob@example.com",
        "alice@example.com",
    ]
    resp, data = await scim.get(f"/Users?sortBy={q(ENTERPRISE_URN + ':employeeNumber')}")
    assert [r["userName"] for r in data["Resources"]] == [
        "alice@example.com",
        "Bob@example.com",
        "carol@corp.example",
        "dave@example.com",
    ]


async def test_sort_by_meta_created(scim: Scim) -> None:
    await seed_users(scim)
    resp, data = await scim.get("/Users?sortBy=meta.created&sortOrder=descending")
    assert resp.status == 200, data
    assert [r["userName"] for r in data["Resources"]] == [
        "dave@example.com",
        "carol@corp.example",
        "Bob@example.com",
        "alice@example.com",
    ]
    resp, data = await scim.get("/Users?sortBy=meta.lastModified")
    assert [r["userName"] for r in data["Resources"]] == [
        "alice@example.com",
        "Bob@example.com",
        "carol@corp.example",
        "dave@example.com",
    ]


async def test_sort_with_filter_and_paging(scim: Scim) -> None:
    await seed_users(scim)
    resp, data = await scim.get(
        "/Users?filter=" + q("active eq true") + "&sortBy=userName&sortOrder=descending&startIndex=2&count=1"
    )
    assert resp.status == 200, data
    assert data["totalResults"] == 3
    assert data["startIndex"] == 2
    assert data["itemsPerPage"] == 1
    assert [r["userName"] for r in data["Resources"]] == ["carol@corp.example"]


async def test_sort_by_unknown_attribute_is_400(scim: Scim) -> None:
    resp, data = await scim.get("/Users?sortBy=shoeSize")
    assert_error(resp, data, 400, mentions="shoeSize")


async def test_paging_is_stable_and_complete(scim: Scim) -> None:
    ids = []
    for i in range(7):
        resp, data = await scim.post("/Users", user_body(f"page{i}@example.com"))
        assert resp.status == 201, data
        ids.append(data["id"])
    for sort in ("", "&sortBy=userName"):
        seen: list[str] = []
        for start in (1, 4, 7):
            resp, data = await scim.get(f"/Users?startIndex={start}&count=3{sort}")
            assert resp.status == 200, data
            assert data["totalResults"] == 7
            assert data["startIndex"] == start
            assert data["itemsPerPage"] == len(data["Resources"]) == (3 if start < 7 else 1)
            seen += [r["id"] for r in data["Resources"]]
        assert seen == ids  # creation order and userName order coincide here; no duplicates, none missing
        # The same page twice is the same page.
        first = (await scim.get(f"/Users?startIndex=4&count=3{sort}"))[1]
        again = (await scim.get(f"/Users?startIndex=4&count=3{sort}"))[1]
        assert [r["id"] for r in first["Resources"]] == [r["id"] for r in again["Resources"]] == ids[3:6]
    # Past the end: an empty page, still the total.
    resp, data = await scim.get("/Users?startIndex=50&count=3")
    assert resp.status == 200
    assert data["totalResults"] == 7
    assert data.get("Resources", []) == []
    # startIndex below 1 is taken as 1 (RFC 7644 §3.4.2.4).
    resp, data = await scim.get("/Users?startIndex=0&count=2")
    assert data["startIndex"] == 1
    assert [r["id"] for r in data["Resources"]] == ids[:2]


async def test_count_zero_returns_total_only(scim: Scim) -> None:
    await seed_users(scim)
    resp, data = await scim.get("/Users?count=0")
    assert resp.status == 200, data
    assert data["totalResults"] == 4
    assert data["itemsPerPage"] == 0
    assert data.get("Resources", []) == []
    resp, data = await scim.get("/Users?count=0&filter=" + q("active eq true"))
    assert data["totalResults"] == 3
    assert data.get("Resources", []) == []


async def test_count_above_max_is_capped_not_refused(scim: Scim) -> None:
    await seed_users(scim)
    resp, data = await scim.get("/Users?count=100000")
    assert resp.status == 200, data
    assert data["totalResults"] == 4
    assert len(data["Resources"]) == 4


async def test_non_integer_count_is_400(scim: Scim) -> None:
    resp, data = await scim.get("/Users?count=ten")
    assert_error(resp, data, 400, "invalidValue", "count")


# ---------------------------------------------------------------- attributes / excludedAttributes


async def test_attributes_parameter(scim: Scim) -> None:
    users = await seed_users(scim)
    alice = users["alice"]["id"]
    resp, data = await scim.get(f"/Users/{alice}?attributes=userName")
    assert resp.status == 200, data
    assert data["id"] == alice
    assert data["userName"] == "alice@example.com"
    for absent in ("name", "emails", "title", "active", "externalId", ENTERPRISE_URN, "password"):
        assert absent not in data, absent
    resp, data = await scim.get(f"/Users/{alice}?attributes=name.givenName,{q(ENTERPRISE_URN + ':department')}")
    assert resp.status == 200, data
    assert data["id"] == alice
    assert data["name"] == {"givenName": "Alice"}
    assert data[ENTERPRISE_URN] == {"department": "Eng"}
    assert "userName" not in data
    # On lists too.
    resp, data = await scim.get("/Users?attributes=userName&filter=" + q('userName sw "a"'))
    assert resp.status == 200, data
    assert [set(r) - {"schemas", "meta"} for r in data["Resources"]] == [{"id", "userName"}]


async def test_excluded_attributes_parameter(scim: Scim) -> None:
    users = await seed_users(scim)
    alice = users["alice"]["id"]
    resp, data = await scim.get(f"/Users/{alice}?excludedAttributes=emails,name,id")
    assert resp.status == 200, data
    assert data["id"] == alice  # returned "always"
    assert data["userName"] == "alice@example.com"
    assert data["title"] == "Engineer"
    assert "emails" not in data and "name" not in data
    resp, data = await scim.get(f"/Users/{alice}?excludedAttributes={q(ENTERPRISE_URN)}")
    assert ENTERPRISE_URN not in data
    assert data["title"] == "Engineer"


async def test_password_never_returned(scim: Scim, data_dir: Path) -> None:
    resp, data = await scim.post("/Users", user_body("pw@example.com", password="Hunter2-Secret!"))
    assert resp.status == 201, data
    assert "password" not in data
    for path in (
        f"/Users/{data['id']}",
        f"/Users/{data['id']}?attributes=password",
        "/Users",
        "/Users?attributes=password,userName",
    ):
        resp, got = await scim.get(path)
        assert resp.status == 200, got
        assert "Hunter2-Secret!" not in await resp.text()
    for path in data_dir.iterdir():
        if path.name.startswith("gateway.db"):
            assert b"Hunter2-Secret!" not in path.read_bytes(), path.name


async def test_post_search(scim: Scim) -> None:
    users = await seed_users(scim)
    resp, data = await scim.post(
        "/Users/.search",
        {
            "schemas": [SEARCH_URN],
            "filter": 'userName ew "@example.com"',
            "attributes": ["userName"],
            "sortBy": "userName",
            "sortOrder": "descending",
            "startIndex": 1,
            "count": 2,
        },
    )
    assert resp.status == 200, data
    assert resp.content_type == SCIM_TYPE
    assert data["schemas"] == [LIST_URN]
    assert data["totalResults"] == 3
    assert data["itemsPerPage"] == 2
    assert [r["userName"] for r in data["Resources"]] == ["dave@example.com", "Bob@example.com"]
    assert [r["id"] for r in data["Resources"]] == [users["dave"]["id"], users["bob"]["id"]]
    assert all("name" not in r for r in data["Resources"])
    # excludedAttributes as a list, on groups.
    resp, data = await scim.post(
        "/Groups", {"schemas": [GROUP_URN], "displayName": "G", "members": [{"value": users["bob"]["id"]}]}
    )
    assert resp.status == 201, data
    resp, data = await scim.post("/Groups/.search", {"schemas": [SEARCH_URN], "excludedAttributes": ["members"]})
    assert resp.status == 200, data
    assert [r["displayName"] for r in data["Resources"]] == ["G"]
    assert "members" not in data["Resources"][0]


# ---------------------------------------------------------------- ETags, Location


async def test_etag_equals_meta_version(scim: Scim) -> None:
    resp, user = await scim.post("/Users", user_body("etag@example.com"))
    assert resp.status == 201
    assert resp.headers["ETag"] == user["meta"]["version"]
    resp, got = await scim.get(f"/Users/{user['id']}")
    assert resp.headers["ETag"] == got["meta"]["version"] == user["meta"]["version"]
    resp, patched = await scim.patch(f"/Users/{user['id']}", [{"op": "replace", "path": "title", "value": "T"}])
    assert resp.status == 200
    assert resp.headers["ETag"] == patched["meta"]["version"]
    assert patched["meta"]["version"] != user["meta"]["version"]
    resp, put = await scim.put(f"/Users/{user['id']}", user_body("etag@example.com", title="U"))
    assert resp.status == 200
    assert resp.headers["ETag"] == put["meta"]["version"]
    assert len({user["meta"]["version"], patched["meta"]["version"], put["meta"]["version"]}) == 3
    resp, listed = await scim.get("/Users")
    assert listed["Resources"][0]["meta"]["version"] == put["meta"]["version"]


async def test_if_none_match(scim: Scim) -> None:
    resp, user = await scim.post("/Users", user_body("inm@example.com"))
    etag = resp.headers["ETag"]
    resp, data = await scim.get(f"/Users/{user['id']}", headers={"If-None-Match": etag})
    assert resp.status == 304
    assert data is None
    assert resp.headers["ETag"] == etag
    await scim.patch(f"/Users/{user['id']}", [{"op": "replace", "path": "title", "value": "Changed"}])
    resp, data = await scim.get(f"/Users/{user['id']}", headers={"If-None-Match": etag})
    assert resp.status == 200
    assert data["title"] == "Changed"
    assert resp.headers["ETag"] != etag


async def test_if_match_mismatch_is_412_and_nothing_changes(scim: Scim, demo_db: sqlite3.Connection) -> None:
    resp, user = await scim.post("/Users", user_body("im@example.com", title="Before"))
    current = resp.headers["ETag"]
    stale = 'W/"999"'
    before = employee(demo_db, "im@example.com")
    resp, data = await scim.patch(
        f"/Users/{user['id']}", [{"op": "replace", "path": "title", "value": "After"}], headers={"If-Match": stale}
    )
    assert_error(resp, data, 412)
    resp, data = await scim.put(f"/Users/{user['id']}", user_body("im@example.com", title="After"), headers={"If-Match": stale})
    assert_error(resp, data, 412)
    resp, data = await scim.delete(f"/Users/{user['id']}", headers={"If-Match": stale})
    assert_error(resp, data, 412)
    assert employee(demo_db, "im@example.com") == before
    resp, data = await scim.get(f"/Users/{user['id']}")
    assert resp.headers["ETag"] == current
    assert data["title"] == "Before"
    # The current ETag matches.
    resp, data = await scim.patch(
        f"/Users/{user['id']}", [{"op": "replace", "path": "title", "value": "After"}], headers={"If-Match": current}
    )
    assert resp.status == 200, data
    assert employee(demo_db, "im@example.com")["job_title"] == "After"
    # ...and is stale now.
    resp, data = await scim.delete(f"/Users/{user['id']}", headers={"If-Match": current})
    assert_error(resp, data, 412)
    assert employee(demo_db, "im@example.com") is not None
    resp, _ = await scim.delete(f"/Users/{user['id']}", headers={"If-Match": "*"})
    assert resp.status == 204
    assert employee(demo_db, "im@example.com") is None


async def test_location_header_on_create(scim: Scim, client: TestClient) -> None:
    resp, user = await scim.post("/Users", user_body("loc@example.com"))
    assert resp.status == 201
    location = resp.headers["Location"]
    assert location == user["meta"]["location"]
    assert location.endswith(f"{BASE}/Users/{user['id']}")
    assert location.startswith("http://")
    resp, group = await scim.post("/Groups", {"schemas": [GROUP_URN], "displayName": "Loc"})
    assert resp.status == 201
    assert resp.headers["Location"] == group["meta"]["location"]
    assert group["meta"]["location"].endswith(f"{BASE}/Groups/{group['id']}")
    # The location answers.
    resp, got = await scim.get(location.split(BASE, 1)[1])
    assert resp.status == 200 and got["id"] == user["id"]
    assert got["meta"]["resourceType"] == "User"


# ---------------------------------------------------------------- content types


async def test_content_type_on_every_response(scim: Scim, client: TestClient) -> None:
    resp, user = await scim.post("/Users", user_body("ct@example.com"))
    assert (resp.status, resp.content_type) == (201, SCIM_TYPE)
    for path in (f"/Users/{user['id']}", "/Users", "/ServiceProviderConfig", "/ResourceTypes", "/Schemas"):
        resp, _ = await scim.get(path)
        assert (resp.status, resp.content_type) == (200, SCIM_TYPE), path
    resp, data = await scim.get("/Users/does-not-exist")
    assert_error(resp, data, 404)
    resp, data = await scim.post("/ServiceProviderConfig", {"schemas": [SPC_URN]})
    assert_error(resp, data, 405)
    assert "GET" in resp.headers["Allow"]
    resp, data = await scim.put("/Users", user_body("x@example.com"))
    assert_error(resp, data, 405)
    resp, data = await scim.delete("/Users")
    assert_error(resp, data, 405)
    resp, data = await scim.get("/Users?filter=" + q("bogus"))
    assert_error(resp, data, 400)
    # 401 without a token.
    resp = await client.get(f"{BASE}/Users")
    assert resp.status == 401
    assert resp.content_type == SCIM_TYPE
    body = await resp.json(content_type=None)
    assert body["schemas"] == [ERROR_URN] and body["status"] == "401"
    assert resp.headers["WWW-Authenticate"].lower().startswith("bearer")


async def test_content_type_is_exactly_the_scim_media_type(scim: Scim, client: TestClient) -> None:
    """The header as sent, not as parsed: some clients' test collections compare the exact string, and the
    SCIM media type (RFC 7644 §8.1) defines no parameters, so no `; charset=utf-8`."""
    resp, user = await scim.post("/Users", user_body("exact-ct@example.com"))
    answers = [resp, (await scim.get(f"/Users/{user['id']}"))[0], (await scim.get("/Users?filter=" + q("bogus")))[0]]
    answers += [await client.get(f"{BASE}/Users"), await client.get("/nowhere")]
    assert [(r.status, r.headers["Content-Type"]) for r in answers] == [
        (201, SCIM_TYPE),
        (200, SCIM_TYPE),
        (400, SCIM_TYPE),
        (401, SCIM_TYPE),
        (404, SCIM_TYPE),
    ]


async def test_unknown_paths_are_scim_404(scim: Scim, client: TestClient) -> None:
    resp, data = await scim.get("/Nope")
    assert_error(resp, data, 404, mentions="Nope")
    resp, data = await scim.get(f"/Users/{'x' * 8}/extra")
    assert_error(resp, data, 404)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/nope", "/apps/unknown/scim/v2/Users", "/apps/demo"):
        resp = await client.get(path, headers=headers)
        assert resp.status == 404, path
        assert resp.content_type == SCIM_TYPE, path
        body = await resp.json(content_type=None)
        assert body["schemas"] == [ERROR_URN] and body["status"] == "404", path


async def test_application_json_requests_accepted(scim: Scim, demo_db: sqlite3.Connection) -> None:
    json_headers = {"Content-Type": "application/json"}
    resp, user = await scim.post("/Users", user_body("json@example.com"), headers=json_headers)
    assert resp.status == 201, user
    assert resp.content_type == SCIM_TYPE
    resp, data = await scim.patch(
        f"/Users/{user['id']}", [{"op": "replace", "path": "title", "value": "J"}], headers=json_headers
    )
    assert resp.status == 200, data
    resp, data = await scim.put(
        f"/Users/{user['id']}",
        user_body("json@example.com", title="K"),
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert resp.status == 200, data
    assert employee(demo_db, "json@example.com")["job_title"] == "K"
    # Accept headers Okta and Entra send do not matter.
    resp, data = await scim.get(f"/Users/{user['id']}", headers={"Accept": "application/json"})
    assert resp.status == 200


# ---------------------------------------------------------------- uniqueness


async def test_username_uniqueness_is_case_insensitive(scim: Scim, demo_db: sqlite3.Connection) -> None:
    resp, first = await scim.post("/Users", user_body("dup@example.com"))
    assert resp.status == 201
    resp, data = await scim.post("/Users", user_body("DUP@Example.COM"))
    assert_error(resp, data, 409, "uniqueness")
    assert count(demo_db, "employees") == 1
    assert employee(demo_db, "dup@example.com")["login"] == "dup@example.com"
    resp, listed = await scim.get("/Users")
    assert [r["id"] for r in listed["Resources"]] == [first["id"]]


async def test_rename_onto_taken_username_is_409(scim: Scim, demo_db: sqlite3.Connection) -> None:
    await scim.post("/Users", user_body("taken@example.com"))
    resp, other = await scim.post("/Users", user_body("other@example.com"))
    resp, data = await scim.patch(f"/Users/{other['id']}", [{"op": "replace", "path": "userName", "value": "TAKEN@example.com"}])
    assert_error(resp, data, 409, "uniqueness")
    assert employee(demo_db, "other@example.com") is not None
    # Renaming onto one's own name in another case is fine.
    resp, data = await scim.patch(f"/Users/{other['id']}", [{"op": "replace", "path": "userName", "value": "Other@Example.com"}])
    assert resp.status == 200, data
    assert employee(demo_db, "other@example.com")["login"] == "Other@Example.com"


async def test_concurrent_creates_of_one_username(scim: Scim, demo_db: sqlite3.Connection) -> None:
    names = [("Race@Example.com" if i % 2 else "race@example.com") for i in range(50)]
    results = await asyncio.gather(*(scim.post("/Users", user_body(n)) for n in names))
    statuses = sorted(resp.status for resp, _ in results)
    assert statuses == [201] + [409] * 49, statuses
    assert all(data["scimType"] == "uniqueness" for resp, data in results if resp.status == 409)
    assert count(demo_db, "employees") == 1
    resp, listed = await scim.get("/Users")
    assert listed["totalResults"] == 1


async def test_concurrent_creates_of_one_group_name(scim: Scim, demo_db: sqlite3.Connection) -> None:
    results = await asyncio.gather(*(scim.post("/Groups", {"schemas": [GROUP_URN], "displayName": "Racers"}) for _ in range(10)))
    statuses = sorted(resp.status for resp, _ in results)
    assert statuses == [201] + [409] * 9, statuses
    assert count(demo_db, "teams") == 1


async def test_concurrent_patches_lose_nothing(scim: Scim, demo_db: sqlite3.Connection) -> None:
    users = []
    for i in range(100):
        resp, u = await scim.post("/Users", user_body(f"m{i}@example.com"))
        users.append(u)
    resp, group = await scim.post("/Groups", {"schemas": [GROUP_URN], "displayName": "Crowd"})
    # Entra sends membership changes in parallel, one member each.
    results = await asyncio.gather(
        *(scim.patch(f"/Groups/{group['id']}", [{"op": "add", "path": "members", "value": [{"value": u["id"]}]}]) for u in users)
    )
    assert [resp.status for resp, _ in results] == [200] * 100
    assert count(demo_db, "team_members") == 100
    resp, data = await scim.get(f"/Groups/{group['id']}")
    assert {m["value"] for m in data["members"]} == {u["id"] for u in users}


# ---------------------------------------------------------------- per-app tokens


OTHER_TOKEN = "other-app-token-9876543210"


def other_app_settings(data_dir: Path) -> GatewaySettings:
    """The demo app plus a second app `other` on its own copy of the HR schema, each with its own token."""
    ensure_demo_database(data_dir)
    other_db = data_dir / "other.db"
    schema = (demo_mapping_path().parent / "schema.sql").read_text("utf-8")
    with sqlite3.connect(other_db) as db:
        db.executescript(schema)
    text = demo_mapping_path().read_text("utf-8")
    assert "app: demo" in text and "{data_dir}/demo.db" in text
    other = data_dir / "other.yaml"
    other.write_text(text.replace("app: demo", "app: other").replace("{data_dir}/demo.db", "{data_dir}/other.db"), "utf-8")
    return GatewaySettings(
        mappings=[demo_mapping_path(), other],
        data_dir=data_dir,
        extra_tokens={"demo": [SecretStr(TOKEN)], "other": [SecretStr(OTHER_TOKEN)]},
    )


async def test_a_token_is_valid_for_its_app_only(aiohttp_client: Any, tmp_path: Path) -> None:
    data_dir = tmp_path / "two"
    client = await aiohttp_client(create_app(other_app_settings(data_dir)))
    demo = Scim(client)
    other = Scim(client, token=OTHER_TOKEN, base="/apps/other/scim/v2")
    demo_with_other_token = Scim(client, token=OTHER_TOKEN)
    other_with_demo_token = Scim(client, token=TOKEN, base="/apps/other/scim/v2")

    resp, data = await other.post("/Users", user_body("only.other@example.com"))
    assert resp.status == 201, data
    assert data["meta"]["location"].endswith(f"/apps/other/scim/v2/Users/{data['id']}")
    for wrong in (demo_with_other_token, other_with_demo_token):
        resp, body = await wrong.get("/Users")
        assert_error(resp, body, 401)
        resp, body = await wrong.post("/Users", user_body("sneaky@example.com"))
        assert_error(resp, body, 401)
    # The other app's user is not the demo app's, in the gateway or in either database.
    resp, listed = await demo.get("/Users")
    assert listed["totalResults"] == 0
    resp, got = await demo.get(f"/Users/{data['id']}")
    assert resp.status == 404
    with sqlite3.connect(data_dir / "demo.db") as db:
        assert db.execute("SELECT count(*) FROM employees").fetchone()[0] == 0
    with sqlite3.connect(data_dir / "other.db") as db:
        assert [r[0] for r in db.execute("SELECT login FROM employees")] == ["only.other@example.com"]
    # The same userName may exist in both apps.
    resp, data = await demo.post("/Users", user_body("only.other@example.com"))
    assert resp.status == 201, data


@pytest.mark.parametrize("header", ["Bearer wrong-token", "Bearer", "Basic dXNlcjpwYXNz", f"bearer {TOKEN}x", ""])
async def test_wrong_token_is_401_with_scim_body(client: TestClient, demo_db: sqlite3.Connection, header: str) -> None:
    headers = {"Content-Type": "application/scim+json"}
    if header:
        headers["Authorization"] = header
    resp = await client.post(f"{BASE}/Users", json=user_body("intruder@example.com"), headers=headers)
    assert resp.status == 401
    assert resp.content_type == SCIM_TYPE
    body = await resp.json(content_type=None)
    assert body["schemas"] == [ERROR_URN]
    assert body["status"] == "401"
    assert count(demo_db, "employees") == 0


async def test_bearer_scheme_is_case_insensitive(client: TestClient) -> None:
    resp = await client.get(f"{BASE}/Users", headers={"Authorization": f"bearer {TOKEN}"})
    assert resp.status == 200


# ---------------------------------------------------------------- discovery


async def test_service_provider_config(scim: Scim) -> None:
    resp, data = await scim.get("/ServiceProviderConfig")
    assert resp.status == 200
    assert data["schemas"] == [SPC_URN]
    assert data["patch"]["supported"] is True
    assert data["bulk"]["supported"] is True
    assert data["bulk"]["maxOperations"] == 1000
    assert data["bulk"]["maxPayloadSize"] == 1_048_576
    assert data["filter"] == {"supported": True, "maxResults": 1000}
    assert data["sort"]["supported"] is True
    assert data["etag"]["supported"] is True
    assert data["changePassword"]["supported"] is False
    assert [s["type"] for s in data["authenticationSchemes"]] == ["oauthbearertoken"]


async def test_resource_types(scim: Scim) -> None:
    resp, data = await scim.get("/ResourceTypes")
    assert resp.status == 200
    assert data["schemas"] == [LIST_URN]
    by_name = {r["name"]: r for r in data["Resources"]}
    assert set(by_name) == {"User", "Group"}
    assert data["totalResults"] == 2
    user = by_name["User"]
    assert user["endpoint"] == "/Users"
    assert user["schema"] == USER_URN
    assert [e["schema"] for e in user["schemaExtensions"]] == [ENTERPRISE_URN]
    assert by_name["Group"]["schema"] == GROUP_URN
    assert by_name["Group"]["endpoint"] == "/Groups"
    resp, one = await scim.get("/ResourceTypes/User")
    assert resp.status == 200 and one["name"] == "User"
    resp, data = await scim.get("/ResourceTypes/Widget")
    assert_error(resp, data, 404)


async def test_schemas(scim: Scim) -> None:
    resp, data = await scim.get("/Schemas")
    assert resp.status == 200
    ids = {s["id"] for s in data["Resources"]}
    assert ids == {USER_URN, GROUP_URN, ENTERPRISE_URN}
    resp, ent = await scim.get(f"/Schemas/{ENTERPRISE_URN}")
    assert resp.status == 200
    assert ent["id"] == ENTERPRISE_URN
    names = {a["name"] for a in ent["attributes"]}
    assert {"department", "manager", "employeeNumber"} <= names
    resp, user = await scim.get(f"/Schemas/{USER_URN}")
    password = next(a for a in user["attributes"] if a["name"] == "password")
    assert (password["mutability"], password["returned"]) == ("writeOnly", "never")
    resp, data = await scim.get("/Schemas/urn:nope")
    assert_error(resp, data, 404)


async def test_discovery_endpoints_reject_writes(scim: Scim) -> None:
    for path in ("/ServiceProviderConfig", "/ResourceTypes", "/Schemas"):
        resp, data = await scim.post(path, {"schemas": [SPC_URN]})
        assert_error(resp, data, 405)
        resp, data = await scim.delete(path)
        assert_error(resp, data, 405)


# ---------------------------------------------------------------- deleted resources


async def test_deleted_user_is_404_everywhere(scim: Scim, demo_db: sqlite3.Connection) -> None:
    resp, user = await scim.post("/Users", user_body("deleted@example.com"))
    uid = user["id"]
    resp, _ = await scim.delete(f"/Users/{uid}")
    assert resp.status == 204
    resp, data = await scim.get(f"/Users/{uid}")
    assert_error(resp, data, 404)
    resp, data = await scim.patch(f"/Users/{uid}", [{"op": "replace", "path": "title", "value": "x"}])
    assert_error(resp, data, 404)
    resp, data = await scim.put(f"/Users/{uid}", user_body("deleted@example.com"))
    assert_error(resp, data, 404)
    resp, data = await scim.delete(f"/Users/{uid}")
    assert_error(resp, data, 404)
    assert count(demo_db, "employees") == 0
    # Recreating the same userName issues a new id.
    resp, again = await scim.post("/Users", user_body("deleted@example.com"))
    assert resp.status == 201
    assert again["id"] != uid


async def test_user_deleted_in_the_app_is_404(scim: Scim, demo_db: sqlite3.Connection) -> None:
    resp, user = await scim.post("/Users", user_body("vanished@example.com"))
    demo_db.execute("DELETE FROM employees WHERE login = 'vanished@example.com'")
    demo_db.commit()
    resp, data = await scim.get(f"/Users/{user['id']}")
    assert_error(resp, data, 404)


async def test_reads_reflect_changes_made_in_the_app(scim: Scim, demo_db: sqlite3.Connection) -> None:
    """GET by id reads the app: a change made directly in the legacy database shows."""
    resp, user = await scim.post("/Users", user_body("live@example.com", title="Old"))
    demo_db.execute("UPDATE employees SET job_title = 'Changed in app', status = 'I' WHERE login = 'live@example.com'")
    demo_db.commit()
    resp, data = await scim.get(f"/Users/{user['id']}")
    assert resp.status == 200
    assert data["title"] == "Changed in app"
    assert data["active"] is False


# ---------------------------------------------------------------- PATCH and PUT semantics, on the rows


async def test_patch_complex_and_multi_valued_semantics(scim: Scim, demo_db: sqlite3.Connection) -> None:
    resp, user = await scim.post(
        "/Users",
        user_body(
            "sem@example.com",
            name={"givenName": "Sam", "familyName": "Semantic"},
            emails=[{"type": "work", "value": "sem@example.com", "primary": True}],
            phoneNumbers=[{"type": "work", "value": "+1 555 0199"}],
        ),
    )
    assert resp.status == 201, user
    uid = user["id"]
    # replace on a complex attribute leaves sub-attributes not given unchanged (RFC 7644 §3.5.2.3).
    resp, data = await scim.patch(f"/Users/{uid}", [{"op": "replace", "path": "name", "value": {"givenName": "Samuel"}}])
    assert resp.status == 200, data
    assert data["name"] == {"givenName": "Samuel", "familyName": "Semantic"}
    row = employee(demo_db, "sem@example.com")
    assert (row["first_nm"], row["last_nm"]) == ("Samuel", "Semantic")
    # remove a sub-attribute.
    resp, data = await scim.patch(f"/Users/{uid}", [{"op": "remove", "path": "name.familyName"}])
    assert resp.status == 200, data
    assert data["name"] == {"givenName": "Samuel"}
    assert employee(demo_db, "sem@example.com")["last_nm"] is None
    # remove by value filter clears the mapped column.
    resp, data = await scim.patch(f"/Users/{uid}", [{"op": "remove", "path": 'emails[type eq "work"]'}])
    assert resp.status == 200, data
    assert "emails" not in data
    assert employee(demo_db, "sem@example.com")["mail"] is None
    # replace the whole multi-valued attribute.
    resp, data = await scim.patch(
        f"/Users/{uid}", [{"op": "replace", "path": "phoneNumbers", "value": [{"type": "work", "value": "+44 20 7946 0000"}]}]
    )
    assert resp.status == 200, data
    assert employee(demo_db, "sem@example.com")["phone"] == "+44 20 7946 0000"
    # remove a whole attribute.
    resp, data = await scim.patch(f"/Users/{uid}", [{"op": "remove", "path": "phoneNumbers"}])
    assert resp.status == 200, data
    assert "phoneNumbers" not in data
    assert employee(demo_db, "sem@example.com")["phone"] is None
    # removing what is not there succeeds (IdPs retry) and changes nothing.
    before = employee(demo_db, "sem@example.com")
    resp, data = await scim.patch(f"/Users/{uid}", [{"op": "remove", "path": "title"}])
    assert resp.status == 200, data
    assert employee(demo_db, "sem@example.com") == before


async def test_unmapped_attributes_round_trip(scim: Scim, demo_db: sqlite3.Connection) -> None:
    """Attributes the app has no column for are kept by the gateway and returned."""
    resp, user = await scim.post(
        "/Users",
        user_body(
            "rt@example.com",
            nickName="Nick",
            locale="de-CH",
            emails=[{"type": "work", "value": "rt@example.com"}, {"type": "home", "value": "rt@home.example"}],
        ),
    )
    assert resp.status == 201, user
    resp, got = await scim.get(f"/Users/{user['id']}")
    assert got["nickName"] == "Nick"
    assert got["locale"] == "de-CH"
    assert sorted((e["type"], e["value"]) for e in got["emails"]) == [("home", "rt@home.example"), ("work", "rt@example.com")]
    assert employee(demo_db, "rt@example.com")["mail"] == "rt@example.com"
    assert await filter_names(scim, 'emails[type eq "home" and value ew "home.example"]') == {"rt"}


async def test_user_groups_attribute(scim: Scim) -> None:
    users = await seed_users(scim)
    alice = users["alice"]["id"]
    resp, g = await scim.post("/Groups", {"schemas": [GROUP_URN], "displayName": "Before", "members": [{"value": alice}]})
    resp, data = await scim.patch(f"/Groups/{g['id']}", [{"op": "replace", "path": "displayName", "value": "After"}])
    assert resp.status == 200, data
    resp, got = await scim.get(f"/Users/{alice}")
    assert [(x["value"], x.get("display")) for x in got["groups"]] == [(g["id"], "After")]
    assert got["groups"][0]["$ref"].endswith(f"/Groups/{g['id']}")
    resp, got = await scim.get(f"/Users/{alice}?excludedAttributes=groups")
    assert "groups" not in got
    resp, listed = await scim.get("/Users?attributes=groups&filter=" + q('userName sw "alice"'))
    assert [x["value"] for x in listed["Resources"][0]["groups"]] == [g["id"]]
    assert await filter_names(scim, f'groups.value eq "{g["id"]}"') == {"alice"}
    assert await filter_names(scim, f'groups[value eq "{g["id"]}"]') == {"alice"}


async def test_group_etag_and_if_match(scim: Scim, demo_db: sqlite3.Connection) -> None:
    resp, g = await scim.post("/Groups", {"schemas": [GROUP_URN], "displayName": "Tagged"})
    etag = resp.headers["ETag"]
    assert etag == g["meta"]["version"]
    resp, data = await scim.patch(
        f"/Groups/{g['id']}", [{"op": "replace", "path": "displayName", "value": "Stale"}], headers={"If-Match": 'W/"42"'}
    )
    assert_error(resp, data, 412)
    assert [r[0] for r in demo_db.execute("SELECT team_name FROM teams")] == ["Tagged"]
    resp, data = await scim.patch(
        f"/Groups/{g['id']}", [{"op": "replace", "path": "displayName", "value": "Fresh"}], headers={"If-Match": etag}
    )
    assert resp.status == 200, data
    assert [r[0] for r in demo_db.execute("SELECT team_name FROM teams")] == ["Fresh"]


async def test_patch_does_not_revert_changes_made_in_the_app(scim: Scim, demo_db: sqlite3.Connection) -> None:
    """A PATCH of one attribute writes that attribute; it does not write back a stale copy of the others."""
    resp, user = await scim.post("/Users", user_body("stale@example.com", title="Old title", displayName="Old name"))
    demo_db.execute("UPDATE employees SET job_title = 'Changed in app' WHERE login = 'stale@example.com'")
    demo_db.commit()
    resp, data = await scim.patch(f"/Users/{user['id']}", [{"op": "replace", "path": "displayName", "value": "New name"}])
    assert resp.status == 200, data
    row = employee(demo_db, "stale@example.com")
    assert row["display_nm"] == "New name"
    assert row["job_title"] == "Changed in app"
    assert data["title"] == "Changed in app"


async def test_create_inactive_and_active_not_given(scim: Scim, demo_db: sqlite3.Connection) -> None:
    resp, off = await scim.post("/Users", user_body("off@example.com", active=False))
    assert resp.status == 201, off
    assert off["active"] is False
    assert employee(demo_db, "off@example.com")["status"] == "I"
    # Not given is not assigned: the demo maps it to NULL ("never set") and invents no value.
    resp, unset = await scim.post("/Users", {"schemas": [USER_URN], "userName": "unset@example.com"})
    assert resp.status == 201, unset
    assert "active" not in unset
    assert employee(demo_db, "unset@example.com")["status"] is None


async def test_if_none_match_star_is_304_for_an_existing_resource(scim: Scim) -> None:
    _, user = await scim.post("/Users", user_body("star@example.com"))
    resp, _ = await scim.get(f"/Users/{user['id']}", headers={"If-None-Match": "*"})
    assert resp.status == 304


async def test_root_search_with_a_filter_spans_the_resource_types_that_have_the_attribute(scim: Scim) -> None:
    await scim.post("/Users", user_body("root.search@example.com", displayName="Engineers Lead"))
    await scim.post("/Groups", {"schemas": [GROUP_URN], "displayName": "Engineers"})
    await scim.post("/Groups", {"schemas": [GROUP_URN], "displayName": "Sales"})
    search = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"], "filter": 'displayName sw "Eng"'}
    resp, data = await scim.post("/.search", search)
    assert resp.status == 200, data
    assert data["totalResults"] == 2
    assert sorted(r["displayName"] for r in data["Resources"]) == ["Engineers", "Engineers Lead"]
    # userName exists only on Users: Groups contribute nothing, and that is no error.
    resp, data = await scim.post("/.search", {**search, "filter": 'userName eq "root.search@example.com"'})
    assert (resp.status, data["totalResults"]) == (200, 1)
    resp, data = await scim.post("/.search", {**search, "filter": 'nosuch eq "x"'})
    assert resp.status == 400 and data["scimType"] == "invalidFilter"


async def test_group_display_name_is_advertised_unique(scim: Scim) -> None:
    _, schema = await scim.get(f"/Schemas/{GROUP_URN}")
    (display,) = [a for a in schema["attributes"] if a["name"] == "displayName"]
    assert display["uniqueness"] == "server"
