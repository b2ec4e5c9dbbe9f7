"""When the app changes behind the gateway's back: edits, deletes, and writes that change nothing."""

from __future__ import annotations

import sqlite3

import pytest

from tests.conftest import Scim, user_body
from tests.demo_rows import q

pytestmark = pytest.mark.both_stores  # the same gateway tests on the SQLite and the PostgreSQL store


async def test_reading_never_makes_a_new_version(scim: Scim) -> None:
    _, user = await scim.post("/Users", user_body("steady", title="x"))
    for _ in range(3):
        resp, body = await scim.get(f"/Users/{user['id']}")
        assert resp.headers["ETag"] == 'W/"1"' and body["meta"]["version"] == 'W/"1"'


async def test_an_edit_made_in_the_app_reaches_lists_and_etags(scim: Scim, demo_db: sqlite3.Connection) -> None:
    _, user = await scim.post("/Users", user_body("drift", title="Before"))
    demo_db.execute("UPDATE employees SET job_title = 'After' WHERE login = 'drift'")
    demo_db.commit()
    resp, body = await scim.get(f"/Users/{user['id']}")
    assert body["title"] == "After"
    assert resp.headers["ETag"] == 'W/"2"', "a changed resource is a new version"
    _, listed = await scim.get("/Users?filter=" + q('title eq "After"'))
    assert [r["id"] for r in listed["Resources"]] == [user["id"]]


async def test_a_user_renamed_in_the_app_is_found_by_its_new_name_and_frees_the_old(
    scim: Scim, demo_db: sqlite3.Connection
) -> None:
    _, user = await scim.post("/Users", user_body("Old.Name"))
    demo_db.execute("UPDATE employees SET login = 'New.Name' WHERE login = 'old.name' OR login = 'Old.Name'")
    demo_db.commit()
    resp, body = await scim.get(f"/Users/{user['id']}")
    assert body["userName"] == "New.Name"
    # The IdP's lookup goes by the unique key: it follows the rename, in any case.
    _, listed = await scim.get("/Users?filter=" + q('userName eq "new.NAME"'))
    assert [r["id"] for r in listed["Resources"]] == [user["id"]]
    _, listed = await scim.get("/Users?filter=" + q('userName eq "Old.Name"'))
    assert listed["totalResults"] == 0
    resp, again = await scim.post("/Users", user_body("Old.Name"))
    assert resp.status == 201 and again["id"] != user["id"]
    resp, _ = await scim.post("/Users", user_body("NEW.name"))
    assert resp.status == 409


async def test_a_record_deleted_in_the_app_is_released(scim: Scim, demo_db: sqlite3.Connection) -> None:
    _, user = await scim.post("/Users", user_body("vanished"))
    demo_db.execute("DELETE FROM employees WHERE login = 'vanished'")
    demo_db.commit()
    resp, _ = await scim.get(f"/Users/{user['id']}")
    assert resp.status == 404
    # Gone for lists too, and the name is free: Entra's "filter, then create" works again.
    _, listed = await scim.get("/Users?filter=" + q('userName eq "vanished"'))
    assert listed["totalResults"] == 0
    resp, again = await scim.post("/Users", user_body("vanished"))
    assert resp.status == 201 and again["id"] != user["id"]


async def test_a_patch_on_a_record_deleted_in_the_app_is_404_and_releases_it(scim: Scim, demo_db: sqlite3.Connection) -> None:
    _, user = await scim.post("/Users", user_body("gone.patch"))
    demo_db.execute("DELETE FROM employees WHERE login = 'gone.patch'")
    demo_db.commit()
    resp, _ = await scim.patch(f"/Users/{user['id']}", [{"op": "replace", "path": "title", "value": "x"}])
    assert resp.status == 404
    resp, _ = await scim.post("/Users", user_body("gone.patch"))
    assert resp.status == 201


async def test_a_patch_that_changes_nothing_keeps_the_version(scim: Scim) -> None:
    _, user = await scim.post("/Users", user_body("same", title="Engineer"))
    resp, body = await scim.patch(f"/Users/{user['id']}", [{"op": "Replace", "path": "title", "value": "Engineer"}])
    assert resp.status == 200 and body["meta"]["version"] == 'W/"1"'
    assert body["meta"]["lastModified"] == user["meta"]["lastModified"]
    resp, body = await scim.patch(f"/Users/{user['id']}", [{"op": "Replace", "path": "title", "value": "Lead"}])
    assert body["meta"]["version"] == 'W/"2"'
