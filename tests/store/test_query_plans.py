"""The SQLite store answers the IdP's frequent questions from indexes, whatever the directory's size.

Checked on SQLite's own query plans (EXPLAIN QUERY PLAN) of the statements the
store really sends: the page of a list walks the listing index in creation order
(no sort of every row), and `userName eq` is a lookup of the unique key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.schema import user_resource_type
from gateway.scim.filter import parse_filter
from gateway.scim.search import store_condition
from gateway.store import Query
from gateway.store.sqlite import SqliteStore


async def plans_of(store: SqliteStore, query: Query) -> list[str]:
    """The query plan of every statement `store.query` sends for `query`."""
    sent: list[tuple[str, Any]] = []
    db = store.db
    execute = db.execute

    async def recording(sql: str, parameters: Any = None) -> Any:
        sent.append((sql, parameters))
        return await execute(sql, parameters)

    db.execute = recording
    try:
        await store.query("demo", "User", query)
    finally:
        db.execute = execute
    plans = []
    for sql, parameters in sent:
        rows = await (await execute(f"EXPLAIN QUERY PLAN {sql}", parameters)).fetchall()
        plans.append(" | ".join(str(r["detail"]) for r in rows))
    return plans


async def test_a_page_walks_the_listing_index_and_sorts_nothing(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "gateway.db")
    await store.open()
    try:
        plans = await plans_of(store, Query(start_index=501, count=100))
        assert len(plans) == 2  # the count, then the page
        for plan in plans:
            assert "resources_listing" in plan, plan
            assert "TEMP B-TREE" not in plan, plan
    finally:
        await store.close()


async def test_user_name_eq_is_a_lookup_of_the_unique_key(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "gateway.db")
    await store.open()
    try:
        rtype = user_resource_type()
        plans = await plans_of(store, Query(where=store_condition(parse_filter('userName eq "Alice"', rtype), rtype)))
        for plan in plans:
            assert "SEARCH" in plan and "unique_key=?" in plan.replace(" ", ""), plan
    finally:
        await store.close()
