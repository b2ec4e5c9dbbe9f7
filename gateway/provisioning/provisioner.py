"""The provisioner of one app: every operation the protocol layer asks of it, in order, with recovery.

The only place that calls the correlation store and the app's connector. It speaks resources (dicts of
SCIM attributes) and store rows, and answers with `Resource`s or provisioning errors; the protocol layer
renders both. The work is done by parts that share one `Context`:

- pipeline.py: claim -> app call -> settle or abort (the journal), the one owner of a write's consistency;
- writes.py: create, replace, patch, delete of one resource; batch.py: creates in a batch (a Bulk import);
- reads.py: reads live or from the copy, the copy kept up with the app; search.py: lists, pushdown, and
  adoption on lookup; adoption.py: linking records the app already has, `import`;
- recovery.py: settling what a crash left pending;
- reconcile.py: the app compared with the table (a report); reconcile_fix.py: the fixes a report implies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..audit import AuditLog
from ..connectors.base import Connector
from ..mapping.compile import CompiledMapping, CompiledResource
from ..store import Query, Store
from .adoption import Adoption
from .batch import Answer, BatchCreate
from .breaker import Breaker
from .context import Context
from .lookup import Lookup
from .reads import Reads
from .reconcile import Progress, Reconciler
from .reconcile_fix import Fixer
from .recovery import Recovery
from .resource import Resource
from .search import Search
from .writes import Writes


class Provisioner:
    def __init__(
        self,
        mapping: CompiledMapping,
        connector: Connector,
        store: Store,
        breaker: Breaker | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.ctx = ctx = Context(mapping, connector, store, breaker)
        self.mapping = mapping
        self.app = mapping.app
        self.breaker = breaker
        self.store = store
        self.connector = ctx.connector  # behind the breaker
        self.pipeline = ctx.pipeline
        self.reads = Reads(ctx)
        self.adoption = Adoption(ctx)
        self.search = Search(ctx, self.reads, self.adoption)
        self.writes = Writes(ctx, self.reads)
        self.batch = BatchCreate(ctx, self.reads, self.writes)
        self.recovery = Recovery(ctx, self.writes, audit)
        self.reconciler = Reconciler(ctx)
        self.fixer = Fixer(ctx, self.reads, self.adoption, self.writes)

    def resource(self, kind: str) -> CompiledResource:
        """The mapping of one resource type; NotFound when the app has none of that kind."""
        return self.ctx.resource(kind)

    # -- reads
    async def get(self, kind: str, rid: str, *, live: bool = True, members: bool = True) -> Resource:
        return await self.reads.get(kind, rid, live=live, members=members)

    async def query(
        self, kind: str, query: Query, lookup: Lookup | None = None, *, members: bool = True
    ) -> tuple[int, list[Resource]]:
        return await self.search.query(kind, query, lookup, members=members)

    # -- writes
    async def create(self, kind: str, resource: dict[str, Any]) -> Resource:
        return await self.writes.create(kind, resource)

    async def create_many(self, kind: str, resources: list[dict[str, Any]]) -> list[Answer]:
        return await self.batch.create_many(kind, resources)

    async def replace(
        self, kind: str, rid: str, resource: dict[str, Any], if_match: int | None = None, *, with_members: bool = True
    ) -> Resource:
        return await self.writes.replace(kind, rid, resource, if_match, with_members=with_members)

    async def patch(
        self,
        kind: str,
        rid: str,
        apply: Callable[[dict[str, Any]], dict[str, Any]],
        if_match: int | None = None,
        *,
        member_changes: dict[str, dict[str, Any] | None] | None = None,
        with_members: bool = True,
    ) -> Resource:
        return await self.writes.patch(kind, rid, apply, if_match, member_changes=member_changes, with_members=with_members)

    async def delete(self, kind: str, rid: str, if_match: int | None = None) -> None:
        await self.writes.delete(kind, rid, if_match)

    # -- the app's existing accounts, and crashes
    async def import_existing(self, kind: str, progress: Callable[[dict[str, int]], None] | None = None) -> dict[str, int]:
        return await self.adoption.import_existing(kind, progress)

    async def recover(self, older_than: float | None = None, *, due: bool = False) -> int:
        return await self.recovery.recover(older_than, due=due)

    # -- governance
    async def reconcile(self, progress: Progress | None = None) -> dict[str, Any]:
        """The app compared with the table: a report (reconcile.py); nothing is written."""
        return await self.reconciler.run(progress)

    async def apply_fixes(
        self, report: dict[str, Any], audit: AuditLog | None = None, client: str = "cli"
    ) -> list[dict[str, Any]]:
        """Carry out the fixes the report implies (reconcile_fix.py), each journaled and audited."""
        return await self.fixer.apply(report, audit, client)


__all__ = ["Provisioner"]
