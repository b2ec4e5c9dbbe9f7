"""The access review and a person's footprint, from the store alone, on both back ends."""

from __future__ import annotations

import csv
import io

from gateway.provisioning.review import REVIEW_COLUMNS, access_review, footprint, write_review_csv
from gateway.store import Member, Store
from tests.store.test_reports import new_store, store

__all__ = ["new_store", "store"]
NOW = "2026-01-01T00:00:00.000000Z"


async def user(store: Store, app: str, rid: str, name: str, native: str | None, **data: object) -> None:
    seq = await store.begin_create(app, "User", rid, name.lower(), {"userName": name, **data}, NOW)
    await store.settle_create(seq, native, {"userName": name, **data}, [])


async def group(store: Store, app: str, rid: str, name: str, native: str, members: list[str]) -> None:
    seq = await store.begin_create(app, "Group", rid, name.lower(), {"displayName": name}, NOW)
    await store.settle_create(seq, native, {"displayName": name}, [Member(m, "User") for m in members])


async def seed(store: Store) -> None:
    await user(store, "demo", "d-ann", "Ann", "1", externalId="E-1", active=True)
    await user(store, "demo", "d-bob", "bob", "2", active=False)
    await user(store, "hr", "h-ann", "ANN", "71", externalId="E-1", active=True)
    await user(store, "hr", "h-cy", "cy@x", None, externalId="E-1b", active=False)  # no app record (deactivated by delete)
    await user(store, "crm", "c-annie", "annie", "c9", externalId="E-1")  # another name, the same externalId
    await group(store, "demo", "d-g1", "Ops", "10", ["d-ann", "d-bob"])
    await group(store, "demo", "d-g2", "Dev", "11", ["d-ann"])
    await group(store, "hr", "h-g1", "Staff", "20", ["h-ann"])
    await store.begin_write("hr", "User", "h-ann", "update")  # a write pending


async def test_review_correlates_people_across_apps_by_username_and_external_id(store: Store) -> None:
    await seed(store)
    people = await access_review(store)
    by_key = {p.key: p for p in people}
    assert sorted(by_key) == ["ann", "bob", "cy@x"]
    ann = by_key["ann"]
    assert sorted((a.app, a.scim_id) for a in ann.accounts) == [("crm", "c-annie"), ("demo", "d-ann"), ("hr", "h-ann")]
    assert sorted(ann.user_names) == ["ANN", "Ann", "annie"] and ann.external_ids == ["E-1"]
    demo_ann = next(a for a in ann.accounts if a.app == "demo")
    assert sorted(demo_ann.groups) == ["Dev", "Ops"] and demo_ann.native_id == "1" and demo_ann.active is True
    hr_ann = next(a for a in ann.accounts if a.app == "hr")
    assert hr_ann.pending == ["update"] and hr_ann.groups == ["Staff"]
    cy = by_key["cy@x"].accounts[0]
    assert (cy.native_id, cy.active) == (None, False)

    out = io.StringIO()
    assert write_review_csv(people, out) == 5
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert tuple(rows[0]) == REVIEW_COLUMNS
    demo_row = next(r for r in rows if r["app"] == "demo" and r["userName"] == "Ann")
    assert demo_row["person"] == "ann" and demo_row["externalId"] == "E-1" and demo_row["active"] == "true"
    assert sorted(demo_row["groups"].split("; ")) == ["Dev", "Ops"]
    assert next(r for r in rows if r["scimId"] == "h-ann")["pending"] == "update"
    assert next(r for r in rows if r["scimId"] == "h-cy")["nativeId"] == ""
    only_hr = await access_review(store, ["hr"])
    assert sorted(a.scim_id for p in only_hr for a in p.accounts) == ["h-ann", "h-cy"]


async def test_footprint_by_username_external_id_or_scim_id(store: Store) -> None:
    await seed(store)
    for who in ("ann", "  aNN ", "E-1", "h-ann", "c-annie"):
        found = await footprint(store, who)
        assert found.person is not None, who
        assert sorted(a.scim_id for a in found.person.accounts) == ["c-annie", "d-ann", "h-ann"], who
    hr = next(a for a in (await footprint(store, "ann")).person.accounts if a.app == "hr")  # type: ignore[union-attr]
    assert [(w.op, w.state) for w in hr.writes] == [("update", "pending"), ("create", "done")]
    assert hr.groups == ["Staff"] and hr.native_id == "71"
    assert (await footprint(store, "nobody")).person is None
    assert (await footprint(store, "")).person is None
    bob = (await footprint(store, "d-bob")).person
    assert bob is not None and [a.app for a in bob.accounts] == ["demo"] and bob.accounts[0].groups == ["Ops"]
