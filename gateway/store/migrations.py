"""The store's tables, as numbered migrations written once; each dialect fills in its column types.

A migration is never edited once released: a change is a new one at the end. A dialect's `types` give
`key` (an auto-numbered primary key), `text` (compared byte by byte), `json`, `int64`, `float`, `now`
(a default of the current epoch time, or nothing) and `member_seq` (a column numbering membership rows,
or nothing where the database numbers rows itself).
"""

from __future__ import annotations

from collections.abc import Mapping

_MIGRATIONS: list[str] = [
    # 1: resources, membership, journal
    """
    CREATE TABLE resources (
        seq {key},
        app {text} NOT NULL,
        type {text} NOT NULL,
        id {text} NOT NULL UNIQUE,
        native_id {text},
        unique_key {text} NOT NULL,
        version INTEGER NOT NULL DEFAULT 1,
        created {text} NOT NULL,
        last_modified {text} NOT NULL,
        data {json} NOT NULL,
        state {text} NOT NULL DEFAULT 'active',
        pending_seq {int64},
        UNIQUE (app, type, unique_key),
        UNIQUE (app, type, native_id)
    );
    CREATE TABLE members (
        {member_seq}
        app {text} NOT NULL,
        group_id {text} NOT NULL,
        member_id {text} NOT NULL,
        member_type {text} NOT NULL,
        display TEXT,
        PRIMARY KEY (app, group_id, member_id)
    );
    CREATE INDEX members_by_member ON members (app, member_id);
    CREATE TABLE journal (
        seq {key},
        at {float} NOT NULL{now},
        app {text} NOT NULL,
        type {text} NOT NULL,
        resource_id {text} NOT NULL,
        op {text} NOT NULL,
        state {text} NOT NULL,
        payload {json} NOT NULL DEFAULT '{{}}',
        detail TEXT
    );
    CREATE INDEX journal_pending ON journal (app, state);
    """,
    # 2: lists page through an app's resources of one type in creation order; the index answers the
    # WHERE, the ORDER BY and the count without reading every row or sorting them.
    """
    CREATE INDEX resources_listing ON resources (app, type, state, seq);
    """,
    # 3: reconcile reports and leases (issue 15, governance; store code in store/reports.py): each app's reconcile
    # runs, the last few kept per app for the admin page; a lease names the one process running a scheduled task;
    # a resource's journal entries by resource (its footprint's last writes).
    """
    CREATE TABLE reconcile_reports (
        seq {key},
        app {text} NOT NULL,
        ran_at {text} NOT NULL,
        saved {float} NOT NULL{now},
        found INTEGER NOT NULL,
        report {json} NOT NULL
    );
    CREATE INDEX reconcile_reports_by_app ON reconcile_reports (app, seq);
    CREATE TABLE leases (
        name {text} PRIMARY KEY,
        holder {text} NOT NULL,
        until {float} NOT NULL
    );
    CREATE INDEX journal_by_resource ON journal (app, resource_id, seq);
    """,
    # 4 (recovery, issue 16): a pending entry recovery could not decide is retried with backoff; the journal
    # keeps how often it was tried, when it is due again, and why it is undecided (gateway/store/journal.py).
    """
    ALTER TABLE journal ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE journal ADD COLUMN next_at {float};
    ALTER TABLE journal ADD COLUMN reason TEXT
    """,
    # 5 (hub, issue 14): the outbox (one row per app and hub resource: bring it to its current hub state there)
    # and the links between a hub resource and its SCIM id in each app (gateway/store/outbox.py).
    """
    CREATE TABLE hub_outbox (
        app {text} NOT NULL,
        type {text} NOT NULL,
        resource_id {text} NOT NULL,
        name {text},
        generation INTEGER NOT NULL DEFAULT 1,
        state {text} NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        due {float} NOT NULL,
        lease_until {float},
        changed {float} NOT NULL,
        last_error TEXT,
        last_at {float},
        delivered_at {float},
        PRIMARY KEY (app, type, resource_id)
    );
    CREATE INDEX hub_outbox_due ON hub_outbox (app, state, due);
    CREATE TABLE hub_links (
        app {text} NOT NULL,
        type {text} NOT NULL,
        hub_id {text} NOT NULL,
        app_id {text} NOT NULL,
        PRIMARY KEY (app, type, hub_id),
        UNIQUE (app, app_id)
    );
    CREATE INDEX hub_links_by_hub_id ON hub_links (type, hub_id);
    """,
    # 6 (hub, issue 16): the unique name of the create a delivery sent and has not linked yet (a kill between the
    # app's answer and the link leaves it), so the next delivery finds that record by it (gateway/store/outbox.py).
    """
    ALTER TABLE hub_outbox ADD COLUMN creating {text}
    """,
]


def migrations(types: Mapping[str, str]) -> list[str]:
    """Every migration, in order, in one dialect's column types: each a script of `;`-separated statements."""
    return [script.format_map(types) for script in _MIGRATIONS]


def statements(script: str) -> list[str]:
    """A migration's statements, one by one (for drivers that run one statement per call)."""
    return [s.strip() for s in script.split(";") if s.strip()]


__all__ = ["migrations", "statements"]
