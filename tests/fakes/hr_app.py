"""A fake legacy HR app with its own REST API, run as a real aiohttp server on loopback.

    app = create_hr_app(api_key="k")        # web.Application; its state: app[HR_STATE]
    async with serve(app) as base_url:     # "http://127.0.0.1:PORT/api"
        ...

API (JSON, under /api, every call needs the header `X-API-Key`):

    GET    /users?page=&per_page=&login=      {"data": [...], "page", "per_page", "total"}; login: case-insensitive equality
    POST   /users                             201 the user; 409 when the login is taken (case-insensitively); with an
                                              Idempotency-Key header seen before: 201 the record that key made
    GET    /users/{id}                        the user; 404
    PATCH  /users/{id}                        the changed fields; 404, 409
    PUT    /users/{id}                        the whole user; 404, 409
    DELETE /users/{id}                        204 (and out of every group); 404
    POST   /users/{id}/disable | /enable      status "disabled" / "enabled"
    GET    /groups?page=&per_page=&name=      like users
    POST/GET/PATCH/DELETE /groups[/{id}]      like users; name unique case-insensitively
    GET    /groups/{id}/members?page=&per_page=   {"data": [{"user_id", "login"}], ...}
    POST   /groups/{id}/members {"user_id"}   201; 409 when already a member; 422 when no such user
    DELETE /groups/{id}/members/{user_id}     204; 404 when not a member

Users: {id (int), login, first_name, last_name, email, title, department, status: "enabled" | "disabled"}.
Groups: {id (int), name, description}. Tests inspect `HrState` and script faults with `HrState.fault`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

USER_FIELDS = {"login", "first_name", "last_name", "email", "title", "department", "status"}
GROUP_FIELDS = {"name", "description"}
STATUSES = {"enabled", "disabled"}
MAX_PER_PAGE = 100


@dataclass
class Fault:
    """One scripted answer: to the next `times` calls matching method and path (a regex over the path after /api)."""

    method: str
    path: str
    status: int | None = 500  # None: answer normally (after the delay)
    body: str = '{"error": "internal error"}'
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    times: int = 1
    late: bool = False  # with status None: do the call at once, answer only after the delay (it lands, the caller gave up)
    hold: asyncio.Event | None = None  # wait for the test to set it before answering (a call held in flight)
    garble: str | None = None  # with status None: do the call, then answer this body instead (one the gateway cannot read)
    unless: str | None = None  # a request header that exempts a call (a test reading the app behind the gateway's back)


@dataclass
class HrState:
    api_key: str
    users: dict[int, dict[str, Any]] = field(default_factory=dict)
    groups: dict[int, dict[str, Any]] = field(default_factory=dict)
    members: dict[int, list[int]] = field(default_factory=dict)  # group id -> user ids, in the order added
    calls: list[tuple[str, str]] = field(default_factory=list)  # (method, path with query) of every call
    bodies: list[tuple[str, str, Any]] = field(default_factory=list)  # (method, path, JSON body) of every write
    request_ids: list[str | None] = field(default_factory=list)  # the X-Request-Id of every call
    faults: list[Fault] = field(default_factory=list)
    next_user: int = 1
    made_by_key: dict[str, tuple[str, int]] = field(default_factory=dict)  # Idempotency-Key -> (users|groups, id)
    next_group: int = 1

    def fault(self, method: str, path: str, **kw: Any) -> Fault:
        f = Fault(method, path, **kw)
        self.faults.append(f)
        return f

    def user_by_login(self, login: str) -> dict[str, Any] | None:
        return next((u for u in self.users.values() if u["login"].casefold() == login.casefold()), None)

    def group_by_name(self, name: str) -> dict[str, Any] | None:
        return next((g for g in self.groups.values() if g["name"].casefold() == name.casefold()), None)

    def member_logins(self, group_name: str) -> list[str]:
        group = self.group_by_name(group_name)
        assert group is not None, f"no group {group_name!r}"
        return sorted(self.users[uid]["login"] for uid in self.members[group["id"]])


HR_STATE = web.AppKey("hr_state", HrState)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _int(text: str) -> int | None:
    return int(text) if re.fullmatch(r"[1-9][0-9]{0,17}", text) else None


async def _object(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "the body is not JSON")
    if not isinstance(body, dict):
        return _error(400, "the body is not a JSON object")
    return body


def _page(request: web.Request, items: list[dict[str, Any]]) -> web.Response:
    try:
        page = max(1, int(request.query.get("page", "1")))
        per_page = min(MAX_PER_PAGE, max(1, int(request.query.get("per_page", "20"))))
    except ValueError:
        return _error(400, "page and per_page are numbers")
    chunk = items[(page - 1) * per_page : page * per_page]
    return web.json_response({"data": chunk, "page": page, "per_page": per_page, "total": len(items)})


class _Hr:
    def __init__(self, state: HrState) -> None:
        self.s = state

    # ------------------------------------------------------------ middleware

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path.removeprefix("/api")
        self.s.calls.append((request.method, path + (f"?{request.query_string}" if request.query_string else "")))
        self.s.request_ids.append(request.headers.get("X-Request-Id"))
        if request.method in ("POST", "PUT", "PATCH") and request.can_read_body:
            try:
                self.s.bodies.append((request.method, path, await request.json()))
            except ValueError:
                self.s.bodies.append((request.method, path, await request.text()))
        for fault in self.s.faults:
            exempt = fault.unless is not None and fault.unless in request.headers
            if fault.method == request.method and re.fullmatch(fault.path, path) and fault.times > 0 and not exempt:
                fault.times -= 1
                if fault.garble is not None:
                    done = await handler(request)
                    return web.Response(status=done.status, text=fault.garble, content_type=fault.content_type)
                if fault.late:
                    answer = await handler(request)
                    await asyncio.sleep(fault.delay)
                    return answer
                if fault.delay:
                    await asyncio.sleep(fault.delay)
                if fault.hold is not None:
                    await fault.hold.wait()
                if fault.status is not None:
                    return web.Response(
                        status=fault.status, text=fault.body, content_type=fault.content_type, headers=fault.headers
                    )
                break
        if request.headers.get("X-API-Key") != self.s.api_key:
            return _error(401, "missing or wrong API key")
        return await handler(request)

    # ------------------------------------------------------------ users

    def _check_user(self, body: dict[str, Any], uid: int | None) -> web.Response | None:
        unknown = set(body) - USER_FIELDS - {"id"}
        if unknown:
            return _error(422, f"unknown fields: {', '.join(sorted(unknown))}")
        if "id" in body and body["id"] != uid:
            return _error(422, "id cannot change")
        for name, value in body.items():
            if name != "id" and value is not None and not isinstance(value, str):
                return _error(422, f"{name} must be a string")
        if "login" in body:
            if not body["login"]:
                return _error(422, "login is required")
            other = self.s.user_by_login(body["login"])
            if other is not None and other["id"] != uid:
                return _error(409, "login already taken")
        if body.get("status") is not None and body["status"] not in STATUSES:
            return _error(422, "status must be enabled or disabled")
        return None

    async def list_users(self, request: web.Request) -> web.Response:
        users = sorted(self.s.users.values(), key=lambda u: u["id"])
        if "login" in request.query:
            users = [u for u in users if u["login"].casefold() == request.query["login"].casefold()]
        return _page(request, users)

    def _made_before(self, request: web.Request, kind: str) -> web.Response | None:
        """The record an earlier create with this Idempotency-Key made (a create sent twice makes one record)."""
        made = self.s.made_by_key.get(request.headers.get("Idempotency-Key", ""))
        if made is None or made[0] != kind:
            return None
        record = (self.s.users if kind == "users" else self.s.groups).get(made[1])
        return None if record is None else web.json_response(record, status=201)

    def _remember(self, request: web.Request, kind: str, rid: int) -> None:
        key = request.headers.get("Idempotency-Key")
        if key:
            self.s.made_by_key[key] = (kind, rid)

    async def create_user(self, request: web.Request) -> web.Response:
        body = await _object(request)
        if isinstance(body, web.Response):
            return body
        again = self._made_before(request, "users")
        if again is not None:
            return again
        if not body.get("login"):
            return _error(422, "login is required")
        problem = self._check_user(body, None)
        if problem is not None:
            return problem
        user = {f: None for f in USER_FIELDS} | {"status": "enabled"} | body | {"id": self.s.next_user}
        self.s.next_user += 1
        self.s.users[user["id"]] = user
        self._remember(request, "users", user["id"])
        return web.json_response(user, status=201)

    def _user(self, request: web.Request) -> dict[str, Any] | None:
        uid = _int(request.match_info["id"])
        return self.s.users.get(uid) if uid is not None else None

    async def get_user(self, request: web.Request) -> web.Response:
        user = self._user(request)
        return web.json_response(user) if user is not None else _error(404, "no such user")

    async def write_user(self, request: web.Request) -> web.Response:
        user = self._user(request)
        if user is None:
            return _error(404, "no such user")
        body = await _object(request)
        if isinstance(body, web.Response):
            return body
        if request.method == "PUT" and not body.get("login"):
            return _error(422, "login is required")
        problem = self._check_user(body, user["id"])
        if problem is not None:
            return problem
        if request.method == "PUT":
            user.clear()
            user.update({f: None for f in USER_FIELDS} | {"status": "enabled"} | body | {"id": _int(request.match_info["id"])})
        else:
            user.update(body)
        return web.json_response(user)

    async def delete_user(self, request: web.Request) -> web.Response:
        user = self._user(request)
        if user is None:
            return _error(404, "no such user")
        del self.s.users[user["id"]]
        for ids in self.s.members.values():
            if user["id"] in ids:
                ids.remove(user["id"])
        return web.Response(status=204)

    async def set_status(self, request: web.Request) -> web.Response:
        user = self._user(request)
        if user is None:
            return _error(404, "no such user")
        user["status"] = "disabled" if request.match_info["action"] == "disable" else "enabled"
        return web.json_response(user)

    # ------------------------------------------------------------ groups

    def _check_group(self, body: dict[str, Any], gid: int | None) -> web.Response | None:
        unknown = set(body) - GROUP_FIELDS - {"id"}
        if unknown:
            return _error(422, f"unknown fields: {', '.join(sorted(unknown))}")
        if "name" in body:
            if not isinstance(body["name"], str) or not body["name"]:
                return _error(422, "name is required")
            other = self.s.group_by_name(body["name"])
            if other is not None and other["id"] != gid:
                return _error(409, "a group with this name exists")
        return None

    def _group(self, request: web.Request) -> dict[str, Any] | None:
        gid = _int(request.match_info["id"])
        return self.s.groups.get(gid) if gid is not None else None

    async def list_groups(self, request: web.Request) -> web.Response:
        groups = sorted(self.s.groups.values(), key=lambda g: g["id"])
        if "name" in request.query:
            groups = [g for g in groups if g["name"].casefold() == request.query["name"].casefold()]
        return _page(request, groups)

    async def create_group(self, request: web.Request) -> web.Response:
        body = await _object(request)
        if isinstance(body, web.Response):
            return body
        again = self._made_before(request, "groups")
        if again is not None:
            return again
        if not body.get("name"):
            return _error(422, "name is required")
        problem = self._check_group(body, None)
        if problem is not None:
            return problem
        group = {"description": None} | body | {"id": self.s.next_group}
        self.s.next_group += 1
        self.s.groups[group["id"]] = group
        self.s.members[group["id"]] = []
        self._remember(request, "groups", group["id"])
        return web.json_response(group, status=201)

    async def get_group(self, request: web.Request) -> web.Response:
        group = self._group(request)
        return web.json_response(group) if group is not None else _error(404, "no such group")

    async def patch_group(self, request: web.Request) -> web.Response:
        group = self._group(request)
        if group is None:
            return _error(404, "no such group")
        body = await _object(request)
        if isinstance(body, web.Response):
            return body
        problem = self._check_group(body, group["id"])
        if problem is not None:
            return problem
        group.update(body)
        return web.json_response(group)

    async def delete_group(self, request: web.Request) -> web.Response:
        group = self._group(request)
        if group is None:
            return _error(404, "no such group")
        del self.s.groups[group["id"]]
        del self.s.members[group["id"]]
        return web.Response(status=204)

    async def list_members(self, request: web.Request) -> web.Response:
        group = self._group(request)
        if group is None:
            return _error(404, "no such group")
        items = [{"user_id": uid, "login": self.s.users[uid]["login"]} for uid in self.s.members[group["id"]]]
        return _page(request, items)

    async def add_member(self, request: web.Request) -> web.Response:
        group = self._group(request)
        if group is None:
            return _error(404, "no such group")
        body = await _object(request)
        if isinstance(body, web.Response):
            return body
        raw = body.get("user_id")
        uid = raw if isinstance(raw, int) and not isinstance(raw, bool) else _int(raw) if isinstance(raw, str) else None
        if uid is None or uid not in self.s.users:
            return _error(422, "no such user")
        if uid in self.s.members[group["id"]]:
            return _error(409, "already a member")
        self.s.members[group["id"]].append(uid)
        return web.json_response({"user_id": uid}, status=201)

    async def remove_member(self, request: web.Request) -> web.Response:
        group = self._group(request)
        if group is None:
            return _error(404, "no such group")
        uid = _int(request.match_info["user_id"])
        if uid is None or uid not in self.s.members[group["id"]]:
            return _error(404, "not a member")
        self.s.members[group["id"]].remove(uid)
        return web.Response(status=204)


def create_hr_app(api_key: str = "hr-api-key-0123456789") -> web.Application:
    """The fake HR app; its state is `app[HR_STATE]`."""
    state = HrState(api_key=api_key)
    hr = _Hr(state)
    app = web.Application(middlewares=[hr.middleware])
    app[HR_STATE] = state
    app.router.add_get("/api/users", hr.list_users)
    app.router.add_post("/api/users", hr.create_user)
    app.router.add_get("/api/users/{id}", hr.get_user)
    app.router.add_patch("/api/users/{id}", hr.write_user)
    app.router.add_put("/api/users/{id}", hr.write_user)
    app.router.add_delete("/api/users/{id}", hr.delete_user)
    app.router.add_post("/api/users/{id}/{action:disable|enable}", hr.set_status)
    app.router.add_get("/api/groups", hr.list_groups)
    app.router.add_post("/api/groups", hr.create_group)
    app.router.add_get("/api/groups/{id}", hr.get_group)
    app.router.add_patch("/api/groups/{id}", hr.patch_group)
    app.router.add_delete("/api/groups/{id}", hr.delete_group)
    app.router.add_get("/api/groups/{id}/members", hr.list_members)
    app.router.add_post("/api/groups/{id}/members", hr.add_member)
    app.router.add_delete("/api/groups/{id}/members/{user_id}", hr.remove_member)
    return app


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Run the app on a free loopback port; yields its API base URL (…/api)."""
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("/api"))
    finally:
        await server.close()
