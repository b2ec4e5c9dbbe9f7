"""The write pipeline alone (no HTTP, no connector): claim -> call -> settle or abort, on a real SQLite store.

What it promises: nothing is called before the claim is journaled; a call that fails leaves the store as it
was (the entry aborted, the name free again, the reason recorded without the hidden values); a call cut
short (a crash, a cancelled task) leaves the entry pending for recovery; an entry is in flight exactly while
its call runs; writes to one resource wait for each other.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.connectors.errors import AppConflict
from gateway.mapping.model import BreakerConfig
from gateway.provisioning import pipeline as pipeline_module
from gateway.provisioning.breaker import Breaker
from gateway.provisioning.errors import AppFailed, NotFound, Taken, Unavailable
from gateway.provisioning.pipeline import WritePipeline, utc_now
from gateway.store import SqliteStore, Store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = SqliteStore(tmp_path / "gateway.db")
    await s.open()
    yield s
    await s.close()


def journal(tmp_path: Path) -> list[tuple[str, str, str | None]]:
    """(op, state, detail) of every journal entry, read as any reader of the file could."""
    with sqlite3.connect(tmp_path / "gateway.db") as db:
        return list(db.execute("SELECT op, state, detail FROM journal ORDER BY seq"))


async def created(store: Store, pipeline: WritePipeline, rid: str = "u1", name: str = "ann") -> int:
    seq = await pipeline.claim_create("User", rid, name, {"userName": name}, name=f"userName {name!r}")

    async def call() -> str:
        return "n-" + rid

    async def settle(native: str) -> None:
        await pipeline.settle_create(seq, native, {"userName": name})

    await pipeline.run(seq, "creating User", call, settle)
    return seq


async def test_a_write_is_journaled_before_the_call_and_settled_after(store: Store, tmp_path: Path) -> None:
    pipeline = WritePipeline("app", store, None)
    seen: list[object] = []
    seq = await pipeline.claim_create("User", "u1", "ann", {"userName": "ann"}, name="userName 'ann'")

    async def call() -> str:
        seen.append((journal(tmp_path), pipeline.in_flight(seq), await store.get("app", "User", "u1")))
        return "17"

    async def settle(native: str) -> str:
        row = await pipeline.settle_create(seq, native, {"userName": "ann"})
        return row.native_id or ""

    assert await pipeline.run(seq, "creating User", call, settle) == "17"
    # During the call: the entry pending, in flight, and the resource not visible yet.
    assert seen == [([("create", "pending", None)], True, None)]
    assert journal(tmp_path) == [("create", "done", None)]
    assert not pipeline.in_flight(seq)
    row = await store.get("app", "User", "u1")
    assert row is not None and row.native_id == "17"


async def test_a_refused_call_aborts_and_frees_the_name(store: Store, tmp_path: Path) -> None:
    pipeline = WritePipeline("app", store, None)
    seq = await pipeline.claim_create("User", "u1", "ann", {"userName": "ann"}, name="userName 'ann'")

    async def call() -> str:
        raise AppConflict("login ann taken; password Secret-1 rejected")

    async def settle(native: str) -> None:
        raise AssertionError("never settled")

    with pytest.raises(AppFailed) as failed:
        await pipeline.run(seq, "creating User", call, settle, hidden=["Secret-1"])
    assert isinstance(failed.value.cause, AppConflict) and failed.value.what == "creating User"
    assert "Secret-1" not in failed.value.detail
    assert journal(tmp_path) == [("create", "aborted", "app refused: login ann taken; password *** rejected")]
    assert not pipeline.in_flight(seq)
    await created(store, pipeline, "u2", "ann")  # the name is free again


async def test_an_unexpected_failure_aborts_and_propagates(store: Store, tmp_path: Path) -> None:
    pipeline = WritePipeline("app", store, None)
    await created(store, pipeline)
    seq, _ = await pipeline.claim("User", "u1", "update", new_unique_key="bob", name="userName 'bob'")

    async def call() -> None:
        raise RuntimeError("a bug")

    async def settle(_: None) -> None:
        raise AssertionError("never settled")

    with pytest.raises(RuntimeError):
        await pipeline.run(seq, "updating User u1", call, settle)
    assert journal(tmp_path)[-1] == ("update", "aborted", "gateway error: RuntimeError")
    row = await store.get("app", "User", "u1")
    assert row is not None and row.unique_key == "ann"  # the rename's claim is released
    await pipeline.claim_create("User", "u3", "bob", {"userName": "bob"}, name="userName 'bob'")


async def test_a_call_cut_short_leaves_the_entry_pending_for_recovery(store: Store, tmp_path: Path) -> None:
    pipeline = WritePipeline("app", store, None)
    seq = await pipeline.claim_create("User", "u1", "ann", {"userName": "ann"}, name="userName 'ann'")
    started = asyncio.Event()

    async def call() -> str:
        started.set()
        await asyncio.sleep(60)
        return "never"

    async def settle(native: str) -> None:
        raise AssertionError("never settled")

    task = asyncio.create_task(pipeline.run(seq, "creating User", call, settle))
    await started.wait()
    task.cancel()  # as a process killed mid-call: the app may or may not have acted
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [(p.seq, p.op) for p in await store.pending("app")] == [(seq, "create")]
    assert not pipeline.in_flight(seq)  # the recovery sweep may take it now


async def test_the_breaker_refuses_a_write_before_calling_the_app(store: Store, tmp_path: Path) -> None:
    breaker = Breaker("app", BreakerConfig(failures=1, reset_after=60))
    breaker.failed(False, "down")  # one failure opens this breaker
    pipeline = WritePipeline("app", store, breaker)
    seq = await pipeline.claim_create("User", "u1", "ann", {"userName": "ann"}, name="userName 'ann'")
    calls: list[str] = []

    async def call() -> str:
        calls.append("called")
        return "1"

    async def settle(native: str) -> None:
        raise AssertionError("never settled")

    with pytest.raises(AppFailed):
        await pipeline.run(seq, "creating User", call, settle)
    assert calls == []
    op, state, detail = journal(tmp_path)[0]
    assert (op, state) == ("create", "aborted") and detail is not None and detail.startswith("not sent: ")


async def test_claims_name_what_stops_them(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline = WritePipeline("app", store, None)
    with pytest.raises(NotFound, match="User nobody not found"):
        await pipeline.claim("User", "nobody", "update")
    await created(store, pipeline)
    with pytest.raises(Taken, match="userName 'ANN' is already taken"):
        await pipeline.claim_create("User", "u2", "ann", {"userName": "ANN"}, name="userName 'ANN'")
    # Another write holds the resource: the claim waits, bounded, then asks the client to retry.
    seq, _ = await pipeline.claim("User", "u1", "update")
    monkeypatch.setattr(pipeline_module, "BUSY_RETRY_SECONDS", 0.2)
    with pytest.raises(Unavailable) as busy:
        await pipeline.claim("User", "u1", "update")
    assert busy.value.retry_after == 2 and "being changed by another request" in busy.value.detail
    await pipeline.abort(seq, "test")


async def test_a_waiting_claim_goes_through_once_the_other_write_settles(store: Store) -> None:
    pipeline = WritePipeline("app", store, None)
    await created(store, pipeline)
    seq, row = await pipeline.claim("User", "u1", "update")

    async def second() -> int:
        _seq, claimed = await pipeline.claim("User", "u1", "update")
        return claimed.version

    waiting = asyncio.create_task(second())
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await pipeline.settle_update(seq, {"userName": "ann", "title": "x"}, row.unique_key)
    assert await asyncio.wait_for(waiting, 5) == 2  # it claimed the version the first write settled


async def test_user_claims_serialize_edits_of_one_users_group_list(store: Store) -> None:
    pipeline = WritePipeline("app", store, None)
    await created(store, pipeline)  # native id n-u1
    order: list[str] = []

    async def edit(name: str) -> None:
        async with pipeline.user_claim("n-u1"):
            order.append(f"{name} in")
            await asyncio.sleep(0.05)
            order.append(f"{name} out")

    await asyncio.gather(edit("a"), edit("b"))
    assert order in (["a in", "a out", "b in", "b out"], ["b in", "b out", "a in", "a out"])
    row = await store.get("app", "User", "u1")
    assert row is not None and row.version == 3  # each edit settled a new version of the user
    async with pipeline.user_claim("unknown-native-id"):  # a user the gateway does not know: nothing to hold
        pass


def test_utc_now_is_the_stores_timestamp_form() -> None:
    stamp = utc_now()
    assert stamp.endswith("Z") and len(stamp) == len("2026-01-01T00:00:00.000000Z")
