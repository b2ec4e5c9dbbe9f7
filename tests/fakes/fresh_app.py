"""A fake IT service desk modelled on the Freshservice API v2, run as a real aiohttp server on loopback.

    app = create_fresh_app()                 # web.Application; its state: app[FRESH_STATE]
    async with serve(app) as base_url:      # "http://127.0.0.1:PORT/api/v2"
        ...

It follows Freshservice's documented API v2 (https://api.freshservice.com/v2/: "Authentication", "Pagination",
"Error Handling" / "Error codes", "Agents" and "Agent Groups"). Of the two user/group pairs Freshservice has,
this is agents and agent groups, because an agent group keeps its members ON THE GROUP RECORD as a list of
agent ids (`members`), which a PUT of the group replaces; requester groups instead have member calls
(POST/DELETE /requester_groups/{id}/members/{requester_id}).

    Auth        HTTP Basic with the API key as the user name and "X" as the password (the docs' `curl -u
                api_key:X`); otherwise 401
                {"code": "invalid_credentials", "message": "You have to be logged in to perform this action."}.
    Pages       `page` (from 1) and `per_page` (default 30, at most 100); when more follow, the answer carries
                `link: <https://.../api/v2/agents?page=2&per_page=100>;rel="next"` (RFC 8288), and no link on
                the last page.
    Agents      GET    /agents?page=&per_page=&email=&active=   {"agents": [...]}; `email` is an exact,
                       case-insensitive filter, `active=true|false` narrows (without it every agent is listed)
                POST   /agents  {flat fields}                   201 {"agent": {...}}
                GET    /agents/{id}                             {"agent": {...}}; 404 with an empty body
                PUT    /agents/{id} {flat fields}               {"agent": {...}}: a partial update (only the
                       fields sent change)
                DELETE /agents/{id}                             204: DEACTIVATES the agent ("Deactivate an
                       Agent"); the record stays, `active: false`, in its groups
                PUT    /agents/{id}/reactivate                  {"agent": {...}} with `active: true`
                DELETE /agents/{id}/forget                      204: deletes the agent for good ("Forget an
                       Agent"), and out of every group
    Groups      GET /groups?page=&per_page= {"groups": [...]}; POST /groups 201 {"group"}; GET /groups/{id};
                PUT /groups/{id} (partial; a `members` list REPLACES the members); DELETE /groups/{id} 204
    Records     agent: {id, first_name, last_name, occasional, job_title, email, work_phone_number,
                mobile_phone_number, department_ids, reporting_manager_id, time_zone, language, location_id,
                roles, member_of (read-only: the groups listing the agent), custom_fields, has_logged_in,
                active (read-only), created_at, updated_at}; group: {id, name, description, escalate_to,
                unassigned_for, business_hours_id, members, observers, leaders, restricted, approval_required,
                auto_ticket_assign, created_at, updated_at}. Ids are integers (Freshservice's are 11-digit).
    Errors      400 {"description": "Validation failed", "errors": [{"field": "email", "message": "...",
                "code": "invalid_value"}]} with the codes missing_field, invalid_value, datatype_mismatch
                (a string where a number or a list of numbers is due, e.g. `members: ["7"]`), invalid_field
                (an unknown or read-only field, e.g. `active` or `id`: "Unexpected/invalid field in request");
                409 the same body with code duplicate_value ("It already exists"): a taken email, a taken
                group name. A body that is not JSON: 400 code invalid_json.

Requests are flat JSON objects, as in every request example of the docs; answers wrap the record
(`{"agent": {...}}`, `{"agents": [...]}`). JSON null is taken for an optional field (it clears it) and refused
(datatype_mismatch) for first_name, email and name.

Where it departs from Freshservice, on purpose or for want of a documented answer:

  * `roles` is optional here: a new agent gets the account's default role ({"role_id": 1, "assignment_scope":
    "entire_helpdesk"}) when none is sent (the docs list roles among an agent's attributes; an account may need
    one given, which a mapping can send as a computed field).
  * DELETE /agents/{id} of an agent already deactivated answers 204 again (the docs do not say).
  * No workspaces (`workspace_id`), no rate-limit headers unless a test scripts a 429 with `FreshState.fault`.

Tests inspect `FreshState` (agents, groups, calls, bodies) and script answers with `FreshState.fault`.
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
API_KEY = "fs-api-key-0123456789abcdef"
PASSWORD = "X"
DEFAULT_PER_PAGE = 30
MAX_PER_PAGE = 100
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
DEFAULT_ROLE = {"role_id": 1, "assignment_scope": "entire_helpdesk", "groups": []}

# Writable agent fields and their JSON types; the rest of the record is read-only.
AGENT_TEXT: tuple[str, ...] = ("first_name", "last_name", "job_title", "email", "work_phone_number", "mobile_phone_number")
AGENT_TEXT += ("time_zone", "language", "address", "background_information", "signature")
AGENT_WRITABLE = set(AGENT_TEXT) | {"occasional", "department_ids", "reporting_manager_id", "location_id", "roles"}
AGENT_WRITABLE |= {"custom_fields", "scoreboard_level_id", "can_see_all_tickets_from_associated_departments"}
AGENT_REQUIRED_TEXT = {"first_name", "email"}
GROUP_TEXT = ("name", "description", "unassigned_for")
GROUP_ID_LISTS = ("members", "observers", "leaders")
GROUP_WRITABLE = set(GROUP_TEXT) | set(GROUP_ID_LISTS) | {"escalate_to", "business_hours_id"}
GROUP_WRITABLE |= {"restricted", "approval_required", "auto_ticket_assign"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Fault:
    """The next `times` calls matching method and path (a regex over the path after /api/v2) get this answer."""

    method: str
    path: str
    status: int = 500
    body: str = '{"description": "Internal server error", "errors": []}'
    headers: dict[str, str] = field(default_factory=dict)
    times: int = 1


@dataclass
class FreshState:
    api_key: str = API_KEY
    agents: dict[int, dict[str, Any]] = field(default_factory=dict)
    groups: dict[int, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)  # (method, path?query) of every call
    bodies: list[tuple[str, str, Any]] = field(default_factory=list)  # (method, path, JSON body) of every write
    faults: list[Fault] = field(default_factory=list)
    next_id: int = 21000418000

    def fault(self, method: str, path: str, **kw: Any) -> Fault:
        f = Fault(method, path, **kw)
        self.faults.append(f)
        return f

    # ---------------------------------------------------------------- helpers for tests (and for seeding)

    def agent(self, email: str) -> dict[str, Any] | None:
        """The agent with this email (case-insensitively), as the API shows it (`member_of` up to date)."""
        found = next((a for a in self.agents.values() if (a["email"] or "").casefold() == email.casefold()), None)
        return self._view(found) if found is not None else None

    def group(self, name: str) -> dict[str, Any] | None:
        return next((g for g in self.groups.values() if g["name"].casefold() == name.casefold()), None)

    def member_emails(self, group_name: str) -> list[str]:
        group = self.group(group_name)
        assert group is not None, f"Freshservice has no group {group_name!r}"
        return sorted(self.agents[i]["email"] for i in group["members"])

    def add_agent(self, email: str, first_name: str = "Agent", **fields: Any) -> dict[str, Any]:
        """An agent made in Freshservice itself (an admin's own work, or before the gateway came)."""
        aid = self._id()
        agent = {"id": aid, "first_name": first_name, "last_name": None, "occasional": False, "job_title": None}
        agent |= {"email": email, "work_phone_number": None, "mobile_phone_number": None, "department_ids": []}
        agent |= {"reporting_manager_id": None, "address": None, "time_zone": "Eastern Time (US & Canada)"}
        agent |= {"time_format": "12h", "language": "en", "location_id": None, "background_information": None}
        agent |= {"scoreboard_level_id": None, "signature": None, "roles": [dict(DEFAULT_ROLE)], "custom_fields": {}}
        agent |= {"can_see_all_tickets_from_associated_departments": False, "has_logged_in": False, "active": True}
        agent |= fields | {"created_at": _now(), "updated_at": _now(), "member_of": []}
        self.agents[aid] = agent
        return self._view(agent)

    def add_group(self, name: str, members: list[int] | None = None, **fields: Any) -> dict[str, Any]:
        gid = self._id()
        group = {"id": gid, "name": name, "description": None, "escalate_to": None, "unassigned_for": "30m"}
        group |= {"business_hours_id": None, "members": list(members or []), "observers": [], "leaders": []}
        group |= {"restricted": False, "approval_required": False, "auto_ticket_assign": False}
        group |= fields | {"created_at": _now(), "updated_at": _now()}
        self.groups[gid] = group
        return group

    def _view(self, agent: dict[str, Any]) -> dict[str, Any]:
        """The agent as the API answers it: `member_of` from the groups that list it."""
        agent["member_of"] = sorted(g["id"] for g in self.groups.values() if agent["id"] in g["members"])
        return agent

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id


FRESH_STATE = web.AppKey("fresh_state", FreshState)
BODY = web.RequestKey("fresh_body", dict[str, Any])


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(field_name: str, message: str, code: str, status: int = 400) -> web.Response:
    """Freshservice's validation answer, naming the field."""
    return web.json_response(
        {"description": "Validation failed", "errors": [{"field": field_name, "message": message, "code": code}]},
        status=status,
    )


def _not_found() -> web.Response:
    return web.Response(status=404)


def _type_name(kind: type) -> str:
    return {str: "String", bool: "Boolean", int: "Positive Integer", list: "Array", dict: "key/value pair"}[kind]


def _check_types(fields: dict[str, Any], text: tuple[str, ...], required: set[str]) -> web.Response | None:
    for name in text:
        if name in fields:
            value = fields[name]
            if value is None and name not in required:
                continue
            if not isinstance(value, str):
                return _error(name, "It should be a/an String", "datatype_mismatch")
            if name in required and not value.strip():
                return _error(name, "It should not be blank", "invalid_value")
    return None


def _id_list(fields: dict[str, Any], name: str) -> web.Response | list[int] | None:
    if name not in fields:
        return None
    value = fields[name]
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        return _error(name, "It should contain elements of type Positive Integer only", "datatype_mismatch")
    return value


class _Fresh:
    def __init__(self, state: FreshState) -> None:
        self.s = state

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path.removeprefix(API)
        self.s.calls.append((request.method, path + (f"?{request.query_string}" if request.query_string else "")))
        body: Any = None
        if request.method in ("POST", "PUT") and request.can_read_body:
            text = await request.text()
            try:
                body = await request.json()
            except ValueError:
                self.s.bodies.append((request.method, path, text))
                return _error("", "Request body has invalid json format", "invalid_json")
            self.s.bodies.append((request.method, path, body))
        for fault in self.s.faults:
            if fault.method == request.method and re.fullmatch(fault.path, path) and fault.times > 0:
                fault.times -= 1
                return web.Response(status=fault.status, text=fault.body, content_type="application/json", headers=fault.headers)
        if not self._authenticated(request):
            return web.json_response(
                {"code": "invalid_credentials", "message": "You have to be logged in to perform this action."}, status=401
            )
        if body is not None and not isinstance(body, dict):
            return _error("", "Request body has invalid json format", "invalid_json")
        request[BODY] = body or {}
        return await handler(request)

    def _authenticated(self, request: web.Request) -> bool:
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return user == self.s.api_key and password == PASSWORD

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        body = request[BODY]  # read (and recorded) by the middleware
        return dict(body)

    # ---------------------------------------------------------------- pages

    def _page(self, request: web.Request, key: str, items: list[Any]) -> web.Response:
        try:
            page = int(request.query.get("page", "1"))
            per_page = int(request.query.get("per_page", str(DEFAULT_PER_PAGE)))
        except ValueError:
            return _error("page", "It should be a/an Positive Integer", "datatype_mismatch")
        if page < 1:
            return _error("page", "It should be a/an Positive Integer", "invalid_value")
        if not 1 <= per_page <= MAX_PER_PAGE:
            return _error("per_page", f"Has to be greater than 0 and less than or equal to {MAX_PER_PAGE}", "invalid_value")
        chunk = items[(page - 1) * per_page : page * per_page]
        headers = {}
        if page * per_page < len(items):
            headers["link"] = f'<{request.url.update_query(page=page + 1, per_page=per_page)}>;rel="next"'
        return web.json_response({key: chunk}, headers=headers)

    # ---------------------------------------------------------------- agents

    def _agent(self, request: web.Request) -> dict[str, Any] | None:
        raw = request.match_info["id"]
        return self.s.agents.get(int(raw)) if raw.isdigit() else None

    def _check_agent(self, fields: dict[str, Any], aid: int | None) -> web.Response | None:
        unknown = sorted(set(fields) - AGENT_WRITABLE)
        if unknown:
            return _error(unknown[0], "Unexpected/invalid field in request", "invalid_field")
        problem = _check_types(fields, AGENT_TEXT, AGENT_REQUIRED_TEXT)
        if problem is not None:
            return problem
        if "email" in fields:
            email = fields["email"]
            if not EMAIL.fullmatch(email):
                return _error("email", "It should be in the 'valid email address' format", "invalid_value")
            other = self.s.agent(email)
            if other is not None and other["id"] != aid:
                return _error("email", "It already exists", "duplicate_value", status=409)
        for name in ("occasional", "can_see_all_tickets_from_associated_departments"):
            if name in fields and not isinstance(fields[name], bool):
                return _error(name, "It should be a/an Boolean", "datatype_mismatch")
        for name in ("reporting_manager_id", "location_id", "scoreboard_level_id"):
            value = fields.get(name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                return _error(name, "It should be a/an Positive Integer", "datatype_mismatch")
        if fields.get("reporting_manager_id") is not None and fields["reporting_manager_id"] not in self.s.agents:
            return _error("reporting_manager_id", "There is no agent matching the given reporting_manager_id", "invalid_value")
        ids = _id_list(fields, "department_ids")
        if isinstance(ids, web.Response):
            return ids
        if "roles" in fields:
            roles = fields["roles"]
            if not isinstance(roles, list) or not all(isinstance(r, dict) and isinstance(r.get("role_id"), int) for r in roles):
                return _error("roles", "It should contain elements of type key/value pair only", "datatype_mismatch")
        if "custom_fields" in fields and not isinstance(fields["custom_fields"], dict):
            return _error("custom_fields", "It should be a/an key/value pair", "datatype_mismatch")
        return None

    async def list_agents(self, request: web.Request) -> web.Response:
        agents = sorted(self.s.agents.values(), key=lambda a: a["id"])
        if "email" in request.query:
            wanted = request.query["email"].casefold()
            agents = [a for a in agents if (a["email"] or "").casefold() == wanted]
        if "active" in request.query:
            if request.query["active"] not in ("true", "false"):
                return _error("active", "It should be one of these values: 'true,false'", "invalid_value")
            agents = [a for a in agents if a["active"] == (request.query["active"] == "true")]
        return self._page(request, "agents", [self.s._view(a) for a in agents])

    async def create_agent(self, request: web.Request) -> web.Response:
        fields = await self._body(request)
        for name in ("first_name", "email"):
            if name not in fields:
                return _error(name, "It should be a/an String", "missing_field")
        problem = self._check_agent(fields, None)
        if problem is not None:
            return problem
        email, first_name = fields.pop("email"), fields.pop("first_name")
        return web.json_response({"agent": self.s.add_agent(email, first_name, **fields)}, status=201)

    async def get_agent(self, request: web.Request) -> web.Response:
        agent = self._agent(request)
        return web.json_response({"agent": self.s._view(agent)}) if agent is not None else _not_found()

    async def update_agent(self, request: web.Request) -> web.Response:
        agent = self._agent(request)
        if agent is None:
            return _not_found()
        fields = await self._body(request)
        problem = self._check_agent(fields, agent["id"])
        if problem is not None:
            return problem
        agent.update(fields)
        agent["updated_at"] = _now()
        return web.json_response({"agent": self.s._view(agent)})

    async def deactivate_agent(self, request: web.Request) -> web.Response:
        agent = self._agent(request)
        if agent is None:
            return _not_found()
        agent["active"] = False
        agent["updated_at"] = _now()
        return web.Response(status=204)

    async def reactivate_agent(self, request: web.Request) -> web.Response:
        agent = self._agent(request)
        if agent is None:
            return _not_found()
        agent["active"] = True
        agent["updated_at"] = _now()
        return web.json_response({"agent": self.s._view(agent)})

    async def forget_agent(self, request: web.Request) -> web.Response:
        agent = self._agent(request)
        if agent is None:
            return _not_found()
        del self.s.agents[agent["id"]]
        for group in self.s.groups.values():
            for name in GROUP_ID_LISTS:
                if agent["id"] in group[name]:
                    group[name].remove(agent["id"])
        return web.Response(status=204)

    # ---------------------------------------------------------------- groups

    def _group(self, request: web.Request) -> dict[str, Any] | None:
        raw = request.match_info["id"]
        return self.s.groups.get(int(raw)) if raw.isdigit() else None

    def _check_group(self, fields: dict[str, Any], gid: int | None) -> web.Response | None:
        unknown = sorted(set(fields) - GROUP_WRITABLE)
        if unknown:
            return _error(unknown[0], "Unexpected/invalid field in request", "invalid_field")
        problem = _check_types(fields, GROUP_TEXT, {"name"})
        if problem is not None:
            return problem
        if "name" in fields:
            other = self.s.group(fields["name"])
            if other is not None and other["id"] != gid:
                return _error("name", "It already exists", "duplicate_value", status=409)
        for name in GROUP_ID_LISTS:
            ids = _id_list(fields, name)
            if isinstance(ids, web.Response):
                return ids
            missing = [i for i in ids or [] if i not in self.s.agents]
            if missing:
                return _error(name, f"There are no agents matching the ids: {', '.join(map(str, missing))}", "invalid_value")
        for name in ("restricted", "approval_required", "auto_ticket_assign"):
            if name in fields and not isinstance(fields[name], bool):
                return _error(name, "It should be a/an Boolean", "datatype_mismatch")
        return None

    async def list_groups(self, request: web.Request) -> web.Response:
        return self._page(request, "groups", sorted(self.s.groups.values(), key=lambda g: g["id"]))

    async def create_group(self, request: web.Request) -> web.Response:
        fields = await self._body(request)
        if "name" not in fields:
            return _error("name", "It should be a/an String", "missing_field")
        problem = self._check_group(fields, None)
        if problem is not None:
            return problem
        name = fields.pop("name")
        members = list(dict.fromkeys(fields.pop("members", [])))
        return web.json_response({"group": self.s.add_group(name, members, **fields)}, status=201)

    async def get_group(self, request: web.Request) -> web.Response:
        group = self._group(request)
        return web.json_response({"group": group}) if group is not None else _not_found()

    async def update_group(self, request: web.Request) -> web.Response:
        group = self._group(request)
        if group is None:
            return _not_found()
        fields = await self._body(request)
        problem = self._check_group(fields, group["id"])
        if problem is not None:
            return problem
        for name in GROUP_ID_LISTS:
            if name in fields:
                fields[name] = list(dict.fromkeys(fields[name]))  # the list given replaces the group's
        group.update(fields)
        group["updated_at"] = _now()
        return web.json_response({"group": group})

    async def delete_group(self, request: web.Request) -> web.Response:
        group = self._group(request)
        if group is None:
            return _not_found()
        del self.s.groups[group["id"]]
        return web.Response(status=204)


def create_fresh_app(state: FreshState | None = None) -> web.Application:
    """The fake Freshservice; its state is `app[FRESH_STATE]`."""
    state = state or FreshState()
    fresh = _Fresh(state)
    app = web.Application(middlewares=[fresh.middleware])
    app[FRESH_STATE] = state
    app.router.add_get(f"{API}/agents", fresh.list_agents)
    app.router.add_post(f"{API}/agents", fresh.create_agent)
    app.router.add_get(f"{API}/agents/{{id}}", fresh.get_agent)
    app.router.add_put(f"{API}/agents/{{id}}", fresh.update_agent)
    app.router.add_delete(f"{API}/agents/{{id}}", fresh.deactivate_agent)
    app.router.add_put(f"{API}/agents/{{id}}/reactivate", fresh.reactivate_agent)
    app.router.add_delete(f"{API}/agents/{{id}}/forget", fresh.forget_agent)
    app.router.add_get(f"{API}/groups", fresh.list_groups)
    app.router.add_post(f"{API}/groups", fresh.create_group)
    app.router.add_get(f"{API}/groups/{{id}}", fresh.get_group)
    app.router.add_put(f"{API}/groups/{{id}}", fresh.update_group)
    app.router.add_delete(f"{API}/groups/{{id}}", fresh.delete_group)
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
