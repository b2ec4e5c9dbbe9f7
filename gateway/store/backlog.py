"""What the store holds that is still to do, counted for the operator (the /metrics gauges, `scim-gateway status`,
the admin page): the journal's unsettled writes, and the hub's undelivered outbox entries.

Counts only, by the journal's (app, state) index: cheap enough for every scrape, and the same whichever
process asks, since the store is shared by them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .correlation import Store


async def journal_pending(store: Store, apps: Sequence[str]) -> dict[str, int]:
    """Journal entries not settled yet per app (writes in flight, or left by a crash), every app named (0 for none)."""
    counts = dict.fromkeys(apps, 0)
    if not counts:
        return counts
    dialect = store.dialect
    async with dialect.access() as conn:
        for chunk in dialect.chunks(list(counts)):
            among, params = dialect.among("app", chunk)
            rows = await conn.fetch(
                f"SELECT app, count(*) AS pending FROM journal WHERE {among} AND state = 'pending' GROUP BY app", *params
            )
            for row in rows:
                counts[row["app"]] = int(row["pending"])
    return counts


@dataclass(slots=True)
class OutboxBacklog:
    """One app's hub deliveries still to do (gateway/store/outbox.py): entries pending and dead-lettered, and the lag,
    the seconds since the oldest pending entry's resource last changed in the hub (0 when none is pending)."""

    pending: int = 0
    dead: int = 0
    lag: float = 0.0


async def outbox_backlog(store: Store, apps: Sequence[str]) -> dict[str, OutboxBacklog]:
    """The hub's outbox per app fed by it, every app named; by the outbox's (app, state, due) index."""
    backlog = {app: OutboxBacklog() for app in apps}
    if not backlog:
        return backlog
    dialect = store.dialect
    async with dialect.access() as conn:
        rows = await conn.fetch(
            f"SELECT app, state, count(*) AS n, {dialect.clock} - min(changed) AS age FROM hub_outbox"
            " WHERE state IN ('pending', 'dead') GROUP BY app, state"
        )
    for row in rows:
        entry = backlog.get(row["app"])
        if entry is None:
            continue  # an app no longer fed by the hub
        if row["state"] == "pending":
            entry.pending, entry.lag = int(row["n"]), max(0.0, float(row["age"] or 0.0))
        else:
            entry.dead = int(row["n"])
    return backlog


__all__ = ["OutboxBacklog", "journal_pending", "outbox_backlog"]
