"""The backlog the operator sees (/metrics, `status`): pending journal entries per app, on both stores."""

from __future__ import annotations

from gateway.store import Store
from gateway.store.backlog import journal_pending
from tests.store.test_store import NOW, make, new_store, store

__all__ = ["new_store", "store"]  # the fixtures, for this module's tests


async def test_pending_journal_entries_are_counted_per_app(store: Store) -> None:
    await make(store, "settled", "settled", "n1")  # journaled and settled: not pending
    await store.begin_create("app", "User", "u1", "one", {"userName": "one"}, NOW)
    await store.begin_create("app", "User", "u2", "two", {"userName": "two"}, NOW)
    await store.begin_create("other", "User", "u3", "three", {"userName": "three"}, NOW)
    seq = await store.begin_create("app", "User", "u4", "four", {"userName": "four"}, NOW)
    await store.abort(seq, "the app refused it")  # aborted: not pending either
    counts = await journal_pending(store, ["app", "other", "quiet"])
    assert counts == {"app": 2, "other": 1, "quiet": 0}
    assert await journal_pending(store, []) == {}
