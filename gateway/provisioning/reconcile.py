"""Reconcile: compare one app with the gateway's correlation table, and the plan that would repair it.

`Reconciler.run(progress)` reads every record the app lists (users, then groups) and every row the table
links, and answers a report, a JSON object:

    {"app", "ran_at", "duration_s", "found": how many findings,
     "counts": {kind: {"in_app": records listed, "linked": rows linked}},
     "orphans":  [{"type", "native_id", "name", "match": {"attribute", "value"}, "resource": SCIM id or None,
                   "plan": "link" | "adopt" | "deactivate" | "delete" | "none", "why"}],
     "vanished": [{"type", "id", "native_id", "name"}],
     "drift":    [{"type", "id", "native_id", "name", "attribute", "app", "gateway"}],
     "membership": [{"group", "name", "native_id", "only_in_app": [SCIM ids], "only_in_gateway": [SCIM ids],
                     "names": {SCIM id: userName}}],
     "policy": {"orphans", "drift"} (the mapping's `reconcile` block, what --fix follows),
     "inactive": [orphans, as above, that are inactive already where --fix would deactivate them: not findings],
     "skipped":  [{"type", "check", "why"}]}

- orphan: a record no SCIM resource is linked to. Its plan: linked to the resource its match attribute names
  when that resource has no live app record (vanished, or none yet); else what `reconcile.orphans` says
  (by default what the type's `delete` means: delete the record, or deactivate it as `deactivate` says);
  "none" (with why) when it is another resource's duplicate, a create of its name is in flight, or the
  mapping has no way to do it.
- vanished: a linked row whose record the app no longer has (asked once more by id before it is said).
- drift: an attribute the app stores (a rule that reads it, its field in the record) whose value, translated
  by the mapping, differs from the gateway's copy.
- membership: a group's members in the app (those linked) and in the table, where the app models membership.

A scheduled run (runtime.py) adds "trigger": "schedule" (the command line: "cli"); one that could not run is kept
as {"app", "ran_at", "trigger", "error"}. `reconcile --fix` adds "fixes" (reconcile_fix.py). The store keeps
`for_keeping(report)`: each list cut to KEPT_FINDINGS entries, "truncated": {list: how many it had}.

Rows with a write in flight are left out of drift and vanished (the write settles them). Nothing here writes
to the app or the store; fixes are in reconcile_fix.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..connectors.errors import AppError
from ..mapping.compile import CompiledResource
from ..mapping.translate import read_rule
from ..schema import Resolved
from ..store import Row
from ..store import query as q
from .context import Context
from .errors import AppFailed
from .membership import GroupFieldMembership, UserFieldMembership
from .pipeline import utc_now

Progress = Callable[[str, int, int], None]  # (kind, records read, records expected)
PAGE = 500
ORDER = ("User", "Group")
FINDINGS = ("orphans", "vanished", "drift", "membership")
KEPT_FINDINGS = 1000  # entries of each list a kept report holds


def _jsonable(value: Any) -> Any:
    return value if value is None or isinstance(value, str | int | float | bool | list | dict) else str(value)


class Reconciler:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def run(self, progress: Progress | None = None) -> dict[str, Any]:
        ctx = self.ctx
        started, ran_at = time.monotonic(), utc_now()
        policy = ctx.mapping.config.reconcile
        report: dict[str, Any] = {
            "app": ctx.app,
            "ran_at": ran_at,
            "policy": {"orphans": policy.orphans, "drift": policy.drift},
            "counts": {},
            "inactive": [],
            "skipped": [],
        }
        for key in FINDINGS:
            report[key] = []
        pending = await ctx.store.pending(ctx.app)
        in_flight = {e.resource_id for e in pending}
        creating = {str(e.payload.get("unique_key")) for e in pending if e.op == "create"}
        group_drift: dict[str, tuple[set[str], set[str]]] = {}  # membership kept on the users' records
        for kind in [k for k in ORDER if k in ctx.mapping.resources] + [k for k in ctx.mapping.resources if k not in ORDER]:
            await self._kind(ctx.resource(kind), report, in_flight, creating, group_drift, progress)
        for gid, (only_app, only_gw) in sorted(group_drift.items()):
            row = await ctx.store.get(ctx.app, "Group", gid)
            if row is not None and (only_app or only_gw):
                report["membership"].append(_membership(row, only_app, only_gw))
        await self._member_names(report["membership"])
        report["found"] = sum(len(report[key]) for key in FINDINGS)
        report["duration_s"] = round(time.monotonic() - started, 3)
        return report

    # ------------------------------------------------------------------ one resource type

    async def _kind(
        self,
        cres: CompiledResource,
        report: dict[str, Any],
        in_flight: set[str],
        creating: set[str],
        group_drift: dict[str, tuple[set[str], set[str]]],
        progress: Progress | None,
    ) -> None:
        ctx, kind = self.ctx, cres.name
        rows = await self._rows(kind)
        counts = report["counts"][kind] = {"in_app": 0, "linked": len(rows)}
        by_native = {r.native_id: r for r in rows if r.native_id is not None}
        seen: set[str] = set()
        orphans: list[tuple[str, dict[str, Any]]] = []
        if ctx.connector.caps.list_all:
            try:
                async for native_id, record in ctx.connector.list_all(kind):
                    counts["in_app"] += 1
                    seen.add(native_id)
                    row = by_native.get(native_id)
                    if row is None:
                        orphans.append((native_id, record))
                    elif row.id not in in_flight:
                        await self._compare(cres, row, record, report, group_drift)
                    if progress is not None:
                        progress(kind, counts["in_app"], len(rows))
            except AppError as exc:
                raise AppFailed(f"listing the app's {kind} records", exc) from None
        else:
            counts["in_app"] = -1
            report["skipped"].append({"type": kind, "check": "orphans", "why": "the connector cannot list the app's records"})
        if not ctx.connector.caps.read and not ctx.connector.caps.list_all:
            report["skipped"].append({"type": kind, "check": "vanished and drift", "why": "the connector cannot read records"})
            return
        vanished: list[Row] = []
        for row in rows:
            if row.native_id is None or row.native_id in seen or row.id in in_flight:
                continue
            # Not listed: asked once more by id (where the app can be read), as a list may miss a record created
            # or renamed while it paged; an app that cannot list is compared record by record this way.
            found = await self._get(kind, row.native_id) if ctx.connector.caps.read else None
            if found is None:
                vanished.append(row)
                report["vanished"].append(
                    {"type": kind, "id": row.id, "native_id": row.native_id, "name": row.data.get(cres.unique_attr)}
                )
            else:
                await self._compare(cres, row, found, report, group_drift)
        for native_id, record in orphans:
            orphan = await self._orphan(cres, native_id, record, rows, vanished, creating)
            # Deactivated already (by an earlier --fix, or in the app): what --fix would do is done; listed, not found.
            report["inactive" if orphan["plan"] == "inactive" else "orphans"].append(orphan)

    async def _get(self, kind: str, native_id: str) -> dict[str, Any] | None:
        try:
            return await self.ctx.connector.get(kind, native_id)
        except AppError as exc:
            raise AppFailed(f"reading {kind} {native_id}", exc) from None

    async def _rows(self, kind: str) -> list[Row]:
        out: list[Row] = []
        while True:
            _total, page = await self.ctx.store.query(self.ctx.app, kind, q.Query(start_index=len(out) + 1, count=PAGE))
            out.extend(page)
            if len(page) < PAGE:
                return out

    # ------------------------------------------------------------------ a linked record

    async def _compare(
        self,
        cres: CompiledResource,
        row: Row,
        record: dict[str, Any],
        report: dict[str, Any],
        group_drift: dict[str, tuple[set[str], set[str]]],
    ) -> None:
        ctx = self.ctx
        live = await ctx.overlay(cres, row.data, record)
        name = row.data.get(cres.unique_attr)
        done: set[str] = set()
        for rule in cres.rules:
            dotted = rule.resolved.dotted
            if not rule.reads or rule.field not in record or dotted in done:
                continue
            done.add(dotted)
            in_app, copied = read_rule(live, rule), read_rule(row.data, rule)
            if in_app != copied and not (in_app in (None, "") and copied in (None, "")):
                report["drift"].append(
                    {
                        "type": cres.name,
                        "id": row.id,
                        "native_id": row.native_id,
                        "name": name,
                        "attribute": dotted,
                        "app": _jsonable(in_app),
                        "gateway": _jsonable(copied),
                    }
                )
        if cres.name == "Group" and cres.members is not None and row.native_id is not None:
            await self._members(row, report)
        elif cres.name == "User":
            listed = await ctx.listed_groups(cres, record)
            if listed is not None:
                in_app_ids = {g.id for g in listed}
                copied_ids = {g.id for g in await ctx.store.groups_of(ctx.app, row.id)}
                for gid in in_app_ids - copied_ids:
                    group_drift.setdefault(gid, (set(), set()))[0].add(row.id)
                for gid in copied_ids - in_app_ids:
                    group_drift.setdefault(gid, (set(), set()))[1].add(row.id)

    async def _members(self, row: Row, report: dict[str, Any]) -> None:
        ctx = self.ctx
        membership = ctx.memberships.get("Group")
        if isinstance(membership, UserFieldMembership):
            return  # compared user by user, from the records the users' pass read
        if not isinstance(membership, GroupFieldMembership) and not ctx.connector.caps.membership:
            return
        native_id = row.native_id
        assert native_id is not None
        in_app = {m.id for m in await ctx.call(f"reading the members of Group {row.id}", lambda: ctx.members_from_app(native_id))}
        copied = {m.id for m in await ctx.store.members(ctx.app, row.id)}
        if in_app != copied:
            report["membership"].append(_membership(row, in_app - copied, copied - in_app))

    async def _member_names(self, found: list[dict[str, Any]]) -> None:
        """Each membership finding's members by name too (`names`: SCIM id -> userName), for the people reading it."""
        ctx = self.ctx
        for entry in found:
            names: dict[str, Any] = {}
            for rid in [*entry["only_in_app"], *entry["only_in_gateway"]]:
                row = await ctx.store.get(ctx.app, "User", rid)
                names[rid] = None if row is None else row.data.get("userName", row.unique_key)
            entry["names"] = names

    # ------------------------------------------------------------------ a record no resource is linked to

    async def _orphan(
        self,
        cres: CompiledResource,
        native_id: str,
        record: dict[str, Any],
        rows: list[Row],
        vanished: list[Row],
        creating: set[str],
    ) -> dict[str, Any]:
        ctx = self.ctx
        data = await ctx.overlay(cres, {}, record)
        name = data.get(cres.unique_attr)
        value = read_rule(data, cres.match_rule)
        out: dict[str, Any] = {
            "type": cres.name,
            "native_id": native_id,
            "name": _jsonable(name),
            "match": {"attribute": cres.match_rule.resolved.dotted, "value": _jsonable(value)},
            "resource": None,
        }
        candidates = await self._matching(cres, value)
        gone = {r.id for r in vanished}
        free = [r for r in candidates if r.id in gone or r.native_id is None]
        if isinstance(name, str) and name.lower() in creating:
            return {**out, "plan": "none", "why": f"a create of {cres.unique_attr} {name!r} is in flight"}
        if len(free) == 1 and not (free[0].native_id is None and free[0].data.get("active") is False):
            return {**out, "resource": free[0].id, "plan": "link", "why": f"its {out['match']['attribute']} names {free[0].id}"}
        if candidates:
            other = candidates[0]
            why = f"{out['match']['attribute']} {value!r} is {cres.name} {other.id}'s, linked to app record {other.native_id}"
            if other.native_id is None:
                why = f"{out['match']['attribute']} {value!r} is inactive {cres.name} {other.id}'s, which has no app record"
            if len(free) > 1:
                why = f"{out['match']['attribute']} {value!r} names {len(free)} resources"
            if other.native_id is not None or len(free) > 1:
                return {**out, "resource": other.id, "plan": "none", "why": f"a duplicate: {why}"}
        plan, why = self.orphan_plan(cres, data)
        return {**out, "plan": plan, "why": why}

    def orphan_plan(self, cres: CompiledResource, data: dict[str, Any]) -> tuple[str, str]:
        """What --fix does with an orphan that matches no resource, by the mapping's `reconcile.orphans`."""
        policy = self.ctx.mapping.config.reconcile.orphans
        if policy == "report":
            return "none", "reconcile.orphans: report"
        if policy == "adopt":
            name = data.get(cres.unique_attr)
            if not isinstance(name, str) or not name.strip():
                return "none", f"it has no {cres.unique_attr} to adopt it by"
            return "adopt", "reconcile.orphans: adopt"
        action = policy if policy != "as_delete" else ("delete" if cres.delete_mode == "delete" else "deactivate")
        source = "reconcile.orphans" if policy != "as_delete" else f"resources.{cres.name}.delete"
        if action == "delete":
            return "delete", f"{source}: delete"
        if cres.deactivate.via == "delete":
            return "delete", f"{source}: deactivate, and deactivate.via: delete"
        if cres.deactivate.via == "action":
            return "deactivate", f"{source}: deactivate (the {cres.deactivate.disable} action)"
        if not any(rule.writes and rule.resolved.dotted == "active" for rule in cres.rules):
            return "none", f"{source}: deactivate, but no rule writes active"
        if data.get("active") is False:
            return "inactive", "already inactive"
        return "deactivate", f"{source}: deactivate (active: false)"

    async def _matching(self, cres: CompiledResource, value: Any) -> list[Row]:
        """The resources whose match attribute holds `value` (compared as SCIM compares that attribute)."""
        if value is None or value == "" or isinstance(value, dict | list):
            return []
        resolved = cres.match_rule.resolved
        fold = isinstance(value, str) and not (resolved.sub or resolved.attribute).case_exact
        wanted = value.lower() if fold and isinstance(value, str) else value
        condition: q.Condition
        if resolved.dotted == cres.unique_attr and isinstance(value, str):
            condition = q.Compare(q.Column("unique_key"), "eq", value.lower())
        elif resolved.attribute.multi_valued:
            element = () if resolved.sub is None else (resolved.sub.name,)
            whole = Resolved(resolved.urn, resolved.attribute).keys
            condition = q.AnyElement(whole, q.Compare(q.Element(element), "eq", wanted, fold=fold))
        else:
            condition = q.Compare(q.Field(resolved.keys), "eq", wanted, fold=fold)
        _total, rows = await self.ctx.store.query(self.ctx.app, cres.name, q.Query(where=condition, count=10))
        return rows


def for_keeping(report: dict[str, Any], limit: int = KEPT_FINDINGS) -> dict[str, Any]:
    """The report as the store keeps it: each list cut to `limit` entries (`truncated`: how many each had), so an
    app with tens of thousands of orphans does not make every kept report megabytes; `found` stays the whole count."""
    kept = dict(report)
    cut = {key: len(value) for key, value in report.items() if isinstance(value, list) and len(value) > limit}
    for key in cut:
        kept[key] = report[key][:limit]
    if cut:
        kept["truncated"] = cut
    return kept


def _membership(row: Row, only_app: set[str], only_gw: set[str]) -> dict[str, Any]:
    return {
        "group": row.id,
        "name": row.data.get("displayName"),
        "native_id": row.native_id,
        "only_in_app": sorted(only_app),
        "only_in_gateway": sorted(only_gw),
    }


__all__ = ["FINDINGS", "KEPT_FINDINGS", "Progress", "Reconciler", "for_keeping"]
