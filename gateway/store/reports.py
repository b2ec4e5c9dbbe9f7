"""What the store keeps for governance: each app's reconcile reports, leases for scheduled work, the journal
entries of reconcile fixes that touch no resource row, and which apps the store holds.

Mixed into `Store` (both dialects), so every store has these methods:

- `save_report(app, report, ran_at) -> int`: keep one run's report (a JSON object; its `found` count, when it
  has one, is kept in a column too); the last `KEEP_REPORTS` per app are kept, older ones dropped.
- `last_report(app) -> SavedReport | None`: the newest report of the app; `last_reports() -> {app: SavedReport}`
  the newest of every app; `reports(app, limit)` newest first.
- `take_lease(name, holder, seconds) -> bool`: hold `name` for `seconds` (on the database's clock, so hosts
  agree) unless another holder's lease on it is still running; `release_lease(name, holder)`.
- `begin_fix(app, rtype, ref, fix, payload) -> seq` / `end_fix(seq, done, detail)`: a journal entry (op
  `reconcile`) for a fix whose app call concerns no resource row (an unmanaged account deactivated): it is
  pending while the app is called, done or aborted after, so a crash in between is seen (recovery ends it).
- `apps() -> list[str]`: every app with a resource in the store.
- `writes_of(app, resource_id, limit) -> list[JournalEntry]`: a resource's newest journal entries (pending,
  done or aborted, with the app's refusal as `detail`), newest first.

The store knows no SCIM: a report is an opaque JSON object here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .dialect import Dialect

KEEP_REPORTS = 20


@dataclass(frozen=True, slots=True)
class SavedReport:
    """One kept run: the app, when it ran (as the caller said: ISO 8601 UTC), how many findings, the report."""

    app: str
    ran_at: str
    found: int
    report: dict[str, Any]


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One journal entry of a resource: `at` in seconds since the epoch (the database's clock)."""

    seq: int
    at: float
    op: str
    state: str
    detail: str | None


class ReportStore:
    """Reports, leases, fix entries; over the store's dialect (mixed into Store)."""

    dialect: Dialect

    def _saved(self, rec: Any) -> SavedReport:
        return SavedReport(rec["app"], rec["ran_at"], rec["found"], self.dialect.decode(rec["report"]))

    async def save_report(self, app: str, report: dict[str, Any], ran_at: str) -> int:
        """Keep a run's report; its sequence number. Only the newest KEEP_REPORTS of the app stay."""
        found = report.get("found")
        count = found if isinstance(found, int) else 0

        async def work(conn: Any) -> int:
            rec = await conn.fetchrow(
                f"INSERT INTO reconcile_reports (app, ran_at, saved, found, report) VALUES (?, ?, {self.dialect.clock}, ?, ?)"
                " RETURNING seq",
                app,
                ran_at,
                count,
                self.dialect.encode(report),
            )
            seq: int = rec["seq"]
            await conn.execute(
                "DELETE FROM reconcile_reports WHERE app = ? AND seq <= ?",
                app,
                seq - KEEP_REPORTS,
            )
            return seq

        result: int = await self.dialect.transaction(work)
        return result

    async def last_report(self, app: str) -> SavedReport | None:
        found = await self.reports(app, 1)
        return found[0] if found else None

    async def reports(self, app: str, limit: int = KEEP_REPORTS) -> list[SavedReport]:
        """The app's kept reports, newest first."""
        async with self.dialect.access() as conn:
            recs = await conn.fetch("SELECT * FROM reconcile_reports WHERE app = ? ORDER BY seq DESC LIMIT ?", app, limit)
        return [self._saved(r) for r in recs]

    async def last_reports(self) -> dict[str, SavedReport]:
        """The newest report of every app that has one."""
        async with self.dialect.access() as conn:
            recs = await conn.fetch(
                "SELECT * FROM reconcile_reports WHERE seq IN (SELECT max(seq) FROM reconcile_reports GROUP BY app) ORDER BY app"
            )
        return {r["app"]: self._saved(r) for r in recs}

    # ------------------------------------------------------------------ leases

    async def take_lease(self, name: str, holder: str, seconds: float) -> bool:
        """Hold `name` for `seconds` from now; False while another holder's lease on it runs (or this holder's own:
        a lease is for one turn, taken again only once it ran out)."""
        clock = self.dialect.clock

        async def work(conn: Any) -> bool:
            rec = await conn.fetchrow(
                f"INSERT INTO leases (name, holder, until) VALUES (?, ?, {clock} + ?)"
                " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until"
                f" WHERE leases.until <= {clock} RETURNING holder",
                name,
                holder,
                float(seconds),
            )
            return rec is not None

        taken: bool = await self.dialect.transaction(work)
        return taken

    async def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up early (only the holder can)."""

        async def work(conn: Any) -> None:
            await conn.execute("DELETE FROM leases WHERE name = ? AND holder = ?", name, holder)

        await self.dialect.transaction(work)

    # ------------------------------------------------------------------ fixes that touch no resource row

    async def begin_fix(self, app: str, rtype: str, ref: str, fix: str, payload: dict[str, Any]) -> int:
        """Journal a reconcile fix before its app call (op `reconcile`, `fix` in the payload); its seq."""

        async def work(conn: Any) -> int:
            rec = await conn.fetchrow(
                "INSERT INTO journal (at, app, type, resource_id, op, state, payload)"
                f" VALUES ({self.dialect.clock}, ?, ?, ?, 'reconcile', 'pending', ?) RETURNING seq",
                app,
                rtype,
                ref,
                self.dialect.encode({**payload, "fix": fix}),
            )
            seq: int = rec["seq"]
            return seq

        result: int = await self.dialect.transaction(work)
        return result

    async def end_fix(self, seq: int, done: bool, detail: str | None = None) -> None:
        """Settle a fix's entry: done, or aborted (the app refused, or recovery found it cut short)."""

        async def work(conn: Any) -> None:
            await conn.execute(
                "UPDATE journal SET state = ?, detail = ? WHERE seq = ? AND state = 'pending' AND op = 'reconcile'",
                "done" if done else "aborted",
                None if detail is None else detail[:500],
                seq,
            )

        await self.dialect.transaction(work)

    # ------------------------------------------------------------------ what the store holds

    async def apps(self) -> list[str]:
        """Every app with a resource in the store, in name order."""
        async with self.dialect.access() as conn:
            recs = await conn.fetch("SELECT DISTINCT app FROM resources ORDER BY app")
        return [r["app"] for r in recs]

    async def writes_of(self, app: str, resource_id: str, limit: int = 10) -> list[JournalEntry]:
        """The resource's newest journal entries, newest first."""
        async with self.dialect.access() as conn:
            recs = await conn.fetch(
                "SELECT seq, at, op, state, detail FROM journal WHERE app = ? AND resource_id = ? ORDER BY seq DESC LIMIT ?",
                app,
                resource_id,
                limit,
            )
        return [JournalEntry(r["seq"], float(r["at"]), r["op"], r["state"], r["detail"]) for r in recs]


__all__ = ["KEEP_REPORTS", "JournalEntry", "ReportStore", "SavedReport"]
