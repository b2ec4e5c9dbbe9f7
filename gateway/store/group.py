"""Group commit: the store transactions of concurrent requests, committed together (the SQLite store).

A request's store transaction (a claim, a settle) is queued; one committer task takes every transaction queued
while the previous commit ran and runs them in one database transaction, each inside its own savepoint, then
commits once. So N writes in flight cost one commit (one trip to SQLite's writer thread, one WAL append), not N.

The journal rule holds for each member: a waiter resumes with its result only once the commit that holds its
work is durable, so no app call follows a claim that is not, and no answer a settle that is not. A member that
fails (a name taken, an entry already settled) is rolled back to its savepoint and fails alone; the others
commit. A failure of the transaction itself (the database lost it, the commit failed) fails every member that
has not failed on its own, none of whose work is then committed. A waiter cancelled before its turn is left
out; one cancelled later has its work committed or not, as a request cancelled during its own commit did.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from .base import StoreUnavailable

T = TypeVar("T")
C = TypeVar("C")


class Member(Generic[C]):
    """One queued transaction: its work, and the future its waiter resumes on."""

    __slots__ = ("future", "work")

    def __init__(self, work: Callable[[C], Awaitable[Any]], future: asyncio.Future[Any]) -> None:
        self.work = work
        self.future = future

    @property
    def waiting(self) -> bool:
        """Its waiter still waits (not cancelled, not answered yet)."""
        return not self.future.done()

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


# Runs one group in one database transaction; answers the members that succeeded, with their results, for the
# committer to deliver once the commit returned. It fails the members that fail on their own; when the group's
# transaction fails as a whole it raises (and commits nothing).
GroupRunner = Callable[[list[Member[C]]], Awaitable[list[tuple[Member[C], Any]]]]


class GroupCommit(Generic[C]):
    """The queue of transactions waiting for the next group, and the committer that runs one group at a time."""

    def __init__(self, run: GroupRunner[C], *, limit: int = 64) -> None:
        self._run = run
        self.limit = limit  # members in one group at most: a group's locks and work stay short
        self._queue: list[Member[C]] = []
        self._committer: asyncio.Task[None] | None = None
        self._direct = False  # a transaction that found nothing queued runs in its caller's task
        self.groups = 0  # committed groups, and the members in them (for tests and diagnostics)
        self.members = 0

    async def transaction(self, work: Callable[[C], Awaitable[T]]) -> T:
        """`work` in the next group's transaction; its result once that is committed."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        member = Member(work, future)
        if self._committer is None and not self._direct:
            # Nothing in flight: a group of one, run by its caller (no task to start, no hop back); those that
            # come meanwhile queue for the next group, which the committer runs once this one is done.
            self._direct = True
            try:
                await self._commit([member])
            finally:
                self._direct = False
                if self._queue:
                    self._committer = asyncio.create_task(self._commit_all(), name="store-group-commit")
            return future.result()
        self._queue.append(member)
        if self._committer is None and not self._direct:
            self._committer = asyncio.create_task(self._commit_all(), name="store-group-commit")
        return await future

    async def _commit_all(self) -> None:
        try:
            while self._queue:
                group = [m for m in self._queue[: self.limit] if m.waiting]
                del self._queue[: self.limit]
                if group:
                    await self._commit(group)
        finally:
            self._committer = None
            for member in self._queue:  # only when the committer itself was cancelled (the loop is closing)
                member.fail(StoreUnavailable("the correlation store is closing"))
            self._queue.clear()

    async def _commit(self, group: list[Member[C]]) -> None:
        try:
            done = await self._run(group)
        except BaseException as exc:
            failure = exc if isinstance(exc, Exception) else StoreUnavailable("the correlation store is closing")
            for member in group:
                member.fail(failure)
            if not isinstance(exc, Exception):
                raise
            return
        self.groups += 1
        self.members += len(done)
        for member, result in done:
            if member.waiting:
                member.future.set_result(result)

    async def drain(self) -> None:
        """Wait until every queued transaction is committed (or failed): before the connection closes."""
        while self._committer is not None or self._direct:
            if self._committer is not None:
                await asyncio.shield(self._committer)
            else:
                await asyncio.sleep(0.001)


__all__ = ["GroupCommit", "GroupRunner", "Member"]
