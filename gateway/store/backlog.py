"""What the store holds that is still to do, counted for the operator (the /metrics gauges, `scim-gateway status`).

Counts only, by the journal's (app, state) index: cheap enough for every scrape, and the same whichever
process asks, since the store is shared by them all.
"""

from __future__ import annotations

from collections.abc import Sequence

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


__all__ = ["journal_pending"]
