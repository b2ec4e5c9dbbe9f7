"""What the admin page shows, gathered from the running apps, the store and the audit log (no app is called).

Plain dicts and lists, so the page's templates and `/admin/status.json` show the same thing.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from ..audit import utc_now
from ..audit_search import AuditQuery, BadTime, Page, failed, parse_when, search
from ..provisioning.audit_user import audit_ids
from ..store import Query
from ..store.backlog import outbox_backlog
from ..store.outbox import DeliveryState
from .health import app_health
from .keys import APPS, HUB, SETTINGS, STORE

PAGE_SIZE = 50
RECENT = 10
OPS = ("create", "replace", "patch", "delete", "bulk", "auth", "reconcile-fix")


async def overview(app: web.Application) -> dict[str, Any]:
    """Every app: health, breaker (state, failures, the last one), backlog, resource counts, the last reconcile."""
    store = app[STORE]
    reports = await store.last_reports()
    apps: list[dict[str, Any]] = []
    for name, runtime in sorted(app[APPS].items()):
        state = app_health(runtime)
        breaker = runtime.provisioner.breaker
        pending = await store.pending(name)
        users, _ = await store.query(name, "User", Query(count=0))
        groups, _ = await store.query(name, "Group", Query(count=0))
        report = reports.get(name)
        retry_in = breaker.retry_in() if breaker is not None else None
        apps.append(
            {
                "name": name,
                **state,
                "not_connected": runtime.not_connected,
                "failures": breaker.failures if breaker is not None else 0,
                "last_failure": (breaker.last or None) if breaker is not None else None,
                "retry_in": round(retry_in, 1) if retry_in is not None else None,
                "pending": len(pending),
                "pending_ops": sorted({p.op for p in pending}),
                "users": users,
                "groups": groups,
                "reconcile": None if report is None else {"ran_at": report.ran_at, "found": report.found},
            }
        )
    hub = await hub_overview(app) if HUB in app else None
    return {"generated": utc_now(), "audit_log": app[SETTINGS].audit_file is not None, "apps": apps, "hub": hub}


async def hub_overview(app: web.Application) -> dict[str, Any]:
    """The hub's delivery per app it feeds (pending, dead letters, lag) and the latest failing deliveries."""
    hub = app[HUB]
    backlog = await outbox_backlog(app[STORE], sorted(hub.workers))
    return {
        "apps": [{"name": n, "pending": b.pending, "dead": b.dead, "lag": round(b.lag, 1)} for n, b in backlog.items()],
        "failing": [delivery_row(d) for d in await hub.store.failing(RECENT * 2)],
    }


async def hub_deliveries(app: web.Application, hub_ids: list[str]) -> list[dict[str, Any]]:
    """A person's deliveries from the hub, per app (their hub resource's SCIM ids)."""
    if HUB not in app:
        return []
    rows: list[dict[str, Any]] = []
    for hub_id in hub_ids:
        rows += [delivery_row(d) for d in await app[HUB].store.status(user=hub_id)]
    return rows


def delivery_row(state: DeliveryState) -> dict[str, Any]:
    def when(epoch: float | None) -> str | None:
        return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")

    return {
        "app": state.app,
        "type": state.type,
        "hub_id": state.resource_id,
        "name": state.name,
        "state": "delivered" if state.state == "done" else "failed" if state.state == "dead" else "pending",
        "attempts": state.attempts,
        "last_error": state.last_error,
        "last_at": when(state.last_at),
        "delivered_at": when(state.delivered_at),
        "app_id": state.app_id,
    }


@dataclass(slots=True)
class AuditForm:
    """The audit search as the page's form gives it (strings as typed, for the form to show again)."""

    user: str = ""
    app: str = ""
    op: str = ""
    status: str = ""
    since: str = ""
    until: str = ""
    page: int = 1

    @classmethod
    def from_query(cls, params: Any) -> AuditForm:
        page = params.get("page", "1")
        return cls(
            user=params.get("user", "").strip(),
            app=params.get("app", "").strip(),
            op=params.get("op", "").strip(),
            status=params.get("status", "").strip(),
            since=params.get("since", "").strip(),
            until=params.get("until", "").strip(),
            page=int(page) if re.fullmatch(r"[0-9]{1,6}", page) and int(page) > 0 else 1,
        )

    def link(self, **changes: Any) -> str:
        """This search's query string with `changes` (for the pager)."""
        from urllib.parse import urlencode

        values = {k: getattr(self, k) for k in ("user", "app", "op", "status", "since", "until", "page")}
        values.update(changes)
        return "?" + urlencode({k: v for k, v in values.items() if v not in ("", None)})


async def audit_query(app: web.Application, form: AuditForm) -> AuditQuery:
    """The reader's query for the form; BadTime / ValueError name what is wrong."""
    query = AuditQuery()
    if form.app:
        query.apps = {form.app}
    if form.op:
        query.ops = {form.op}
    if form.status == "failed":
        query.only_failed = True
    elif form.status:
        if not re.fullmatch(r"[1-5][0-9][0-9]", form.status):
            raise ValueError(f"status {form.status!r}: give an HTTP status (e.g. 409) or 'failed'")
        query.statuses = {int(form.status)}
    now = datetime.now(UTC)
    if form.since:
        query.since = parse_when(form.since, now)
    if form.until:
        query.until = parse_when(form.until, now)
    if form.user:
        query.user_given = True
        query.ids = await audit_ids(app[STORE], form.user)
    return query


async def audit_page(app: web.Application, query: AuditQuery, page: int = 1, size: int | None = None) -> Page:
    """One page of matching records, newest first (read off the event loop: the log is a file)."""
    size = size or PAGE_SIZE
    path = app[SETTINGS].audit_file
    if path is None or not Path(path).exists():
        return Page([], False, 0)
    return await asyncio.to_thread(search, path, query, (page - 1) * size, size)


def record_row(record: dict[str, Any]) -> dict[str, Any]:
    """A record as a table row: when, app, who, what, how it ended, and what went wrong (reason, scimType, notices)."""
    status = record.get("status")
    why = [str(record[k]) for k in ("reason", "fix", "detail") if record.get(k)]
    why += [str(n) for n in record.get("notices") or []]
    return {
        "ts": record.get("ts", ""),
        "app": record.get("app") or record.get("area") or "",
        "op": record.get("op") or "",
        "method": record.get("method") or "",
        "type": record.get("resource_type") or "",
        "id": record.get("id") or "",
        "status": status if status is not None else record.get("outcome") or "none",
        "failed": failed(record),
        "scim_type": record.get("scim_type") or "",
        "why": "; ".join(why),
        "credential": record.get("credential") or "",
        "client": record.get("client") or "",
        "request_id": record.get("request_id") or "",
    }


__all__ = ["OPS", "PAGE_SIZE", "RECENT", "AuditForm", "BadTime", "audit_page", "audit_query", "overview", "record_row"]
