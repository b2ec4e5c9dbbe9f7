"""The access review: who has an account where, with which groups, from the correlation store alone (no app call).

Used by `scim-gateway review` and the admin page. Public functions and data shapes:

- `await accounts(store, apps=None) -> list[Account]`: every user account of every app in the store (or of
  `apps`), in app then creation order.
- `people(accounts) -> list[Person]`: the accounts grouped into people. With per-app endpoints one person has
  one SCIM resource per app; accounts are the same person when their userNames are equal case-insensitively
  or they carry the same externalId (transitively).
- `await access_review(store, apps=None) -> list[Person]`: `people(await accounts(store, apps))`.
- `review_rows(people) -> list[dict[str, str]]`, `write_review_csv(people, file)`: one row per account, the
  columns `REVIEW_COLUMNS` (what the CSV export has, in order; groups joined by "; ").
- `await footprint(store, who) -> Footprint`: one person's accounts across every app; `who` is a userName
  (any case), an externalId or a SCIM id of any of their accounts. Each account carries its newest journal
  entries (`writes`: what changed last, what is pending, what the app refused).

`Account`: app, scim_id, native_id (None: no app record now, e.g. deactivated by deleting it), user_name,
external_id, active (None: not known), groups (display names), group_ids, created, last_modified (ISO 8601),
pending (the ops of unsettled journal entries), writes (footprint only: `JournalEntry`s, newest first).
`Person`: key (the userName most of their accounts have, lower-cased), user_names, external_ids, accounts.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from typing import IO

from ..store import Row, Store
from ..store import query as q
from ..store.reports import JournalEntry

PAGE = 1000
REVIEW_COLUMNS = (
    "person",
    "externalId",
    "app",
    "userName",
    "scimId",
    "nativeId",
    "active",
    "groups",
    "created",
    "lastModified",
    "pending",
)


@dataclass(slots=True)
class Account:
    app: str
    scim_id: str
    native_id: str | None
    user_name: str
    external_id: str | None
    active: bool | None
    groups: list[str]
    group_ids: list[str]
    created: str
    last_modified: str
    pending: list[str] = field(default_factory=list)
    writes: list[JournalEntry] = field(default_factory=list)


@dataclass(slots=True)
class Person:
    key: str
    user_names: list[str]
    external_ids: list[str]
    accounts: list[Account]


@dataclass(slots=True)
class Footprint:
    """`who` as asked; `person` None when no account matches it."""

    who: str
    person: Person | None


def _account(app: str, row: Row, groups: list[tuple[str, str]], pending: list[str]) -> Account:
    data = row.data
    name = data.get("userName")
    external = data.get("externalId")
    active = data.get("active")
    return Account(
        app=app,
        scim_id=row.id,
        native_id=row.native_id,
        user_name=name if isinstance(name, str) else row.unique_key,
        external_id=external if isinstance(external, str) and external else None,
        active=active if isinstance(active, bool) else None,
        groups=[display for _gid, display in groups],
        group_ids=[gid for gid, _display in groups],
        created=row.created,
        last_modified=row.last_modified,
        pending=pending,
    )


async def _accounts_of(store: Store, app: str, where: q.Condition | None = None) -> list[Account]:
    pending: dict[str, list[str]] = {}
    for entry in await store.pending(app):
        pending.setdefault(entry.resource_id, []).append(entry.op)
    out: list[Account] = []
    start = 1
    while True:
        _total, rows = await store.query(app, "User", q.Query(where=where, start_index=start, count=PAGE))
        if not rows:
            return out
        groups = await store.groups_of_many(app, [r.id for r in rows])
        for row in rows:
            listed = [(g.id, g.display or g.id) for g in groups.get(row.id, [])]
            out.append(_account(app, row, listed, pending.get(row.id, [])))
        if len(rows) < PAGE:
            return out
        start += PAGE


async def accounts(store: Store, apps: list[str] | None = None) -> list[Account]:
    """Every user account of the apps (default: every app in the store)."""
    out: list[Account] = []
    for app in apps if apps is not None else await store.apps():
        out.extend(await _accounts_of(store, app))
    return out


def people(found: list[Account]) -> list[Person]:
    """Accounts grouped into people: the same userName (case-insensitively) or the same externalId, transitively."""
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    def join(a: str, b: str) -> None:
        parent[root(a)] = root(b)

    for account in found:
        name = "u:" + account.user_name.lower()
        root(name)
        if account.external_id is not None:
            join("x:" + account.external_id, name)
    grouped: dict[str, Person] = {}
    for account in found:
        top = root("u:" + account.user_name.lower())
        person = grouped.get(top)
        if person is None:
            person = grouped[top] = Person(account.user_name.lower(), [], [], [])
        if account.user_name not in person.user_names:
            person.user_names.append(account.user_name)
        if account.external_id is not None and account.external_id not in person.external_ids:
            person.external_ids.append(account.external_id)
        person.accounts.append(account)
    for person in grouped.values():
        # Named by the userName most of their accounts have (ties: the first in order), whatever the apps' order.
        names = [a.user_name.lower() for a in person.accounts]
        person.key = min(set(names), key=lambda n: (-names.count(n), n))
    return sorted(grouped.values(), key=lambda p: p.key)


async def access_review(store: Store, apps: list[str] | None = None) -> list[Person]:
    return people(await accounts(store, apps))


def review_rows(found: list[Person]) -> list[dict[str, str]]:
    """The CSV export's rows: one per account, REVIEW_COLUMNS as keys."""
    rows: list[dict[str, str]] = []
    for person in found:
        for a in person.accounts:
            rows.append(
                {
                    "person": person.key,
                    "externalId": a.external_id or "",
                    "app": a.app,
                    "userName": a.user_name,
                    "scimId": a.scim_id,
                    "nativeId": a.native_id or "",
                    "active": "" if a.active is None else str(a.active).lower(),
                    "groups": "; ".join(a.groups),
                    "created": a.created,
                    "lastModified": a.last_modified,
                    "pending": "; ".join(a.pending),
                }
            )
    return rows


def write_review_csv(found: list[Person], out: IO[str]) -> int:
    """Write the export as CSV (a header, then a row per account); how many rows."""
    rows = review_rows(found)
    writer = csv.DictWriter(out, fieldnames=list(REVIEW_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return len(rows)


def _matching(names: set[str], external_ids: set[str], ids: set[str]) -> q.Condition:
    terms: list[q.Condition] = [q.Compare(q.Column("unique_key"), "eq", n) for n in sorted(names)]
    terms += [q.Compare(q.Field(("externalId",)), "eq", x) for x in sorted(external_ids)]
    terms += [q.Compare(q.Column("id"), "eq", i) for i in sorted(ids)]
    return q.AnyOf(tuple(terms))


async def footprint(store: Store, who: str, *, writes: int = 10) -> Footprint:
    """One person's accounts across every app, each with its newest `writes` journal entries."""
    who = who.strip()
    if not who:
        return Footprint(who, None)
    apps = await store.apps()
    names, external_ids, ids = {who.lower()}, {who}, {who}
    found: dict[tuple[str, str], Account] = {}
    # Widen until nothing new: a SCIM id or externalId finds a userName, which finds the person's other apps.
    for _round in range(4):
        before = len(found)
        for app in apps:
            for account in await _accounts_of(store, app, _matching(names, external_ids, ids)):
                found.setdefault((app, account.scim_id), account)
        names |= {a.user_name.lower() for a in found.values()}
        external_ids |= {a.external_id for a in found.values() if a.external_id is not None}
        ids = set()
        if len(found) == before:
            break
    if not found:
        return Footprint(who, None)
    for account in found.values():
        account.writes = await store.writes_of(account.app, account.scim_id, writes)
    grouped = people(list(found.values()))
    # The accounts correlate into one person by construction; several only when `who` names unrelated ones.
    person = grouped[0] if len(grouped) == 1 else Person(who.lower(), [], [], [])
    if len(grouped) > 1:
        for p in grouped:
            person.user_names += p.user_names
            person.external_ids += p.external_ids
            person.accounts += p.accounts
    return Footprint(who, person)


__all__ = [
    "REVIEW_COLUMNS",
    "Account",
    "Footprint",
    "Person",
    "access_review",
    "accounts",
    "footprint",
    "people",
    "review_rows",
    "write_review_csv",
]
