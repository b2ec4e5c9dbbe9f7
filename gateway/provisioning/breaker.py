"""A circuit breaker per app: an app that keeps failing is not called again until a probe finds it back.

Closed (normal): every call goes to the app; `failures` consecutive failures
that mean the app is unavailable (it is down, timed out, answered 5xx, or
answered something unreadable) open the circuit. Open: calls fail fast with CircuitOpen, the app is not called, for
the cool-down. Half-open: the first call after the cool-down is let through as
the probe while every other still fails fast; its success closes the circuit,
its failure opens it again for twice the cool-down (capped). An answer that
says the app is up but refuses this one call (409, 404, 400) is a success here.

Two answers say the app is up but are no success either, and neither opens the circuit: a 429 the
connector's own retries did not get past (the app asks the gateway to slow down: no call goes to it until
its Retry-After has passed, each refused at once with that Retry-After), and a refusal of the gateway's
own credentials (401 / 403: an operator's problem, logged at error level once until a call succeeds).

With `serve --workers N` the workers of one gateway share each app's circuit and pause (shared_circuit.py):
one that finds the app down or throttled stops the others calling it too. Several hosts each keep their own.

`GuardedConnector` puts one breaker in front of every call the gateway makes
to one app's connector: reads, writes, searches, lists, the recovery sweep.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from ..connectors.base import Capabilities, Connector, NativeId, Record
from ..connectors.errors import (
    AppBadResponse,
    AppConflict,
    AppCredentialsRefused,
    AppError,
    AppInvalid,
    AppNotFound,
    AppThrottled,
    AppUnavailable,
)
from ..mapping.model import BreakerConfig
from ..metrics import APP_CALL_SECONDS, BREAKER_OPENED, BREAKER_STATE, BREAKER_STATES
from .shared_circuit import CircuitState, SharedCircuit, alive

log = logging.getLogger(__name__)

T = TypeVar("T")


class _Admitted:
    """A write admitted as a whole (Breaker.admission): its breaker, and whether it called the app at all."""

    def __init__(self, breaker: Breaker) -> None:
        self.breaker = breaker
        self.called = False
        self.failure: AppError | None = None  # how one of its calls failed, when the write turned it into its own error


# The admission of the write running in this task: its calls are never refused.
_ADMITTED: ContextVar[_Admitted | None] = ContextVar("breaker_admitted", default=None)


class CircuitOpen(AppUnavailable):
    """The breaker refused the call: the app was not called. `detail` names the app and why."""


def is_outage(exc: AppError) -> bool:
    """Whether a failure says the app is unavailable (counts toward opening), not that it refused one call, asked
    the gateway to slow down, or refused the gateway's credentials."""
    return isinstance(exc, AppUnavailable | AppBadResponse) and not isinstance(
        exc, CircuitOpen | AppThrottled | AppCredentialsRefused
    )


# An app call's outcome as the metrics label it: a few fixed words, whatever a connector's error subclass.
_OUTCOMES: tuple[tuple[type[AppError], str], ...] = (
    (AppUnavailable, "unavailable"),
    (AppBadResponse, "bad_response"),
    (AppConflict, "conflict"),
    (AppNotFound, "not_found"),
    (AppInvalid, "invalid"),
)


def outcome(exc: BaseException | None) -> str:
    """`ok`, the kind of app error, `cancelled`, or `error` (the gateway's own failure during the call)."""
    if exc is None:
        return "ok"
    for kind, name in _OUTCOMES:
        if isinstance(exc, kind):
            return name
    if isinstance(exc, AppError):
        return "app_error"
    return "cancelled" if isinstance(exc, asyncio.CancelledError) else "error"


class Breaker:
    """The circuit of one app: this process's, or shared by the workers of one gateway (`shared`). No awaits
    inside: each method is atomic on the event loop (and, shared, under the file's lock while it changes it)."""

    def __init__(
        self,
        app: str,
        config: BreakerConfig,
        clock: Callable[[], float] = time.monotonic,
        shared: SharedCircuit | None = None,
    ) -> None:
        self.app = app
        self.config = config
        self.clock = clock
        self.shared = shared  # its times are time.monotonic's: the clock every process of the host reads alike
        self._gauge = BREAKER_STATE.labels(app)
        self._opened = BREAKER_OPENED.labels(app)  # present (0) before the first opening
        self._state = "closed"  # closed | open | half_open: changed by _move only
        self._gauge.set(0)
        self._failures = 0  # consecutive failures that mean the app is unavailable
        self._last = ""  # what the latest of them was
        self.cooldown = config.reset_after  # how long the circuit stays open this time
        self.probe_at = 0.0  # clock time the open circuit lets a probe through
        self.probing = False  # a half-open probe is in flight
        self.probe_pid = 0  # in which process (shared: a probe whose process died is taken over)
        self.paused_until = 0.0  # clock time the app's 429 asked the gateway to wait until
        self.paused_for = ""  # that 429, as the connector said it
        self.credentials = ""  # the app's refusal of the gateway's credentials, until a call succeeds (per process)

    def _sync(self) -> None:
        shared = self.shared  # what other processes changed: one read of shared memory when nothing did
        if shared is not None and shared.generation[0] != shared.seen:
            fresh = shared.changed()
            if fresh is not None:
                self._apply(fresh)

    def _apply(self, fresh: CircuitState) -> None:
        if fresh.state != self._state:
            self._state = fresh.state
            self._gauge.set(BREAKER_STATES[fresh.state])  # this process's gauge follows; the opening was counted there
        self._failures, self._last, self.cooldown = fresh.failures, fresh.last, fresh.cooldown
        self.probe_at, self.probing, self.probe_pid = fresh.probe_at, fresh.probing, fresh.probe_pid
        self.paused_until, self.paused_for = fresh.paused_until, fresh.paused_for

    @contextmanager
    def _changing(self) -> Iterator[None]:
        """Around every change of the state: shared, it is made on the state as every process left it, and
        published for them."""
        if self.shared is None:
            yield
            return
        with self.shared.changing() as (current, out):
            if current is not None:
                self._apply(current)
            yield
            out.append(
                CircuitState(
                    self._state,
                    self.probing,
                    self.probe_pid,
                    self._failures,
                    self.cooldown,
                    self.probe_at,
                    self.paused_until,
                    self._last,
                    self.paused_for,
                )
            )

    @property
    def state(self) -> str:
        self._sync()
        return self._state

    @property
    def failures(self) -> int:
        self._sync()
        return self._failures

    @property
    def last(self) -> str:
        self._sync()
        return self._last

    def _move(self, state: str) -> None:
        """Every transition passes here (not a success while closed: no metric write on that path)."""
        self._state = state
        self._gauge.set(BREAKER_STATES[state])
        if state == "open":
            self._opened.inc()  # from closed, or a failed half-open probe

    def _probe_taken(self) -> bool:
        """A half-open probe is in flight: this process's, or a live other one's (one that died left it to take)."""
        return self.probing and (self.shared is None or self.probe_pid in (0, os.getpid()) or alive(self.probe_pid))

    def admit(self) -> bool:
        """Let a call go to the app: True when it is the half-open probe. Raises CircuitOpen when it may not go."""
        now = self.clock()
        self._sync()
        if now < self.paused_until:
            wait = max(1, math.ceil(self.paused_until - now))
            detail = f"app {self.app} asked the gateway to slow down ({self.paused_for}); calls resume in {wait} s"
            raise CircuitOpen(detail, retry_after=wait)
        if self._state == "closed":
            return False
        if (self._state == "open" and now < self.probe_at) or (self._state == "half_open" and self._probe_taken()):
            raise self.refusal(now)  # the usual answer while open: decided without the lock
        with self._changing():
            if self._state == "open" and now >= self.probe_at:
                self._move("half_open")
            if self._state == "half_open" and not self._probe_taken():
                self.probing, self.probe_pid = True, os.getpid()
                return True
        raise self.refusal(now)

    @asynccontextmanager
    async def admission(self) -> AsyncIterator[None]:
        """One write's app calls under one admission: refused before the first is sent, never between two.

        A write may take several calls (update, then disable); the circuit opening
        between them must not leave it half-applied in the app.
        """
        outer = _ADMITTED.get()
        if outer is not None and outer.breaker is self:
            try:
                yield
            except AppError as exc:
                outer.failure = exc  # the outer admission's verdict, should the write raise its own error for it
                raise
            return
        probe = self.admit()
        admitted = _Admitted(self)
        token = _ADMITTED.set(admitted)
        try:
            yield
        except BaseException as exc:
            failure = exc if isinstance(exc, AppError) else admitted.failure
            if probe and admitted.called and failure is not None:
                self.answered(True, failure)
            else:
                self.abandoned(probe)
            raise
        else:
            if probe and admitted.called:
                self.answered(True, None)
            else:
                self.abandoned(probe)  # the write needed no app call: it proved nothing either way
        finally:
            _ADMITTED.reset(token)

    def refusal(self, now: float | None = None) -> CircuitOpen:
        now = self.clock() if now is None else now
        cause = f"{self._failures} consecutive failure{'s' if self._failures != 1 else ''} (last: {self._last})"
        if self._state == "half_open":
            return CircuitOpen(
                f"app {self.app} is unavailable: circuit half-open after {cause}; a probe call is testing it", retry_after=1
            )
        wait = max(1, math.ceil(self.probe_at - now))
        return CircuitOpen(f"app {self.app} is unavailable: circuit open after {cause}; next probe in {wait} s", retry_after=wait)

    def retry_in(self) -> float | None:
        """Seconds until the app may be called again; None when a call would be let through now."""
        self._sync()
        now = self.clock()
        if now < self.paused_until:
            return self.paused_until - now
        if self._state == "closed" or (self._state == "open" and now >= self.probe_at):
            return None
        if self._state == "half_open" and not self._probe_taken():
            return None
        return max(0.0, self.probe_at - now)

    def answered(self, probe: bool, failure: AppError | None) -> None:
        """The verdict of one call to the app: it answered (`failure` None, or a refusal of that one call), asked
        the gateway to slow down, refused its credentials, or is unavailable."""
        if isinstance(failure, AppThrottled):
            wait = failure.retry_after or self.config.reset_after
            with self._changing():
                self.paused_until = max(self.paused_until, self.clock() + wait)
                self.paused_for = failure.detail
            log.warning("app %s asks the gateway to slow down (%s): no call for %g s", self.app, failure.detail, wait)
        elif isinstance(failure, AppCredentialsRefused):
            if self.credentials != failure.detail:
                log.error(
                    "app %s refused the gateway's credentials: fix the connector's auth in its mapping (%s)",
                    self.app,
                    failure.detail,
                )
            self.credentials = failure.detail
        elif failure is not None and is_outage(failure):
            self.failed(probe, failure.detail)
            return
        elif failure is None and self.credentials:
            log.info("app %s accepts the gateway's credentials again", self.app)
            self.credentials = ""
        self.succeeded(probe)

    def succeeded(self, probe: bool) -> None:
        """The app answered (a call that started while the circuit was open counts only as its probe)."""
        self._sync()
        if not probe and (self._state != "closed" or self._failures == 0):
            return  # the hot path (closed, nothing counted): nothing changes, nothing is published
        with self._changing():
            if not probe and self._state != "closed":
                return
            if probe:
                log.info("app %s: the probe call succeeded; circuit closed after %d failures", self.app, self._failures)
            if self._state != "closed":
                self._move("closed")
            self._failures = 0
            self.cooldown = self.config.reset_after
            self.probing, self.probe_pid = False, 0

    def failed(self, probe: bool, reason: str) -> None:
        """The app failed in a way that means it is unavailable."""
        with self._changing():
            if not probe and self._state != "closed":
                return  # a call admitted before the circuit opened: it was already counted as down
            self._failures += 1
            self._last = reason
            if probe:
                self.cooldown = min(self.cooldown * 2, self.config.max_reset_after)
            elif self._failures < self.config.failures:
                return
            self._move("open")
            self.probing, self.probe_pid = False, 0
            self.probe_at = self.clock() + self.cooldown
        log.warning(
            "app %s: circuit open after %d consecutive failures (last: %s); next probe in %g s",
            self.app,
            self._failures,
            reason,
            self.cooldown,
        )

    def abandoned(self, probe: bool) -> None:
        """The call ended without a verdict on the app (cancelled, a gateway error): the next call may probe."""
        if probe:
            with self._changing():
                self.probing, self.probe_pid = False, 0


class GuardedConnector(Connector):
    """A connector whose every app call passes one app's breaker first; everything else is the wrapped one's."""

    def __init__(self, inner: Connector, breaker: Breaker) -> None:
        super().__init__(inner.config, inner.context)
        self.inner = inner
        self.breaker = breaker
        self._timers: dict[tuple[str, str], Any] = {}  # (call, outcome) -> its histogram child

    def _timed(self, call: str, exc: BaseException | None, seconds: float) -> None:
        """Every app call's time, here once: what the app took (a call the open circuit refused is none)."""
        key = (call, "ok" if exc is None else outcome(exc))
        timer = self._timers.get(key)
        if timer is None:
            timer = self._timers[key] = APP_CALL_SECONDS.labels(self.breaker.app, *key)
        timer.observe(seconds)

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)  # a plugin's own extras, unguarded

    @property
    def caps(self) -> Capabilities:
        return self.inner.caps

    def _admit(self) -> bool:
        admitted = _ADMITTED.get()
        if admitted is not None and admitted.breaker is self.breaker:
            admitted.called = True
            return False  # part of a write already admitted: a probe's verdict is the write's (Breaker.admission)
        return self.breaker.admit()

    async def _guard(self, name: str, call: Callable[[], Awaitable[T]]) -> T:
        probe = self._admit()
        started = time.perf_counter()
        try:
            result = await call()
        except AppError as exc:
            self._timed(name, exc, time.perf_counter() - started)
            self.breaker.answered(probe, exc)
            raise
        except BaseException as exc:
            self._timed(name, exc, time.perf_counter() - started)
            self.breaker.abandoned(probe)
            raise
        self._timed(name, None, time.perf_counter() - started)
        self.breaker.answered(probe, None)
        return result

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def create(self, kind: str, record: Record) -> NativeId:
        return await self._guard("create", lambda: self.inner.create(kind, record))

    async def get(self, kind: str, native_id: NativeId) -> Record | None:
        return await self._guard("get", lambda: self.inner.get(kind, native_id))

    async def create_many(self, kind: str, records: list[Record]) -> list[NativeId | AppError]:
        return await self._guard("create_many", lambda: self.inner.create_many(kind, records))

    async def get_many(self, kind: str, native_ids: list[NativeId]) -> dict[NativeId, Record]:
        return await self._guard("get_many", lambda: self.inner.get_many(kind, native_ids))

    async def update(self, kind: str, native_id: NativeId, changes: Record) -> None:
        await self._guard("update", lambda: self.inner.update(kind, native_id, changes))

    async def delete(self, kind: str, native_id: NativeId) -> None:
        await self._guard("delete", lambda: self.inner.delete(kind, native_id))

    async def find(self, kind: str, field: str, value: Any, op: str = "eq") -> list[tuple[NativeId, Record]]:
        return await self._guard("find", lambda: self.inner.find(kind, field, value, op))

    async def list_all(self, kind: str) -> AsyncIterator[tuple[NativeId, Record]]:
        probe = self._admit()
        answered = False
        # The call's time is the time spent waiting for the app's items, not the consumer's between them.
        spent, started, in_app = 0.0, time.perf_counter(), True
        failure: BaseException | None = None
        try:
            async for item in self.inner.list_all(kind):
                spent, in_app = spent + time.perf_counter() - started, False
                answered = True
                yield item
                started, in_app = time.perf_counter(), True
        except AppError as exc:
            failure = exc
            self.breaker.answered(probe, exc)
            raise
        except BaseException as exc:  # the consumer stopped early (GeneratorExit), or cancellation
            if in_app:
                failure = exc  # cancelled while the app was answering; a consumer stopping reads on is no failure
            if answered:
                self.breaker.answered(probe, None)
            else:
                self.breaker.abandoned(probe)
            raise
        finally:
            self._timed("list", failure, spent + (time.perf_counter() - started if in_app else 0.0))
        self.breaker.answered(probe, None)

    async def add_members(self, kind: str, group_id: NativeId, members: list[tuple[str, NativeId]]) -> None:
        await self._guard("add_members", lambda: self.inner.add_members(kind, group_id, members))

    async def remove_members(self, kind: str, group_id: NativeId, members: list[tuple[str, NativeId]]) -> None:
        await self._guard("remove_members", lambda: self.inner.remove_members(kind, group_id, members))

    async def list_members(self, kind: str, group_id: NativeId) -> list[tuple[str, NativeId]]:
        return await self._guard("list_members", lambda: self.inner.list_members(kind, group_id))

    async def finish_write(self, kind: str, native_id: NativeId, before: Record) -> None:
        await self._guard("finish_write", lambda: self.inner.finish_write(kind, native_id, before))

    async def action(self, kind: str, native_id: NativeId, name: str) -> None:
        await self._guard("action", lambda: self.inner.action(kind, native_id, name))

    async def create_with_members(self, kind: str, record: Record, members: list[tuple[str, NativeId]]) -> NativeId:
        return await self._guard("create_with_members", lambda: self.inner.create_with_members(kind, record, members))

    async def write(
        self,
        kind: str,
        native_id: NativeId,
        changes: Record,
        add_members: list[tuple[str, NativeId]],
        remove_members: list[tuple[str, NativeId]],
    ) -> None:
        await self._guard("write", lambda: self.inner.write(kind, native_id, changes, add_members, remove_members))

    async def check_schema(self) -> list[tuple[tuple[str | int, ...], str]]:
        return await self.inner.check_schema()

    def finds_by(self, kind: str, field: str) -> bool:
        return self.inner.finds_by(kind, field)

    def fields(self, kind: str) -> set[str] | None:
        return self.inner.fields(kind)

    def plan(self, op: str, kind: str, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return self.inner.plan(op, kind, *args, **kwargs)


def guard(connector: Connector, breaker: Breaker | None) -> Connector:
    """The connector behind `breaker` (itself when there is none)."""
    return connector if breaker is None else GuardedConnector(connector, breaker)


__all__ = ["Breaker", "CircuitOpen", "GuardedConnector", "guard", "is_outage"]
