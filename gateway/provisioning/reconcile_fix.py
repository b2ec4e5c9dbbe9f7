"""Reconcile fixes: the plan a report implies (`reconcile --fix`, a dry run) and carrying it out (`--apply`).

From a report (reconcile.py):

- an orphan planned `link` is linked to the resource its match attribute names (Adoption.relink, journaled as
  an update of that resource); `adopt` links it as a new resource (Adoption.link, as `import` does);
- an orphan planned `deactivate` or `delete` gets what those mean in this app's mapping (the `active` rule's
  value, the disable action, or deleting the record), journaled as a `reconcile` entry before the app call
  and ended after it (the record has no resource row to claim);
- a resource whose attributes or members drifted: with `reconcile.drift: revert` (the default) the gateway's
  copy, what the IdP provisioned, is written to the app by the ordinary write path (Writes.replace: journaled,
  claimed, read back); with `accept` the app's values are taken into the copy (Reads.sync_copy);
- a vanished resource (no orphan linked to it) is dropped from the table, as a live read drops one whose
  record the app deleted (Reads.forget_vanished, journaled as a delete).

Every fix is checked again against the app and the table just before it runs (the report may be minutes old),
and each one carried out writes an audit line (`op: reconcile-fix`, `fix`: which). A plan never calls the app.
Each fix is a dict: {"fix", "type", "id", "native_id", "name", "outcome": planned | done | skipped | failed,
"detail"}.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ..audit import AuditLog
from ..connectors.errors import AppError
from ..mapping.compile import CompiledResource
from ..store import NativeConflict
from .adoption import Adoption
from .context import Context
from .errors import ProvisioningError
from .reads import Reads
from .writes import Writes

log = logging.getLogger(__name__)


def plan(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The fixes a report implies, in the order they would run; nothing is called."""
    fixes: list[dict[str, Any]] = []
    linked_to = {o["resource"] for o in report.get("orphans", []) if o.get("plan") == "link"}
    for orphan in report.get("orphans", []):
        if orphan.get("plan") in ("link", "adopt", "deactivate", "delete"):
            fixes.append(
                {
                    "fix": orphan["plan"],
                    "type": orphan["type"],
                    "id": orphan.get("resource"),
                    "native_id": orphan["native_id"],
                    "name": orphan.get("name"),
                    "outcome": "planned",
                    "detail": orphan.get("why"),
                }
            )
    drift_policy = report.get("policy", {}).get("drift", "report")
    if drift_policy in ("revert", "accept"):
        changed: dict[tuple[str, str], dict[str, Any]] = {}
        for d in report.get("drift", []):
            entry = changed.setdefault((d["type"], d["id"]), {"native_id": d["native_id"], "name": d["name"], "what": []})
            entry["what"].append(d["attribute"])
        for m in report.get("membership", []):
            entry = changed.setdefault(("Group", m["group"]), {"native_id": m["native_id"], "name": m["name"], "what": []})
            entry["what"].append("members")
        for (kind, rid), entry in changed.items():
            towards = "the gateway's copy to the app" if drift_policy == "revert" else "the app's values into the copy"
            fixes.append(
                {
                    "fix": drift_policy,
                    "type": kind,
                    "id": rid,
                    "native_id": entry["native_id"],
                    "name": entry["name"],
                    "outcome": "planned",
                    "detail": f"{', '.join(entry['what'])}: {towards}",
                }
            )
    for gone in report.get("vanished", []):
        if gone["id"] not in linked_to:
            fixes.append(
                {
                    "fix": "forget",
                    "type": gone["type"],
                    "id": gone["id"],
                    "native_id": gone["native_id"],
                    "name": gone.get("name"),
                    "outcome": "planned",
                    "detail": "the app no longer has its record: the resource is dropped from the table",
                }
            )
    return fixes


class Fixer:
    def __init__(self, ctx: Context, reads: Reads, adoption: Adoption, writes: Writes) -> None:
        self.ctx = ctx
        self.reads = reads
        self.adoption = adoption
        self.writes = writes

    async def apply(self, report: dict[str, Any], audit: AuditLog | None = None, client: str = "cli") -> list[dict[str, Any]]:
        """Carry out the report's plan; each fix with its outcome. An app that fails one fix fails only that one."""
        out = []
        for fix in plan(report):
            cres = self.ctx.mapping.resources.get(fix["type"])
            outcome: str
            detail: str | None
            try:
                if cres is None:
                    outcome, detail = "skipped", "the mapping has no such resource type now"
                else:
                    outcome, detail = await self._one(cres, fix)
            except (AppError, ProvisioningError) as exc:
                outcome, detail = "failed", exc.detail
            done = {**fix, "outcome": outcome, "detail": detail}
            out.append(done)
            log.info(
                "%s: reconcile fix %s of %s %s: %s (%s)", self.ctx.app, fix["fix"], fix["type"], fix["native_id"], outcome, detail
            )
            if audit is not None and outcome != "skipped":
                audit.write(
                    {
                        "app": self.ctx.app,
                        "credential": "reconcile",
                        "client": client,
                        "method": None,
                        "op": "reconcile-fix",
                        "fix": fix["fix"],
                        "resource_type": fix["type"],
                        "id": done.get("id"),
                        "native_id": fix["native_id"],
                        "outcome": outcome,
                        "detail": (detail or "")[:200],
                        "pid": os.getpid(),
                    }
                )
        return out

    async def _one(self, cres: CompiledResource, fix: dict[str, Any]) -> tuple[str, str | None]:
        ctx, kind, native_id = self.ctx, cres.name, fix["native_id"]
        record = await ctx.call(f"reading {kind} {native_id}", lambda: ctx.connector.get(kind, native_id))
        if fix["fix"] == "forget":
            row = await ctx.store.get(ctx.app, kind, fix["id"])
            if row is None or row.native_id != native_id:
                return "skipped", "the resource changed since the report"
            if record is not None:
                return "skipped", "the app has the record again"
            if not await self.reads.forget_vanished(cres, row, {"fix": "reconcile-forget"}):
                return "skipped", "a write holds the resource"
            return "done", "dropped from the table"
        if record is None:
            return "skipped", "the app no longer has the record"
        if fix["fix"] in ("revert", "accept"):
            return await self._drift(cres, fix, record)
        if await ctx.store.by_native(ctx.app, kind, native_id) is not None:
            return "skipped", "linked since the report"
        name = fix.get("name")
        if isinstance(name, str) and fix["fix"] != "link":
            creating = {
                e.payload.get("unique_key") for e in await ctx.store.pending(ctx.app) if e.op == "create" and e.type == kind
            }
            if name.lower() in creating:
                return "skipped", f"a create of {cres.unique_attr} {name!r} is in flight: it may be this record"
        if fix["fix"] == "link":
            row = await ctx.store.get(ctx.app, kind, fix["id"])
            if row is None:
                return "skipped", f"{kind} {fix['id']} is gone"
            if row.native_id is not None and row.native_id != native_id:
                still = await ctx.call(f"reading {kind} {row.id}", lambda: ctx.connector.get(kind, row.native_id or ""))
                if still is not None:
                    return "skipped", f"{kind} {row.id} has its app record {row.native_id} again"
            try:
                await self.adoption.relink(cres, row, native_id, record, "reconcile-link")
            except NativeConflict:
                return "skipped", "the record was linked meanwhile"
            return "done", f"linked to {kind} {row.id}"
        if fix["fix"] == "adopt":
            # No app call and no row to claim yet: the entry records the fix, settled as the link commits or not.
            seq = await ctx.store.begin_fix(ctx.app, kind, f"native:{kind}:{native_id}", "adopt", {"native_id": native_id})
            try:
                linked = await self.adoption.link(cres, native_id, record)
            except BaseException as exc:
                await ctx.store.end_fix(seq, False, f"gateway error: {type(exc).__name__}")
                raise
            await ctx.store.end_fix(seq, linked is not None, None if linked else "no name, or the name is taken")
            if linked is None:
                return "skipped", f"no {cres.unique_attr}, or it is taken now"
            fix["id"] = linked.id
            return "done", f"adopted as {kind} {linked.id}"
        return await self._unmanaged(cres, fix["fix"], native_id, record)

    async def _drift(self, cres: CompiledResource, fix: dict[str, Any], record: dict[str, Any]) -> tuple[str, str]:
        """revert: the gateway's copy written to the app by the ordinary write path (journaled, claimed, read back);
        accept: the app's values, and its members, taken into the copy as a live read takes them."""
        ctx, kind = self.ctx, cres.name
        row = await ctx.store.get(ctx.app, kind, fix["id"])
        if row is None or row.native_id != fix["native_id"]:
            return "skipped", "the resource changed since the report"
        group = kind == "Group" and cres.members is not None
        if fix["fix"] == "revert":
            resource = dict(row.data)
            if group:
                resource["members"] = [{"value": m.id, "type": m.type} for m in await ctx.store.members(ctx.app, row.id)]
            await self.writes.replace(kind, row.id, resource, with_members=group)
            return "done", "the app has the gateway's copy again"
        live = await ctx.overlay(cres, row.data, record)
        native_id: str = fix["native_id"]
        members = (
            await ctx.call(f"reading the members of {kind} {row.id}", lambda: ctx.members_from_app(native_id)) if group else None
        )
        # No app call: the entry records the fix, as adopting one does.
        seq = await ctx.store.begin_fix(ctx.app, kind, row.id, "accept", {"native_id": native_id})
        try:
            synced = await self.reads.sync_copy(cres, row, live, members, await ctx.listed_groups(cres, record))
        except BaseException as exc:
            await ctx.store.end_fix(seq, False, f"gateway error: {type(exc).__name__}")
            raise
        changed = synced is not row
        why = "nothing differs now, or a write holds the resource"
        await ctx.store.end_fix(seq, changed, None if changed else why)
        return ("done", "the copy has the app's values") if changed else ("skipped", why)

    async def _unmanaged(self, cres: CompiledResource, fix: str, native_id: str, record: dict[str, Any]) -> tuple[str, str]:
        """Deactivate or delete an account no resource manages, journaled before the call, ended after it."""
        ctx, kind = self.ctx, cres.name
        body: dict[str, Any] = {}
        if fix == "deactivate" and cres.deactivate.via == "field":
            before = await ctx.overlay(cres, {}, record)
            if before.get("active") is False:
                return "skipped", "already inactive"
            body = await ctx.update_record(cres, before, {**before, "active": False})
            if not body:
                return "skipped", "the mapping writes nothing for active: false"
        seq = await ctx.store.begin_fix(ctx.app, kind, f"native:{kind}:{native_id}", fix, {"native_id": native_id})
        with ctx.pipeline.tracking([seq]):
            try:
                async with ctx.pipeline.admission():
                    if fix == "delete" or cres.deactivate.via == "delete":
                        await ctx.connector.delete(kind, native_id)
                    elif cres.deactivate.via == "action":
                        assert cres.deactivate.disable is not None
                        await ctx.connector.action(kind, native_id, cres.deactivate.disable)
                    else:
                        await ctx.connector.update(kind, native_id, body)
            except AppError as exc:
                await ctx.store.end_fix(seq, False, f"app refused: {exc.detail}")
                raise
            except BaseException as exc:
                await ctx.store.end_fix(seq, False, f"gateway error: {type(exc).__name__}")
                raise
            await ctx.store.end_fix(seq, True)
        if fix == "delete" or cres.deactivate.via == "delete":
            return "done", "deleted in the app"
        return "done", "deactivated in the app"


__all__ = ["Fixer", "plan"]
