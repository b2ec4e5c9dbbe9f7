"""The gateway's middleware, its steps outermost first: the audit log, the one error handler, and the SCIM base
URL's own (which app, who is asking, request limits); one middleware, so a request passes one frame, not three.

Every answer under a SCIM base URL is a SCIM body: errors raised anywhere (the router's 404 and 405 too)
become RFC 7644 §3.12 Error bodies here, and nowhere else.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..auth import CannotJudge, Refused
from ..connectors import REQUEST_ID
from ..metrics import AUTH_REFUSED, observe_request
from ..provisioning.notices import collecting
from ..runtime import AppRuntime
from ..scim.errors import ScimError, invalid_value, not_found
from ..scim.failures import failure_reason, scim_error
from ..scim.projection import check_attribute_list_size
from ..store import StoreUnavailable
from .audit import WRITE_OPS, AuditNote
from .body import body_too_large, error_response
from .keys import APPS, AUDIT, AUDIT_NOTE, HUB, RUNTIME, SETTINGS

# An id a caller may give in X-Request-Id: kept only when it is short and plain (it goes into logs and headers).
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{8,128}")
log = logging.getLogger(__name__)
access = logging.getLogger("scim_gateway.access")  # one line per request (gateway/cli/logs.py formats it)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def scim_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The gateway's one middleware, three steps in one frame, outermost first: the audit log (every write and
    every refused authentication recorded with the status finally answered; every request under a base URL
    logged and counted), the one error handler (every failure a SCIM Error body), and, under a SCIM base URL,
    the request's admission (`_admit`: which app, who is asking, the request's limits)."""
    status: int | None = None
    try:
        try:
            check_url_length(request)
            admitted = _admit(request)
            if admitted is None:  # not under a SCIM base URL (or no route at all)
                response = await handler(request)
            else:
                note, runtime = admitted
                note.credential = await _authenticate(request, runtime, note)
                request[RUNTIME] = runtime
                _check_request(request, note)
                with collecting() as notices:
                    note.notices = notices
                    token = REQUEST_ID.set(note.request_id)
                    try:
                        response = await handler(request)
                    finally:
                        REQUEST_ID.reset(token)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = _error_response(request, http_error(request, exc), None)
        except Exception as exc:
            response = _error_response(request, *_failure(request, exc))
        status = response.status
        noted = request.get(AUDIT_NOTE)
        if noted is not None and not response.prepared:
            response.headers["X-Request-Id"] = noted.request_id
        return response
    finally:
        noted = request.get(AUDIT_NOTE)
        if noted is not None:
            if noted.op is not None:
                request.app[AUDIT].write(noted.final(status))
                if noted.op == "auth":  # every refused authentication is audited here, and counted here, once
                    AUTH_REFUSED.labels(noted.app, noted.reason or "error").inc()
            seconds = time.monotonic() - noted.started
            operation = noted.operation
            observe_request(noted.app, operation, status, seconds)
            if access.isEnabledFor(logging.INFO):
                _access_line(request, noted, operation, status, seconds)


def _access_line(request: web.Request, note: AuditNote, operation: str, status: int | None, seconds: float) -> None:
    """One line per request under a base URL (the credential's name, never a secret; ids, not bodies)."""
    ms = round(seconds * 1000, 1)
    fields = {
        "request_id": note.request_id,
        "app": note.app,
        "method": request.method,
        "path": request.rel_url.path,
        "operation": operation,
        "resource_type": note.resource_type,
        "resource_id": note.resource_id,
        "status": status,
        "duration_ms": ms,
        "credential": note.credential,
        "client": note.client,
    }
    access.info(
        "%s %s %s %.1f ms %s", request.method, request.rel_url.path, status, ms, note.request_id, extra={"fields": fields}
    )


def _failure(request: web.Request, exc: Exception) -> tuple[ScimError, str | None]:
    """A failure from anywhere below as the SCIM error it answers, and its reason code for the audit log."""
    reason = failure_reason(exc)
    found = scim_error(exc)
    if found is None:
        log.exception("unexpected error on %s %s", request.method, request.path)
        found = ScimError(500, "internal error; the request may be retried")
    elif isinstance(exc, StoreUnavailable):
        log.error("%s %s: %s", request.method, request.path, exc)
    return found, reason


def _error_response(request: web.Request, error: ScimError, reason: str | None) -> web.Response:
    note = request.get(AUDIT_NOTE)
    if note is not None:
        note.scim_type = error.scim_type
        note.reason = note.reason or reason
    return error_response(error)


def http_error(request: web.Request, exc: web.HTTPException) -> ScimError:
    """aiohttp's own refusals (no route, a method the route lacks, a body past the limit) as SCIM errors."""
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return body_too_large(request, request.app[SETTINGS].limits.max_body_bytes)
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return ScimError(405, f"{request.method} is not allowed here (allowed: {allowed})", headers={"Allow": allowed})
    if isinstance(exc, web.HTTPNotFound):
        runtimes = request.app[APPS]
        known = ", ".join(f"/apps/{name}/scim/v2" for name in sorted(runtimes))
        return not_found(f"no SCIM endpoint at {request.path} (apps are served under {known or '/apps/{app}/scim/v2'})")
    return ScimError(exc.status, exc.reason)


def check_url_length(request: web.Request) -> None:
    """Refuse a request line longer than max_url_bytes with a SCIM 414 (aiohttp's own cap, above it, answers in text/plain)."""
    limit = request.app[SETTINGS].limits.max_url_bytes
    size = len(request.raw_path)
    if size > limit:
        raise ScimError(
            414, f"the request URL is {size} bytes, longer than max_url_bytes {limit}: send long filters by POST .search"
        )


def _admit(request: web.Request) -> tuple[AuditNote, AppRuntime] | None:
    """Under /apps/{app}/scim/v2 (or the hub's): the request's audit note and the app's runtime; None elsewhere."""
    match_info = request.match_info
    name = match_info.get("app") or match_info.get("hub")
    if name is None:
        return None
    runtime = _runtime(request, name)
    note = request[AUDIT_NOTE] = AuditNote(name, request.remote, request.method)
    given = request.headers.get("X-Request-Id")
    if given and _REQUEST_ID.fullmatch(given):
        note.request_id = given  # the caller's id (a proxy's, an IdP's), so every log names the same one
    return note, runtime


async def _authenticate(request: web.Request, runtime: AppRuntime, note: AuditNote) -> str:
    """The caller's credential; a refusal is audited (op "auth") and answered 401, or 503 when keys are lacking."""
    try:
        return await runtime.auth.authenticate(request.headers.get("Authorization", ""))
    except Refused as exc:
        note.op, note.reason = "auth", exc.reason
        raise ScimError(401, exc.detail, headers={"WWW-Authenticate": exc.challenge}) from None
    except CannotJudge as exc:
        note.op, note.reason = "auth", exc.reason
        raise ScimError(503, exc.detail, headers={"Retry-After": str(exc.retry_after)}) from None
    except Exception:
        note.op = "auth"  # keys not to be had, or the unexpected: recorded too
        raise


def _check_request(request: web.Request, note: AuditNote) -> None:
    """What the audit log records of an authenticated request, and the limits every request is held to first."""
    _note_target(request, note)
    if "\x00" in request.path or "\x00" in request.query_string:
        # No id, filter or parameter holds U+0000; PostgreSQL cannot even compare text with it.
        raise invalid_value("the URL holds a NUL character (%00)")
    if request.query_string:
        limit = request.app[SETTINGS].limits.max_attribute_names
        for parameter in ("attributes", "excludedAttributes"):
            # Before anything runs: a write must not happen and then fail on its response's projection.
            check_attribute_list_size(request.query.get(parameter), parameter, limit)


def _runtime(request: web.Request, name: str) -> AppRuntime:
    """The app (or the hub's directory, under /hub/scim/v2) a request under a base URL is for."""
    if request.match_info.get("hub") is not None:
        hub = request.app.get(HUB)
        if hub is None:
            raise not_found("no hub is served (serve --hub FILE)")
        return hub.runtime
    runtime = request.app[APPS].get(name)
    if runtime is None:
        raise not_found(f"no app named {name!r}")
    return runtime


def _note_target(request: web.Request, note: AuditNote) -> None:
    """What the audit log records of this request: every write attempt, whatever its fate; nothing for a read."""
    handler = request.match_info.handler
    note.reads = getattr(handler, "reads", "read")
    kind = getattr(handler, "audited", "resource")
    if kind == "bulk":
        note.op = "bulk"
        return
    op = WRITE_OPS.get(request.method)
    if op is None or kind != "resource":
        return
    runtime = request[RUNTIME]
    endpoint = request.match_info.get("endpoint")
    rtype = runtime.service.find_resource_type(endpoint) if endpoint else None
    note.op, note.resource_type, note.resource_id = op, rtype.name if rtype else None, request.match_info.get("id")


__all__ = ["scim_middleware"]
