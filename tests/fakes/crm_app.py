"""A fake legacy CRM with its own REST API, run as a real aiohttp server on loopback.

Shaped unlike the HR fake on purpose: OAuth2 client-credentials tokens that
expire, people as NESTED JSON ({"person": {"name": {...}}, "contact": {...},
"account": {...}}), opaque cursor pagination, and group membership kept ONLY as
each person's `roles` list (there are no member endpoints). The API lives under
/api/v1; the token endpoint is /oauth/token at the root, as at many vendors.

Strict where a real app is strict, so connector bugs show: unknown or flattened
("person.name.first") keys are 400, an unknown role id in `roles` is 422, a
duplicate username (case-insensitively) or role name is 409, `account.active`
changes only through /deactivate and /activate (a PUT changing it is 400), and
every API call needs a live bearer token (401 otherwise). Tests read and steer `CrmState`
(under `CRM_STATE`): records, token requests, expiring tokens, injected faults.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

API = "/api/v1"
CLIENT_ID = "gateway"
CLIENT_SECRET = "crm-client-secret-0123456789"
SCOPES = frozenset({"users.rw", "roles.rw"})
DEFAULT_LIMIT = 20
MAX_LIMIT = 100

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class TokenRequest:
    """One call to /oauth/token, as the fake saw it."""

    client_id: str | None
    scope: str | None
    method: str  # "post" (client_secret in the form) or "basic" (HTTP Basic)
    granted: bool


@dataclass
class CrmState:
    """Everything the fake CRM holds; tests inspect it and steer it."""

    client_id: str = CLIENT_ID
    client_secret: str = CLIENT_SECRET
    token_ttl: int = 3600  # seconds, the `expires_in` of new tokens
    people: dict[str, dict[str, Any]] = field(default_factory=dict)  # insertion order is list order
    roles: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens: dict[str, float] = field(default_factory=dict)  # access token -> expiry (time.monotonic())
    token_requests: list[TokenRequest] = field(default_factory=list)
    calls: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path?query, status) of every API call
    faults: deque[int] = field(default_factory=deque)  # statuses the next API calls answer instead of working

    # ---------------------------------------------------------------- helpers for tests

    @property
    def tokens_issued(self) -> int:
        return sum(1 for t in self.token_requests if t.granted)

    def expire_tokens(self) -> None:
        """Every token issued so far is expired: the next API call with one of them is 401."""
        for token in self.tokens:
            self.tokens[token] = 0.0

    def person(self, username: str) -> dict[str, Any] | None:
        """The person with this username (case-insensitively), or None."""
        return next((p for p in self.people.values() if p["account"]["username"].lower() == username.lower()), None)

    def role(self, name: str) -> dict[str, Any] | None:
        return next((r for r in self.roles.values() if r["name"].lower() == name.lower()), None)

    def role_names(self, username: str) -> set[str]:
        """The names of the roles the person holds (through their `roles` list)."""
        person = self.person(username)
        assert person is not None, f"no person {username!r} in the CRM"
        return {self.roles[rid]["name"] for rid in person["roles"]}

    def holders(self, role_name: str) -> set[str]:
        """The usernames of the people whose `roles` list names this role."""
        role = self.role(role_name)
        assert role is not None, f"no role {role_name!r} in the CRM"
        return {p["account"]["username"] for p in self.people.values() if role["id"] in p["roles"]}

    def api_calls(self, method: str | None = None, prefix: str = "") -> list[tuple[str, str, int]]:
        return [c for c in self.calls if (method is None or c[0] == method) and c[1].startswith(API + prefix)]


CRM_STATE = web.AppKey("crm_state", CrmState)


def create_crm_app(state: CrmState | None = None) -> web.Application:
    """The fake CRM; its state is `app[CRM_STATE]`."""
    app = web.Application(middlewares=[_auth_middleware])
    app[CRM_STATE] = state or CrmState()
    app.router.add_post("/oauth/token", _token)
    app.router.add_get(f"{API}/people", _list_people)
    app.router.add_post(f"{API}/people", _create_person)
    app.router.add_get(f"{API}/people/{{id}}", _get_person)
    app.router.add_put(f"{API}/people/{{id}}", _put_person)
    app.router.add_delete(f"{API}/people/{{id}}", _delete_person)
    app.router.add_post(f"{API}/people/{{id}}/deactivate", _set_active(False))
    app.router.add_post(f"{API}/people/{{id}}/activate", _set_active(True))
    app.router.add_get(f"{API}/roles", _list_roles)
    app.router.add_post(f"{API}/roles", _create_role)
    app.router.add_get(f"{API}/roles/{{id}}", _get_role)
    app.router.add_put(f"{API}/roles/{{id}}", _put_role)
    app.router.add_delete(f"{API}/roles/{{id}}", _delete_role)
    return app


# ---------------------------------------------------------------- errors, auth, faults


def _error(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status, headers=headers)


class _Problem(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@web.middleware
async def _auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith(API + "/"):
        return await handler(request)
    state = request.app[CRM_STATE]
    response = await _api_call(request, handler, state)
    state.calls.append((request.method, request.path_qs, response.status))
    return response


async def _api_call(request: web.Request, handler: Handler, state: CrmState) -> web.StreamResponse:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return _error(401, "unauthorized", "a bearer token is required", **{"WWW-Authenticate": 'Bearer realm="crm"'})
    expiry = state.tokens.get(token)
    if expiry is None or expiry <= time.monotonic():
        return _error(
            401,
            "invalid_token",
            "the access token is unknown or expired",
            **{"WWW-Authenticate": 'Bearer realm="crm", error="invalid_token"'},
        )
    if state.faults:
        status = state.faults.popleft()
        return _error(status, "injected", f"injected fault {status}")
    try:
        return await handler(request)
    except _Problem as p:
        return _error(p.status, p.code, p.message)


async def _token(request: web.Request) -> web.Response:
    state = request.app[CRM_STATE]
    if request.content_type != "application/x-www-form-urlencoded":
        return _error(400, "invalid_request", "the token request must be form-encoded")
    form = await request.post()
    client_id, client_secret, method = form.get("client_id"), form.get("client_secret"), "post"
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            client_id, _, client_secret = base64.b64decode(encoded).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return _error(400, "invalid_request", "malformed Basic credentials")
        method = "basic"
    scope = form.get("scope")
    record = TokenRequest(
        str(client_id) if client_id is not None else None, str(scope) if scope is not None else None, method, False
    )
    state.token_requests.append(record)
    if form.get("grant_type") != "client_credentials":
        return _error(400, "unsupported_grant_type", "only grant_type=client_credentials is supported")
    if (
        client_id != state.client_id
        or not isinstance(client_secret, str)
        or not secrets.compare_digest(client_secret, state.client_secret)
    ):
        return _error(401, "invalid_client", "client authentication failed", **{"WWW-Authenticate": 'Basic realm="crm"'})
    if scope is not None and not set(str(scope).split()) <= SCOPES:
        return _error(400, "invalid_scope", f"unknown scope (valid: {' '.join(sorted(SCOPES))})")
    token = secrets.token_urlsafe(24)
    state.tokens[token] = time.monotonic() + state.token_ttl
    record.granted = True
    body = {"access_token": token, "token_type": "Bearer", "expires_in": state.token_ttl}
    if scope is not None:
        body["scope"] = scope
    return web.json_response(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


# ---------------------------------------------------------------- bodies


async def _json_object(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise _Problem(415, "unsupported_media_type", "send application/json")
    try:
        body = await request.json()
    except ValueError:
        raise _Problem(400, "bad_json", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise _Problem(400, "bad_body", "the body must be a JSON object")
    return body


def _object(value: Any, where: str, keys: set[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Problem(400, "bad_body", f"{where} must be an object")
    unknown = set(value) - keys
    if unknown:
        raise _Problem(400, "unknown_field", f"unknown field {where}.{sorted(unknown)[0]} (valid: {', '.join(sorted(keys))})")
    return value


def _string(value: Any, where: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _Problem(400, "bad_value", f"{where} must be a string or null")
    return value


def _person_from_body(
    state: CrmState, body: dict[str, Any], pid: str, created: str, active_now: bool | None = None
) -> dict[str, Any]:
    """A complete person from a request body: what the body leaves out is cleared (a full replace).

    `account.active` is set on create only; afterwards it changes through
    /deactivate and /activate, and a PUT may repeat it but not change it.
    """
    top = _object(body, "person record", {"id", "created", "person", "contact", "account", "roles"})
    if top.get("id") not in (None, pid):
        raise _Problem(400, "bad_value", "id does not match the URL")
    person = _object(top.get("person"), "person", {"name", "title"})
    name = _object(person.get("name"), "person.name", {"first", "last"})
    contact = _object(top.get("contact"), "contact", {"email", "phone"})
    account = _object(top.get("account"), "account", {"username", "active"})
    username = _string(account.get("username"), "account.username")
    if not username:
        raise _Problem(400, "missing_field", "account.username is required")
    active = account.get("active")
    if active is None:
        active = True if active_now is None else active_now
    if not isinstance(active, bool):
        raise _Problem(400, "bad_value", "account.active must be true or false")
    if active_now is not None and active != active_now:
        raise _Problem(400, "read_only", "account.active changes only through POST /people/{id}/deactivate or /activate")
    roles = top.get("roles") or []
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise _Problem(400, "bad_value", "roles must be a list of role ids")
    unknown = [r for r in roles if r not in state.roles]
    if unknown:
        raise _Problem(422, "unknown_role", f"no role {unknown[0]!r}")
    clash = state.person(username)
    if clash is not None and clash["id"] != pid:
        raise _Problem(409, "username_taken", f"username {username!r} is taken")
    return {
        "id": pid,
        "created": created,
        "person": {
            "name": {
                "first": _string(name.get("first"), "person.name.first"),
                "last": _string(name.get("last"), "person.name.last"),
            },
            "title": _string(person.get("title"), "person.title"),
        },
        "contact": {
            "email": _string(contact.get("email"), "contact.email"),
            "phone": _string(contact.get("phone"), "contact.phone"),
        },
        "account": {"username": username, "active": active},
        "roles": list(dict.fromkeys(roles)),  # a role held twice is held once
    }


def _role_from_body(state: CrmState, body: dict[str, Any], rid: str, created: str) -> dict[str, Any]:
    top = _object(body, "role record", {"id", "created", "name"})
    if top.get("id") not in (None, rid):
        raise _Problem(400, "bad_value", "id does not match the URL")
    name = _string(top.get("name"), "name")
    if not name:
        raise _Problem(400, "missing_field", "name is required")
    clash = state.role(name)
    if clash is not None and clash["id"] != rid:
        raise _Problem(409, "name_taken", f"role name {name!r} is taken")
    return {"id": rid, "created": created, "name": name}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ---------------------------------------------------------------- paging


def _page(request: web.Request, items: list[dict[str, Any]]) -> web.Response:
    """One page of `items` in the CRM's shape: {"items": [...], "next_cursor": "..." | null}."""
    try:
        limit = int(request.query.get("limit", DEFAULT_LIMIT))
    except ValueError:
        raise _Problem(400, "bad_value", "limit must be an integer") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise _Problem(400, "bad_value", f"limit must be between 1 and {MAX_LIMIT}")
    start = 0
    cursor = request.query.get("cursor")
    if cursor:
        try:
            kind, _, offset = base64.urlsafe_b64decode(cursor.encode()).decode().partition(":")
            start = int(offset)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise _Problem(400, "bad_cursor", "unknown cursor") from None
        if kind != "o" or start < 0:
            raise _Problem(400, "bad_cursor", "unknown cursor")
    end = start + limit
    nxt = base64.urlsafe_b64encode(f"o:{end}".encode()).decode() if end < len(items) else None
    return web.json_response({"items": items[start:end], "next_cursor": nxt})


# ---------------------------------------------------------------- people


def _get_or_404(table: dict[str, dict[str, Any]], request: web.Request, what: str) -> dict[str, Any]:
    record = table.get(request.match_info["id"])
    if record is None:
        raise _Problem(404, "not_found", f"no {what} {request.match_info['id']!r}")
    return record


async def _list_people(request: web.Request) -> web.Response:
    state = request.app[CRM_STATE]
    people = list(state.people.values())
    unknown = set(request.query) - {"cursor", "limit", "username", "email"}
    if unknown:
        raise _Problem(
            400, "bad_query", f"unknown query parameter {sorted(unknown)[0]!r} (valid: cursor, limit, username, email)"
        )
    if "username" in request.query:
        wanted = request.query["username"].lower()
        people = [p for p in people if p["account"]["username"].lower() == wanted]
    if "email" in request.query:
        wanted = request.query["email"].lower()
        people = [p for p in people if (p["contact"]["email"] or "").lower() == wanted]
    return _page(request, people)


async def _create_person(request: web.Request) -> web.Response:
    state = request.app[CRM_STATE]
    body = await _json_object(request)
    if body.get("id") is not None:
        raise _Problem(400, "bad_value", "id is assigned by the CRM")
    pid = f"p-{uuid.uuid4()}"
    record = _person_from_body(state, body, pid, _now())
    state.people[pid] = record
    return web.json_response(record, status=201, headers={"Location": f"{API}/people/{pid}"})


async def _get_person(request: web.Request) -> web.Response:
    return web.json_response(_get_or_404(request.app[CRM_STATE].people, request, "person"))


async def _put_person(request: web.Request) -> web.Response:
    state = request.app[CRM_STATE]
    current = _get_or_404(state.people, request, "person")
    record = _person_from_body(
        state, await _json_object(request), current["id"], current["created"], current["account"]["active"]
    )
    state.people[current["id"]] = record
    return web.json_response(record)


async def _delete_person(request: web.Request) -> web.Response:
    state = request.app[CRM_STATE]
    del state.people[_get_or_404(state.people, request, "person")["id"]]
    return web.Response(status=204)


def _set_active(active: bool) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        record = _get_or_404(request.app[CRM_STATE].people, request, "person")
        record["account"]["active"] = active
        return web.json_response(record)

    return handler


# ---------------------------------------------------------------- roles


async def _list_roles(request: web.Request) -> web.Response:
    state = request.app[CRM_STATE]
    unknown = set(request.query) - {"cursor", "limit", "name"}
    if unknown:
        raise _Problem(400, "bad_query", f"unknown query parameter {sorted(unknown)[0]!r} (valid: cursor, limit, name)")
    roles = list(state.roles.values())
    if "name" in request.query:
        roles = [r for r in roles if r["name"].lower() == request.query["name"].lower()]
    return _page(request, roles)


async def _create_role(request: web.Request) -> web.Response:
    state = request.app[CRM_STATE]
    body = await _json_object(request)
    if body.get("id") is not None:
        raise _Problem(400, "bad_value", "id is assigned by the CRM")
    rid = f"r-{uuid.uuid4()}"
    record = _role_from_body(state, body, rid, _now())
    state.roles[rid] = record
    return web.json_response(record, status=201, headers={"Location": f"{API}/roles/{rid}"})


async def _get_role(request: web.Request) -> web.Response:
    return web.json_response(_get_or_404(request.app[CRM_STATE].roles, request, "role"))


async def _put_role(request: web.Request) -> web.Response:
    state = request.app[CRM_STATE]
    current = _get_or_404(state.roles, request, "role")
    record = _role_from_body(state, await _json_object(request), current["id"], current["created"])
    state.roles[current["id"]] = record
    return web.json_response(record)


async def _delete_role(request: web.Request) -> web.Response:
    state = request.app[CRM_STATE]
    rid = _get_or_404(state.roles, request, "role")["id"]
    del state.roles[rid]
    # Like the real CRM's foreign key: a deleted role leaves every person's list.
    for person in state.people.values():
        if rid in person["roles"]:
            person["roles"] = [r for r in person["roles"] if r != rid]
    return web.Response(status=204)
