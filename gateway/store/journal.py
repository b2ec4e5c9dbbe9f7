"""The journal as recovery and operators see it: entries recovery could not decide yet, their retries, and notes.

A pending entry that recovery cannot settle (the app cannot tell whether the write happened, or fails) is
postponed: its `attempts` count goes up, `next_at` says when the sweep takes it again (backoff), `reason`
says why. Nothing here settles an entry: that stays the claim/settle state machine's (correlation.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .dialect import Dialect


@dataclass(slots=True)
class JournalEntry:
    """One journal entry with its recovery state, for `scim-gateway pending`, status pages and metrics."""

    seq: int
    app: str
    type: str
    resource_id: str
    op: str
    state: str  # pending, done, aborted
    age: float  # seconds since it was journaled, on the database's clock
    attempts: int  # how often recovery tried and could not decide
    next_in: float | None  # seconds until recovery takes it again (None: at once; negative: overdue)
    reason: str | None  # why recovery could not decide it, the last time it tried
    detail: str | None  # why it was aborted, or how an operator settled it
    payload: dict[str, Any] = field(default_factory=dict)


class JournalView:
    """The journal queries beyond claim and settle (mixed into Store, which owns the dialect)."""

    dialect: Dialect

    def _entries_sql(self, where: str) -> str:
        clock = self.dialect.clock
        return (
            f"SELECT seq, app, type, resource_id, op, state, payload, attempts, reason, detail, {clock} - at AS age,"
            f" next_at - {clock} AS next_in FROM journal WHERE {where} ORDER BY seq"
        )

    def _as_entry(self, rec: Any) -> JournalEntry:
        return JournalEntry(
            rec["seq"],
            rec["app"],
            rec["type"],
            rec["resource_id"],
            rec["op"],
            rec["state"],
            float(rec["age"]),
            int(rec["attempts"]),
            None if rec["next_in"] is None else float(rec["next_in"]),
            rec["reason"],
            rec["detail"],
            self.dialect.decode(rec["payload"]),
        )

    async def pending_entries(self, app: str | None = None) -> list[JournalEntry]:
        """Every unsettled entry (of one app, or of all), oldest first, whether or not recovery tried it yet."""
        where, params = ("state = 'pending' AND app = ?", [app]) if app is not None else ("state = 'pending'", [])
        async with self.dialect.access() as conn:
            recs = await conn.fetch(self._entries_sql(where), *params)
        return [self._as_entry(r) for r in recs]

    async def undecided(self, app: str) -> list[JournalEntry]:
        """The app's pending entries recovery has tried and could not decide (attempts > 0), oldest first.

        For `scim-gateway status`, metrics and the admin page: a count above zero that does not fall means
        writes stay unsettled (their resources answer 503 to writes) until the app can tell, or an operator
        settles them with `scim-gateway pending settle`. Each carries its attempts, when it is next tried and
        the last reason.
        """
        async with self.dialect.access() as conn:
            recs = await conn.fetch(self._entries_sql("state = 'pending' AND app = ? AND attempts > 0"), app)
        return [self._as_entry(r) for r in recs]

    async def journal_entry(self, seq: int) -> JournalEntry | None:
        """One entry in any state; None when there is no such entry."""
        async with self.dialect.access() as conn:
            rec = await conn.fetchrow(self._entries_sql("seq = ?"), seq)
        return None if rec is None else self._as_entry(rec)

    async def postpone(self, seq: int, reason: str, delay: float) -> int:
        """Recovery could not decide a pending entry: count the attempt, take it again in `delay` seconds. Attempts so far
        (0 when the entry is no longer pending: settled meanwhile by another process)."""

        async def work(conn: Any) -> int:
            rec = await conn.fetchrow(
                f"UPDATE journal SET attempts = attempts + 1, next_at = {self.dialect.clock} + ?, reason = ?"
                " WHERE seq = ? AND state = 'pending' RETURNING attempts",
                float(delay),
                reason[:500],
                seq,
            )
            return 0 if rec is None else int(rec["attempts"])

        return await self.dialect.transaction(work)

    async def release_name(self, seq: int) -> None:
        """The resource a pending entry claims gives up its unique name until the entry settles (or aborts), so
        entries that hold each other's names (renames that swap them) can each settle to its own."""

        async def work(conn: Any) -> None:
            await conn.execute("UPDATE resources SET unique_key = ? WHERE pending_seq = ?", f"{PARKED}{seq}", seq)

        await self.dialect.transaction(work)

    async def note(self, seq: int, detail: str) -> None:
        """Say on a settled entry how it was settled (by recovery after a late find, by an operator)."""

        async def work(conn: Any) -> None:
            await conn.execute("UPDATE journal SET detail = ? WHERE seq = ?", detail[:500], seq)

        await self.dialect.transaction(work)

    async def rolled_back_creates(self, app: str, within: float) -> list[JournalEntry]:
        """Creates recovery rolled back in the last `within` seconds, not found late yet: the app may still
        perform one the dead process had sent (the sweep looks for such late records)."""
        where = f"app = ? AND op = 'create' AND state = 'aborted' AND detail = ? AND at >= {self.dialect.clock} - ?"
        async with self.dialect.access() as conn:
            recs = await conn.fetch(self._entries_sql(where), app, ROLLED_BACK, float(within))
        return [self._as_entry(r) for r in recs]


# The unique key of a resource whose pending entry gave up its name (release_name): upper case, so no unique key
# (a name lower-cased) is ever one, and no NUL (PostgreSQL text cannot hold it).
PARKED = "RECOVERING "
# The detail of a create recovery rolled back because the app had no such record (yet).
ROLLED_BACK = "recovery: the app has no such record"

__all__ = ["PARKED", "ROLLED_BACK", "JournalEntry", "JournalView"]
