"""Lists and filters: answered by the store from the gateway's copies, after asking the app where the mapping says.

- `pushdown`: the attributes whose filters are first asked of the app (its `find`), so the answer is as
  current as the app: records the gateway knows get their copy refreshed, records it has never linked are
  adopted. The store then answers the whole filter over those copies, with SCIM's own comparison rules.
- An IdP looking an account up by its unique name (`userName eq "x"`) before creating it finds the app's
  existing record adopted, rather than failing on a duplicate.
"""

from __future__ import annotations

from functools import partial

from ..mapping.compile import CompiledResource, CompiledRule
from ..store import Member, Query, Row
from .adoption import Adoption
from .context import Context
from .lookup import Both, Either, Lookup, Probe
from .reads import Reads
from .resource import Resource

PUSHDOWN_LIMIT = 1000  # app records one pushed-down filter may sync; more is an import, not a lookup

Question = tuple[CompiledRule, str, str]  # (the rule whose field is asked, operator, SCIM value)


class Search:
    def __init__(self, ctx: Context, reads: Reads, adoption: Adoption) -> None:
        self.ctx = ctx
        self.reads = reads
        self.adoption = adoption

    async def query(
        self, kind: str, query: Query, lookup: Lookup | None = None, *, members: bool = True
    ) -> tuple[int, list[Resource]]:
        """How many resources match, and the page asked for; `lookup`: what of the filter the app may be asked."""
        ctx = self.ctx
        cres = ctx.resource(kind)
        if lookup is not None and cres.pushdown:
            await self.pushdown(cres, lookup)
        total, rows = await ctx.store.query(ctx.app, kind, query)
        if total == 0 and lookup is not None:
            adopted = await self.adopt_on_lookup(cres, lookup)
            if adopted is not None:
                total, rows = 1, ([adopted] if query.start_index <= 1 and query.count != 0 else [])
        related: dict[str, list[Member]] = {}
        if members and rows:
            related = await self.reads.related_of_many(kind, [row.id for row in rows])
        return total, [Resource(row, row.data, related.get(row.id, []) if members else None) for row in rows]

    async def adopt_on_lookup(self, cres: CompiledResource, lookup: Lookup) -> Row | None:
        """Link the app's account when an IdP looks it up by its match attribute (`userName eq "x"`) and finds nothing."""
        if not (isinstance(lookup, Probe) and lookup.op == "eq" and lookup.attribute == cres.match_rule.resolved):
            return None
        ctx = self.ctx
        found = await ctx.call(f"looking up {cres.name}", lambda: ctx.find_by_match(cres, lookup.value))
        if found is None or len(found) != 1:
            return None
        native_id, record = found[0]
        if await ctx.store.by_native(ctx.app, cres.name, native_id) is not None:
            return None
        return await self.adoption.link(cres, native_id, record)

    def questions(self, cres: CompiledResource, lookup: Lookup) -> list[Question] | None:
        """What to ask the app so that its answers cover every match of the filter; None when it cannot."""
        if isinstance(lookup, Probe):
            rule = next((r for r in cres.pushdown if r.resolved == lookup.attribute), None)
            if rule is None or lookup.op not in self.ctx.connector.caps.search_ops:
                return None
            if lookup.op != "eq" and (rule.to_app is not None or rule.rule.ref is not None):
                return None  # a transform of part of a value means nothing
            return [(rule, lookup.op, lookup.value)]
        if isinstance(lookup, Both):
            for part in lookup.parts:  # one askable conjunct finds a superset of the matches
                found = self.questions(cres, part)
                if found is not None:
                    return found
            return None
        assert isinstance(lookup, Either)
        out: list[Question] = []
        for option in lookup.options:
            found = self.questions(cres, option)
            if found is None:
                return None
            out += found
        return out

    async def pushdown(self, cres: CompiledResource, lookup: Lookup) -> None:
        """Ask the app for the records the filter names: refresh the copies the gateway has, adopt the others."""
        ctx = self.ctx
        for rule, op, value in self.questions(cres, lookup) or []:
            found = await ctx.call(f"searching {cres.name}", partial(ctx.find, cres, rule, value, op))
            for native_id, record in found[:PUSHDOWN_LIMIT]:
                row = await ctx.store.by_native(ctx.app, cres.name, native_id)
                if row is None:
                    await self.adoption.link(cres, native_id, record)
                elif row.state == "active":
                    await self.reads.sync_copy(cres, row, await ctx.overlay(cres, row.data, record))


__all__ = ["PUSHDOWN_LIMIT", "Search"]
