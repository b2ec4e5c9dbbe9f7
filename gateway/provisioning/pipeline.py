"""The write pipeline: claim -> the app's call -> settle, or abort. The one owner of a write's consistency.

A write is journaled and its resource claimed in the store before the app is called, and settled (or
aborted) after the app answers; nothing else in the provisioner changes a journal entry's state, except
recovery, which settles what a crash left pending through the same calls. While this process runs a write's
call, its entry is "in flight" and the recovery sweep leaves it alone.

- A failure before the app answered (refused, down, the breaker open, a bug) aborts the claim: the store is
  as it was, the resource's old name is free again.
- A failure after part of the write took effect in the app, which could not be undone (PartlyDone), leaves
  the entry pending: recovery settles the copy by reading the app, so the copy never disagrees with it.
- A crash between claim and settle leaves the entry pending for recovery.
- Each write is admitted by the app's breaker once, so the circuit never cuts it between two app calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from ..connectors.base import PartlyDone
from ..connectors.errors import AppError
from ..store import Busy, Gone, Member, NativeConflict, Row, Store, UniqueConflict
from ..store.bulk import NewCreate
from .breaker import Breaker, CircuitOpen
from .errors import AppFailed, NotFound, Taken, Unavailable

T = TypeVar("T")
R = TypeVar("R")

LEFT_FOR_RECOVERY = "recovery settles it from the app"  # what the error of a write left pending says
BUSY_RETRY_SECONDS = 10.0  # how long a write waits for another one (maybe in another process) to release a resource


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


log = logging.getLogger(__name__)


def hide(exc: AppError, values: Iterable[str]) -> AppError:
    """An app that echoes what it refused (a password it found too weak) must not get it into the journal or the answer."""
    for value in values:
        exc.detail = exc.detail.replace(value, "***")
        if exc.answer is not None:
            exc.answer = exc.answer.replace(value, "***")
    return exc


class WritePipeline:
    def __init__(self, app: str, store: Store, breaker: Breaker | None) -> None:
        self.app = app
        self.store = store
        self.breaker = breaker
        self._inflight: set[int] = set()  # journal entries this process is working on right now
        # Resources whose claim this process is making: the entry is committed (and, its time being the transaction's
        # start, may already look old to a sweep) before the claim returns its number for `tracking`.
        self._claiming: dict[str, int] = {}

    def in_flight(self, seq: int, rid: str | None = None) -> bool:
        return seq in self._inflight or (rid is not None and rid in self._claiming)

    @contextlib.contextmanager
    def _claiming_of(self, rid: str) -> Iterator[None]:
        self._claiming[rid] = self._claiming.get(rid, 0) + 1
        try:
            yield
        finally:
            left = self._claiming.pop(rid) - 1
            if left:
                self._claiming[rid] = left

    @contextlib.contextmanager
    def tracking(self, seqs: Iterable[int]) -> Iterator[None]:
        """The entries count as in flight meanwhile: the recovery sweep does not take them."""
        seqs = list(seqs)
        self._inflight.update(seqs)
        try:
            yield
        finally:
            self._inflight.difference_update(seqs)

    def admission(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """The breaker's one admission for a write's calls: refused (CircuitOpen) before the first, never between two."""
        return self.breaker.admission() if self.breaker is not None else contextlib.nullcontext()

    @asynccontextmanager
    async def admitted(self, what: str) -> AsyncIterator[None]:
        """The admission taken before a write's claim, held to its settle: a write the breaker refuses is
        refused before it is journaled (no aborted entry, nothing claimed), as AppFailed."""
        try:
            async with self.admission():
                yield
        except CircuitOpen as exc:  # only the admission itself: every call inside is admitted
            raise AppFailed(what, exc) from None

    # ------------------------------------------------------------------ claims

    async def claim_create(
        self,
        kind: str,
        rid: str,
        unique_key: str,
        data: dict[str, Any],
        *,
        name: str,
        members: Sequence[Member] = (),
        secret: bool = False,
        keyed: bool = False,
    ) -> int:
        """Journal a create and hold its unique name; Taken when another resource holds it (`name` says which).

        The journal keeps what the create meant (the copy, the members), for recovery to finish it; `secret`: it
        carries a write-only value (a password) the journal does not keep, so recovery cannot send it again;
        `keyed`: it goes to the app with its idempotency key (WRITE_KEY), so recovery may send it again."""
        payload = {
            "data": data,
            "members": [{"id": m.id, "type": m.type} for m in members],
            "secret": secret,
            "keyed": keyed,
        }
        try:
            with self._claiming_of(rid):
                seq = await self.store.begin_create(self.app, kind, rid, unique_key, data, utc_now(), payload)
                self._inflight.add(seq)  # until its settle or abort (below, or run's)
                return seq
        except UniqueConflict:
            raise Taken(f"{name} is already taken") from None

    async def claim_create_many(
        self, kind: str, creates: Sequence[tuple[str, str, dict[str, Any], bool, str]], *, keyed: bool = False
    ) -> list[int | Taken]:
        """Claim many creates (id, unique key, copy, secret, name) in one store transaction, as `claim_create` each
        (no members; `keyed` as there): for each its journal number, or Taken."""
        payloads = [
            NewCreate(rid, key, data, {"data": data, "members": [], "secret": secret, "keyed": keyed})
            for rid, key, data, secret, _ in creates
        ]
        with contextlib.ExitStack() as claiming:
            for rid, *_ in creates:
                claiming.enter_context(self._claiming_of(rid))
            outcomes = await self.store.begin_create_many(self.app, kind, payloads, utc_now())
            out: list[int | Taken] = []
            for outcome, (*_, name) in zip(outcomes, creates, strict=True):
                if isinstance(outcome, UniqueConflict):
                    out.append(Taken(f"{name} is already taken"))
                else:
                    self._inflight.add(outcome)  # until its settle or abort
                    out.append(outcome)
            return out

    async def claim(self, kind: str, rid: str, op: str, *, name: str | None = None, **kwargs: Any) -> tuple[int, Row]:
        """Journal an update or delete and claim the resource, waiting (bounded) while another write holds it.

        NotFound when it is gone; Taken (naming `name`) when its new unique name is held; the store's
        VersionMismatch when it is not at `if_match`, for the caller to retry or refuse.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BUSY_RETRY_SECONDS
        delay = 0.01
        while True:
            try:
                with self._claiming_of(rid):
                    seq, row = await self.store.begin_write(self.app, kind, rid, op, **kwargs)
                    self._inflight.add(seq)  # until its settle or abort (below, or run's)
                    return seq, row
            except Gone:
                raise NotFound(f"{kind} {rid} not found") from None
            except UniqueConflict:
                raise Taken(f"{name or 'its name'} is already taken") from None
            except Busy:
                if loop.time() > deadline:
                    raise Unavailable(f"{kind} {rid} is being changed by another request; retry", 2) from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.25)

    # ------------------------------------------------------------------ the app's call

    async def run(
        self,
        seq: int,
        what: str,
        call: Callable[[], Awaitable[T]],
        settle: Callable[[T], Awaitable[R]],
        hidden: Sequence[str] = (),
    ) -> R:
        """The app's call for a claimed write, then its settle. A failure of the call aborts the claim, unless the
        call says part of it took effect (PartlyDone): the entry is then left pending, for recovery.

        `hidden`: values (a password) to mask in what the app answered, before it is journaled or shown.
        """
        with self.tracking([seq]):
            try:
                async with self.admission():
                    result = await call()
            except PartlyDone as partly:
                exc = hide(partly.cause, hidden)
                log.warning("app %s: %s: failed after part of it took effect (%s): left for recovery", self.app, what, exc.detail)
                self._inflight.discard(seq)  # the recovery sweep takes it once this call is done
                exc.detail = f"{exc.detail} (part of the change took effect in the app; {LEFT_FOR_RECOVERY})"
                raise AppFailed(what, exc) from None
            except AppError as exc:  # refused, down, or the breaker open (CircuitOpen: the app was not called)
                hide(exc, hidden)
                if exc.answer:
                    log.warning("app %s: %s: the app answered: %s", self.app, what, exc.answer)
                try:
                    await self.store.abort(seq, f"{'not sent' if isinstance(exc, CircuitOpen) else 'app refused'}: {exc.detail}")
                except UniqueConflict:  # the name a rename gave up is held now by another write in flight
                    log.warning("app %s: %s: failed, and its claim cannot be undone yet: left for recovery", self.app, what)
                    self._inflight.discard(seq)
                    exc.detail = (
                        f"{exc.detail} (its claim cannot be undone yet; {LEFT_FOR_RECOVERY}, where it may still take effect)"
                    )
                raise AppFailed(what, exc) from None
            except Exception as exc:
                await self.store.abort(seq, f"gateway error: {type(exc).__name__}")
                raise
            return await settle(result)

    # ------------------------------------------------------------------ settling (also recovery's)

    async def settle_create(self, seq: int, native_id: str | None, data: dict[str, Any], members: Sequence[Member] = ()) -> Row:
        try:
            return await self.store.settle_create(seq, native_id, data, members)
        finally:
            self._inflight.discard(seq)

    async def settle_create_many(self, settles: Sequence[tuple[int, str, dict[str, Any]]]) -> list[Row | NativeConflict]:
        """Settle many creates (journal number, native id, copy) in one store transaction."""
        try:
            return await self.store.settle_create_many(settles)
        finally:
            self._inflight.difference_update(seq for seq, _, _ in settles)

    async def settle_update(self, seq: int, data: dict[str, Any], unique_key: str, **changes: Any) -> Row:
        try:
            return await self.store.settle_update(seq, data, utc_now(), unique_key, **changes)
        finally:
            self._inflight.discard(seq)

    async def settle_delete(self, seq: int) -> None:
        try:
            await self.store.settle_delete(seq)
        finally:
            self._inflight.discard(seq)

    async def abort(self, seq: int, reason: str) -> None:
        try:
            await self.store.abort(seq, reason)
        finally:
            self._inflight.discard(seq)

    async def forget(self, kind: str, rid: str, payload: dict[str, Any] | None = None) -> bool:
        """The app deleted the record itself: the resource goes (its id and name released). False when a write holds it.
        `payload`: what the journal entry says of why (a reconcile fix)."""
        try:
            seq, _ = await self.store.begin_write(self.app, kind, rid, "delete", payload=payload)
        except (Busy, Gone):
            return False  # another request is settling it
        await self.store.settle_delete(seq)
        return True

    @asynccontextmanager
    async def user_claim(self, native_id: str) -> AsyncIterator[None]:
        """Hold a user while its own group list (membership via: user_field) is edited: one edit at a time, in
        every process. Its groups change, so settling makes a new version of the user."""
        user = await self.store.by_native(self.app, "User", native_id)
        if user is None:  # a user the gateway does not know: nothing to serialize against
            yield
            return
        seq, claimed = await self.claim("User", user.id, "update", payload={"membership": True})
        try:
            yield
        except BaseException:
            await self.abort(seq, "membership edit failed")
            raise
        await self.settle_update(seq, claimed.data, claimed.unique_key)


__all__ = ["BUSY_RETRY_SECONDS", "LEFT_FOR_RECOVERY", "WritePipeline", "hide", "utc_now"]
