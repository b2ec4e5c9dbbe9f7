"""The admin web page under `/admin`: read-only, server-rendered (jinja2), its own credentials (gateway/admin_auth.py).

Only GET and HEAD: nothing on it changes anything, so it needs no CSRF token and no JavaScript. Off (the
router's 404) when no admin credential is configured. A refused attempt is audited as an app's is (`op: auth`).

- `/admin`: every app's health, breaker, backlog, counts, last reconcile; the latest failures and operations.
- `/admin/audit`: the audit log searched by user, app, operation, status and time, paged, newest first.
- `/admin/people?who=...`: one person's accounts in every app (provisioning/review.py's footprint).
- `/admin/apps/{app}/reconcile`: the app's last reconcile report; `/admin/review.csv`: the access review.
- `/admin/status.json`: the overview as JSON.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import jinja2
from aiohttp import web

from ..admin_auth import AdminAuth
from ..audit_search import AuditQuery, BadTime
from ..auth import Refused
from ..hub.directory import HUB_APP
from ..provisioning.review import access_review, footprint, write_review_csv
from ..store import StoreUnavailable
from .admin_data import (
    OPS,
    PAGE_SIZE,
    RECENT,
    AuditForm,
    audit_page,
    audit_query,
    hub_deliveries,
    overview,
    record_row,
)
from .keys import ADMIN_AUTH, ADMIN_TEMPLATES, ADMIN_USER, APPS, AUDIT, STORE

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ALLOWED = "GET, HEAD"
_HEADERS = {
    "Cache-Control": "no-store",
    # Inline CSS only: no script, no frame, nothing loaded from elsewhere.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def create_templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("gateway.http", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env


def render(request: web.Request, name: str, status: int = 200, **context: Any) -> web.Response:
    template = request.app[ADMIN_TEMPLATES].get_template(name)
    text = template.render(user=request.get(ADMIN_USER, ""), apps=sorted(request.app[APPS].keys()), **context)
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8", headers=_HEADERS)


def _message(request: web.Request, status: int, title: str, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    response = render(request, "admin/message.html", status, title=title, detail=detail)
    response.headers.update(headers or {})
    return response


def admin_page(handler: Handler) -> Handler:
    """GET/HEAD only, with admin credentials; a refusal audited; the store down answers 503."""

    async def page(request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return _message(request, 405, "Method not allowed", "The admin page only reads.", {"Allow": ALLOWED})
        try:
            request[ADMIN_USER] = request.app[ADMIN_AUTH].authenticate(request.headers.get("Authorization", ""))
        except Refused as exc:
            if exc.reason != "no_credentials":  # a browser's first request, before its login prompt: no attempt yet
                _audit_refusal(request, exc)
            return _message(request, 401, "Sign in", exc.detail, {"WWW-Authenticate": exc.challenge})
        if "\x00" in request.path or "\x00" in request.query_string:
            # No name or id holds U+0000, and PostgreSQL cannot even compare text with it.
            return _message(request, 400, "Bad request", "The URL holds a NUL character (%00).")
        try:
            return await handler(request)
        except StoreUnavailable:
            return _message(request, 503, "Store unavailable", "The correlation store does not answer; retry later.")

    return page


def _audit_refusal(request: web.Request, exc: Refused) -> None:
    """The same line an app's refused authentication writes, its `area` saying it was the admin page."""
    request.app[AUDIT].write(
        {
            "app": None,
            "area": "admin",
            "credential": None,
            "client": request.remote,
            "method": request.method,
            "op": "auth",
            "resource_type": None,
            "id": None,
            "status": 401,
            "reason": exc.reason,
            "request_id": uuid.uuid4().hex,
            "pid": os.getpid(),
        }
    )


@admin_page
async def overview_page(request: web.Request) -> web.StreamResponse:
    data = await overview(request.app)
    failures = await audit_page(request.app, AuditQuery(only_failed=True), 1, RECENT)
    recent = await audit_page(request.app, AuditQuery(), 1, RECENT)
    return render(
        request,
        "admin/overview.html",
        data=data,
        failures=[record_row(r) for r in failures.records],
        recent=[record_row(r) for r in recent.records],
    )


@admin_page
async def status_json(request: web.Request) -> web.StreamResponse:
    return web.json_response(await overview(request.app), headers={"Cache-Control": "no-store"})


@admin_page
async def audit_search_page(request: web.Request) -> web.StreamResponse:
    form = AuditForm.from_query(request.query)
    try:
        query = await audit_query(request.app, form)
    except (BadTime, ValueError) as exc:
        return render(request, "admin/audit.html", 400, form=form, ops=OPS, rows=[], more=False, error=str(exc), skipped=0)
    page = await audit_page(request.app, query, form.page)
    rows = [record_row(r) for r in page.records]
    return render(request, "admin/audit.html", form=form, ops=OPS, rows=rows, more=page.more, error=None, skipped=page.skipped)


@admin_page
async def person_page(request: web.Request) -> web.StreamResponse:
    who = request.query.get("who", "").strip()
    found = await footprint(request.app[STORE], who) if who else None
    person = found.person if found is not None else None
    rows: list[dict[str, Any]] = []
    deliveries: list[dict[str, Any]] = []
    if person is not None:
        query = AuditQuery(ids={a.scim_id for a in person.accounts}, user_given=True)
        rows = [record_row(r) for r in (await audit_page(request.app, query, 1, RECENT)).records]
        deliveries = await hub_deliveries(request.app, [a.scim_id for a in person.accounts if a.app == HUB_APP])
    return render(
        request, "admin/person.html", who=who, person=person, rows=rows, deliveries=deliveries, form=AuditForm(user=who)
    )


@admin_page
async def reconcile_page(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]  # not {app}: that one the SCIM base URL's middleware takes as its own
    if name not in request.app[APPS]:
        return _message(request, 404, "No such app", f"No app named {name!r} is served here.")
    saved = await request.app[STORE].last_report(name)
    findings: list[tuple[str, list[str], list[list[str]]]] = []
    if saved is not None:
        for kind in ("orphans", "vanished", "drift", "membership", "fixes", "skipped"):
            items = [i for i in saved.report.get(kind) or [] if isinstance(i, dict)]
            columns = sorted({k for i in items for k in i})
            findings.append((kind, columns, [[_cell(i.get(c)) for c in columns] for i in items]))
    return render(request, "admin/reconcile.html", app=name, saved=saved, findings=findings)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_cell(v)}" for k, v in value.items())
    return str(value)


@admin_page
async def review_csv(request: web.Request) -> web.StreamResponse:
    out = io.StringIO()
    write_review_csv(await access_review(request.app[STORE]), out)
    return web.Response(
        text=out.getvalue(),
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": 'attachment; filename="access-review.csv"', "Cache-Control": "no-store"},
    )


@admin_page
async def not_found(request: web.Request) -> web.StreamResponse:
    return _message(request, 404, "Not found", f"Nothing at {request.path}.")


def setup_admin(app: web.Application, auth: AdminAuth) -> None:
    """The admin routes, when the admin page has credentials (else none: /admin is the router's 404)."""
    app[ADMIN_AUTH] = auth
    app[ADMIN_TEMPLATES] = create_templates()
    router = app.router
    for path in ("/admin", "/admin/"):
        router.add_route("*", path, overview_page)
    router.add_route("*", "/admin/status.json", status_json)
    router.add_route("*", "/admin/audit", audit_search_page)
    router.add_route("*", "/admin/people", person_page)
    router.add_route("*", "/admin/apps/{name}/reconcile", reconcile_page)
    router.add_route("*", "/admin/review.csv", review_csv)
    router.add_route("*", "/admin/{tail:.*}", not_found)


__all__ = ["PAGE_SIZE", "setup_admin"]
