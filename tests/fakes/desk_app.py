"""A fake help desk modelled on the Zendesk Support API, run as a real aiohttp server on loopback.

    app = create_desk_app()                  # web.Application; its state: app[DESK_STATE]
    async with serve(app) as base_url:      # "http://127.0.0.1:PORT/api/v2"
        ...

It follows Zendesk's documented API (developer.zendesk.com/api-reference: "Users", "Groups",
"Pagination" (offset pagination), "Security and authentication" (API token), "Errors") where the
REST connector's brief does not ask otherwise:

    Auth        `Authorization: Basic base64("{email}/token:{api_token}")`; without it 401
                {"error": "Couldn't authenticate you"}.
    Users       GET /users?page=&per_page=            {"users": [...], "next_page", "previous_page", "count"}
                GET /users/search?query=&external_id=  the same shape; `query` matches email or name,
                                                       fuzzily (contains, case-insensitively); external_id exactly
                                                       (case-insensitively)
                POST /users {"user": {...}}            201 {"user": {...}}
                GET /users/{id}                        {"user": {...}}; 404 {"error": "RecordNotFound", "description": "Not found"}
                PUT|PATCH /users/{id} {"user": {...}}  a partial update (Zendesk's Rails routes take either verb)
                DELETE /users/{id}                     200 {"user": {..., "active": false}}
    Groups      GET /groups?page=&per_page=, POST /groups {"group": {...}}, GET/PUT/PATCH/DELETE /groups/{id}
                (DELETE answers 204)
    Records     user: {id, url, name, email, phone, external_id, role, active (read-only), suspended,
                user_fields: {job_title, department}, created_at, updated_at}; group: {id, url, name,
                description, default, deleted, created_at, updated_at}. Values the record lacks are null.
    Errors      422 {"error": "RecordInvalid", "description": "Record validation errors",
                "details": {"<field>": [{"description": "<Field>: ...", "error": "<Code>"}]}}: an invalid
                or missing name, an invalid email, a duplicate email or external_id ("DuplicateValue"; Zendesk
                answers a taken value with 422, not 409), a duplicate group name, an unknown user field.

Where it departs from Zendesk, on purpose (each a shape the connector must also handle):

  * JSON null is refused anywhere in a request body: 400 {"error": "InvalidValue", "description":
    "<path>: null is not accepted"} (Zendesk itself takes null for optional fields; some apps do not).
  * Group members. Zendesk keeps them as group_membership records with ids of their own, and removing one
    needs the membership's id (DELETE /group_memberships/{id}), which a member call cannot name. This fake
    offers member calls by user id instead, and answers the member list as bare ids, with a page count:
        GET    /groups/{id}/user_ids?page=&per_page=   {"user_ids": [7, 9], "page": 1, "page_count": 1, "count": 2}
        PUT    /groups/{id}/users/{user_id}            204 (already a member: 204 too); 422 when no such user
        DELETE /groups/{id}/users/{user_id}            204; 404 when not a member
  * DELETE /users/{id} removes the user at once (Zendesk soft-deletes, and purges later), and out of every group.

Tests inspect `DeskState` (users, groups, members, calls, bodies) and script answers with `DeskState.fault`.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

API = "/api/v2"
AGENT_EMAIL = "admin@desk.example"
API_TOKEN = "desk-api-token-0123456789"
USER_FIELDS = {"name", "email", "phone", "external_id", "role", "suspended", "user_fields"}
CUSTOM_FIELDS = {"job_title", "department"}
GROUP_FIELDS = {"name", "description", "default"}
ROLES = {"end-user", "agent", "admin"}
MAX_PER_PAGE = 100
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Fault:
    """The next `times` calls matching method and path (a regex over the path after /api/v2) get this answer."""

    method: str
    path: str
    status: int = 500
    body: str = '{"error": "InternalError"}'
    times: int = 1


@dataclass
class DeskState:
    email: str = AGENT_EMAIL
    api_token: str = API_TOKEN
    users: dict[int, dict[str, Any]] = field(default_factory=dict)
    groups: dict[int, dict[str, Any]] = field(default_factory=dict)
    members: dict[int, list[int]] = field(default_factory=dict)  # group id -> user ids, in the order added
    calls: list[tuple[str, str]] = field(default_factory=list)  # (method, path?query) of every call
    bodies: list[tuple[str, str, Any]] = field(default_factory=list)  # (method, path, JSON body) of every write
    faults: list[Fault] = field(default_factory=list)
    next_id: int = 360000001

    def fault(self, method: str, path: str, **kw: Any) -> Fault:
        f = Fault(method, path, **kw)
        self.faults.append(f)
        return f

    # ---------------------------------------------------------------- helpers for tests (and for seeding)

    def user(self, email: str) -> dict[str, Any] | None:
        """The user with this email, or else this external_id (case-insensitively)."""
        for key in ("email", "external_id"):
            found = next((u for u in self.users.values() if (u[key] or "").casefold() == email.casefold()), None)
            if found is not None:
                return found
        return None

    def group(self, name: str) -> dict[str, Any] | None:
        return next((g for g in self.groups.values() if g["name"].casefold() == name.casefold()), None)

    def member_emails(self, group_name: str) -> list[str]:
        group = self.group(group_name)
        assert group is not None, f"the desk has no group {group_name!r}"
        return sorted(self.users[uid]["email"] for uid in self.members[group["id"]])

    def add_user(self, **fields: Any) -> dict[str, Any]:
        """A user made in the app itself (an agent's own work, or before the gateway came)."""
        uid = self._id()
        custom = {f: None for f in CUSTOM_FIELDS} | fields.pop("user_fields", {})
        user = (
            {"id": uid, "url": f"https://desk.example{API}/users/{uid}.json", "name": None, "email": None}
            | {"phone": None, "external_id": None, "role": "end-user", "active": True, "suspended": False}
            | fields
            | {"user_fields": custom, "created_at": _now(), "updated_at": _now()}
        )
        self.users[uid] = user
        return user

    def add_group(self, name: str, description: str = "") -> dict[str, Any]:
        gid = self._id()
        group = {"id": gid, "url": f"https://desk.example{API}/groups/{gid}.json", "name": name}
        group |= {"description": description, "default": False, "deleted": False, "created_at": _now(), "updated_at": _now()}
        self.groups[gid] = group
        self.members[gid] = []
        return group

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id


DESK_STATE = web.AppKey("desk_state", DeskState)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _invalid(name: str, description: str, code: str = "InvalidValue") -> web.Response:
    """Zendesk's validation answer: 422 naming the field."""
    return web.json_response(
        {
            "error": "RecordInvalid",
            "description": "Record validation errors",
            "details": {name: [{"description": f"{name.replace('_', ' ').capitalize()}: {description}", "error": code}]},
        },
        status=422,
    )


def _not_found() -> web.Response:
    return web.json_response({"error": "RecordNotFound", "description": "Not found"}, status=404)


def _null_at(value: Any, path: str = "") -> str | None:
    if value is None:
        return path or "(body)"
    if isinstance(value, dict):
        return next((p for k, v in value.items() if (p := _null_at(v, f"{path}.{k}" if path else k))), None)
    if isinstance(value, list):
        return next((p for i, v in enumerate(value) if (p := _null_at(v, f"{path}[{i}]"))), None)
    return None


class _Desk:
    def __init__(self, state: DeskState) -> None:
        self.s = state

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path.removeprefix(API)
        self.s.calls.append((request.method, path + (f"?{request.query_string}" if request.query_string else "")))
        body: Any = {}
        if request.method in ("POST", "PUT", "PATCH") and request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                self.s.bodies.append((request.method, path, await request.text()))
                return web.json_response({"error": "InvalidJSON", "description": "the body is not JSON"}, status=400)
            self.s.bodies.append((request.method, path, body))
        for fault in self.s.faults:
            if fault.method == request.method and re.fullmatch(fault.path, path) and fault.times > 0:
                fault.times -= 1
                return web.Response(status=fault.status, text=fault.body, content_type="application/json")
        if not self._authenticated(request):
            return web.json_response({"error": "Couldn't authenticate you"}, status=401)
        where = _null_at(body)
        if where is not None:
            return web.json_response({"error": "InvalidValue", "description": f"{where}: null is not accepted"}, status=400)
        return await handler(request)

    def _authenticated(self, request: web.Request) -> bool:
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Basic":
            return False
        try:
            user, _, secret = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return user == f"{self.s.email}/token" and secret == self.s.api_token

    # ---------------------------------------------------------------- pages

    def _page(self, request: web.Request, key: str, items: list[Any]) -> web.Response:
        try:
            page = max(1, int(request.query.get("page", "1")))
            per_page = min(MAX_PER_PAGE, max(1, int(request.query.get("per_page", "100"))))
        except ValueError:
            return web.json_response({"error": "InvalidPaginationParameter"}, status=400)
        chunk = items[(page - 1) * per_page : page * per_page]
        url = request.url.with_query({k: v for k, v in request.query.items() if k not in ("page", "per_page")})
        more = page * per_page < len(items)
        return web.json_response(
            {
                key: chunk,
                "next_page": str(url.update_query(page=page + 1, per_page=per_page)) if more else None,
                "previous_page": str(url.update_query(page=page - 1, per_page=per_page)) if page > 1 else None,
                "count": len(items),
            }
        )

    # ---------------------------------------------------------------- users

    def _user(self, request: web.Request) -> dict[str, Any] | None:
        raw = request.match_info["id"].removesuffix(".json")
        return self.s.users.get(int(raw)) if raw.isdigit() else None

    def _check_user(self, fields: dict[str, Any], uid: int | None) -> web.Response | None:
        unknown = set(fields) - USER_FIELDS - {"id", "url", "active", "created_at", "updated_at"}
        if unknown:
            return _invalid(sorted(unknown)[0], "is not a user property", "UnknownProperty")
        if "name" in fields and (not isinstance(fields["name"], str) or not fields["name"].strip()):
            return _invalid("name", "cannot be blank", "BlankValue")
        if "email" in fields:
            email = fields["email"]
            if not isinstance(email, str) or (email and not EMAIL.fullmatch(email)):  # "": no email (end-users need none)
                return _invalid("email", f"{email} is not properly formatted", "InvalidFormat")
            other = next((u for u in self.s.users.values() if email and (u["email"] or "").casefold() == email.casefold()), None)
            if other is not None and other["id"] != uid:
                return _invalid("email", f"{email} is already being used by another user", "DuplicateValue")
        if isinstance(fields.get("external_id"), str):
            other = next(
                (u for u in self.s.users.values() if (u["external_id"] or "").casefold() == fields["external_id"].casefold()),
                None,
            )
            if other is not None and other["id"] != uid:
                return _invalid("external_id", "has already been taken", "DuplicateValue")
        if "role" in fields and fields["role"] not in ROLES:
            return _invalid("role", "is not included in the list", "InvalidValue")
        if "suspended" in fields and not isinstance(fields["suspended"], bool):
            return _invalid("suspended", "is not a boolean", "InvalidValue")
        for name in ("phone", "external_id"):
            if name in fields and not isinstance(fields[name], str):
                return _invalid(name, "is not a string", "InvalidValue")
        custom = fields.get("user_fields", {})
        if not isinstance(custom, dict):
            return _invalid("user_fields", "is not an object", "InvalidValue")
        for name, value in custom.items():
            if name not in CUSTOM_FIELDS:
                return _invalid(f"user_fields.{name}", "is not a user field of this account", "UnknownProperty")
            if not isinstance(value, str):
                return _invalid(f"user_fields.{name}", "is not text", "InvalidValue")
        return None

    @staticmethod
    def _envelope(body: Any, key: str) -> dict[str, Any] | web.Response:
        if not isinstance(body, dict) or not isinstance(body.get(key), dict):
            return web.json_response(
                {"error": "InvalidEndpoint", "description": f'the body must be {{"{key}": {{...}}}}'}, status=400
            )
        return body[key]

    async def list_users(self, request: web.Request) -> web.Response:
        return self._page(request, "users", sorted(self.s.users.values(), key=lambda u: u["id"]))

    async def search_users(self, request: web.Request) -> web.Response:
        users = sorted(self.s.users.values(), key=lambda u: u["id"])
        if "external_id" in request.query:
            wanted = request.query["external_id"].casefold()
            users = [u for u in users if (u["external_id"] or "").casefold() == wanted]
        if "query" in request.query:
            needle = request.query["query"].casefold()
            users = [u for u in users if needle in (u["email"] or "").casefold() or needle in (u["name"] or "").casefold()]
        return self._page(request, "users", users)

    async def create_user(self, request: web.Request) -> web.Response:
        fields = self._envelope(await request.json(), "user")
        if isinstance(fields, web.Response):
            return fields
        if "name" not in fields:
            return _invalid("name", "cannot be blank", "BlankValue")
        problem = self._check_user(fields, None)
        if problem is not None:
            return problem
        fields = {k: v for k, v in fields.items() if k not in ("id", "url", "active", "created_at", "updated_at")}
        return web.json_response({"user": self.s.add_user(**fields)}, status=201)

    async def get_user(self, request: web.Request) -> web.Response:
        user = self._user(request)
        return web.json_response({"user": user}) if user is not None else _not_found()

    async def update_user(self, request: web.Request) -> web.Response:
        user = self._user(request)
        if user is None:
            return _not_found()
        fields = self._envelope(await request.json(), "user")
        if isinstance(fields, web.Response):
            return fields
        problem = self._check_user(fields, user["id"])
        if problem is not None:
            return problem
        for name, value in fields.items():
            if name == "user_fields":
                user["user_fields"].update(value)
            elif name not in ("id", "url", "active", "created_at", "updated_at"):
                user[name] = value
        user["updated_at"] = _now()
        return web.json_response({"user": user})

    async def delete_user(self, request: web.Request) -> web.Response:
        user = self._user(request)
        if user is None:
            return _not_found()
        del self.s.users[user["id"]]
        for ids in self.s.members.values():
            if user["id"] in ids:
                ids.remove(user["id"])
        return web.json_response({"user": user | {"active": False}})

    # ---------------------------------------------------------------- groups

    def _group(self, request: web.Request) -> dict[str, Any] | None:
        raw = request.match_info["id"].removesuffix(".json")
        return self.s.groups.get(int(raw)) if raw.isdigit() else None

    def _check_group(self, fields: dict[str, Any], gid: int | None) -> web.Response | None:
        unknown = set(fields) - GROUP_FIELDS - {"id", "url", "deleted", "created_at", "updated_at"}
        if unknown:
            return _invalid(sorted(unknown)[0], "is not a group property", "UnknownProperty")
        if "name" in fields:
            if not isinstance(fields["name"], str) or not fields["name"].strip():
                return _invalid("name", "cannot be blank", "BlankValue")
            other = self.s.group(fields["name"])
            if other is not None and other["id"] != gid:
                return _invalid("name", "has already been taken", "DuplicateValue")
        if "description" in fields and not isinstance(fields["description"], str):
            return _invalid("description", "is not a string", "InvalidValue")
        return None

    async def list_groups(self, request: web.Request) -> web.Response:
        return self._page(request, "groups", sorted(self.s.groups.values(), key=lambda g: g["id"]))

    async def create_group(self, request: web.Request) -> web.Response:
        fields = self._envelope(await request.json(), "group")
        if isinstance(fields, web.Response):
            return fields
        if "name" not in fields:
            return _invalid("name", "cannot be blank", "BlankValue")
        problem = self._check_group(fields, None)
        if problem is not None:
            return problem
        group = self.s.add_group(fields["name"], fields.get("description", ""))
        return web.json_response({"group": group}, status=201)

    async def get_group(self, request: web.Request) -> web.Response:
        group = self._group(request)
        return web.json_response({"group": group}) if group is not None else _not_found()

    async def update_group(self, request: web.Request) -> web.Response:
        group = self._group(request)
        if group is None:
            return _not_found()
        fields = self._envelope(await request.json(), "group")
        if isinstance(fields, web.Response):
            return fields
        problem = self._check_group(fields, group["id"])
        if problem is not None:
            return problem
        group.update({k: v for k, v in fields.items() if k in GROUP_FIELDS})
        group["updated_at"] = _now()
        return web.json_response({"group": group})

    async def delete_group(self, request: web.Request) -> web.Response:
        group = self._group(request)
        if group is None:
            return _not_found()
        del self.s.groups[group["id"]]
        del self.s.members[group["id"]]
        return web.Response(status=204)

    # ---------------------------------------------------------------- members (by user id: see the docstring)

    async def list_member_ids(self, request: web.Request) -> web.Response:
        group = self._group(request)
        if group is None:
            return _not_found()
        ids = self.s.members[group["id"]]
        try:
            page = max(1, int(request.query.get("page", "1")))
            per_page = min(MAX_PER_PAGE, max(1, int(request.query.get("per_page", "100"))))
        except ValueError:
            return web.json_response({"error": "InvalidPaginationParameter"}, status=400)
        pages = max(1, -(-len(ids) // per_page))
        chunk = ids[(page - 1) * per_page : page * per_page]
        return web.json_response({"user_ids": chunk, "page": page, "page_count": pages, "count": len(ids)})

    def _member(self, request: web.Request) -> int | None:
        raw = request.match_info["user_id"]
        return int(raw) if raw.isdigit() else None

    async def add_member(self, request: web.Request) -> web.Response:
        group = self._group(request)
        if group is None:
            return _not_found()
        uid = self._member(request)
        if uid is None or uid not in self.s.users:
            return _invalid("user_id", "is not a user of this account", "InvalidValue")
        if uid not in self.s.members[group["id"]]:
            self.s.members[group["id"]].append(uid)
        return web.Response(status=204)

    async def remove_member(self, request: web.Request) -> web.Response:
        group = self._group(request)
        if group is None:
            return _not_found()
        uid = self._member(request)
        if uid is None or uid not in self.s.members[group["id"]]:
            return _not_found()
        self.s.members[group["id"]].remove(uid)
        return web.Response(status=204)


def create_desk_app(state: DeskState | None = None) -> web.Application:
    """The fake help desk; its state is `app[DESK_STATE]`."""
    state = state or DeskState()
    desk = _Desk(state)
    app = web.Application(middlewares=[desk.middleware])
    app[DESK_STATE] = state
    app.router.add_get(f"{API}/users", desk.list_users)
    app.router.add_get(f"{API}/users/search", desk.search_users)
    app.router.add_post(f"{API}/users", desk.create_user)
    app.router.add_get(f"{API}/users/{{id}}", desk.get_user)
    app.router.add_put(f"{API}/users/{{id}}", desk.update_user)
    app.router.add_patch(f"{API}/users/{{id}}", desk.update_user)
    app.router.add_delete(f"{API}/users/{{id}}", desk.delete_user)
    app.router.add_get(f"{API}/groups", desk.list_groups)
    app.router.add_post(f"{API}/groups", desk.create_group)
    app.router.add_get(f"{API}/groups/{{id}}", desk.get_group)
    app.router.add_put(f"{API}/groups/{{id}}", desk.update_group)
    app.router.add_patch(f"{API}/groups/{{id}}", desk.update_group)
    app.router.add_delete(f"{API}/groups/{{id}}", desk.delete_group)
    app.router.add_get(f"{API}/groups/{{id}}/user_ids", desk.list_member_ids)
    app.router.add_put(f"{API}/groups/{{id}}/users/{{user_id}}", desk.add_member)
    app.router.add_delete(f"{API}/groups/{{id}}/users/{{user_id}}", desk.remove_member)
    return app


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Run the app on a free loopback port; yields its API base URL (…/api/v2)."""
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url(API))
    finally:
        await server.close()
