"""A fake in-house staff directory built with Django REST framework, run as a real aiohttp server on loopback.

    app = create_staff_app()                 # web.Application; its state: app[STAFF_STATE]
    async with serve(app) as base_url:      # "http://127.0.0.1:PORT/api"
        ...

Modelled on what a Django REST framework app answers with DRF's documented defaults (django-rest-framework.org,
API guide: "Authentication" (TokenAuthentication), "Pagination" (LimitOffsetPagination), "Generic views" /
"ViewSets" (a ModelViewSet behind a DefaultRouter, so every path ends in "/"), "Serializer fields" and
"Serializer relations" (their validation messages), "Exceptions" (the `{"detail": ...}` bodies)), over a
legacy MySQL table brought in with `inspectdb`, so `is_active` is a TINYINT: the integer 0 or 1.

    Auth        `Authorization: Token <key>`; otherwise 401 {"detail": "Authentication credentials were not
                provided."} or {"detail": "Invalid token."}, with `WWW-Authenticate: Token`.
    Employees   GET    /employees/?limit=&offset=&username=&email=&teams=   {"count", "next", "previous", "results"};
                       the filters are django-filter's exact (case-sensitive) lookups
                POST   /employees/          201 the employee
                GET    /employees/{id}/     the employee; 404 {"detail": "Not found."}
                PUT    /employees/{id}/     the whole employee (`username` required; read-only fields ignored)
                DELETE /employees/{id}/     204
    Teams       GET /teams/?limit=&offset=&name=, POST /teams/, GET|PUT|DELETE /teams/{code}/ (like employees);
                the team's `code` is its primary key, a slug the app makes from the name at creation (read-only)
    PATCH       405 {"detail": "Method \\"PATCH\\" not allowed."}: the viewsets allow GET, POST, PUT, DELETE only.

    Employee    {id, url, username, first_name, last_name, email, job_title, is_active: 0 | 1,
                 teams: [team codes], date_joined (read-only)}: text fields are NOT NULL in the table (blank is "").
    Team        {code, url, name, description}

Validation errors are DRF's: 400 with each field's messages, `{"username": ["employee with this username already
exists."]}`, `{"email": ["Enter a valid email address."]}`, `{"job_title": ["This field may not be null."]}`,
`{"is_active": ["\\"2\\" is not a valid choice."]}`, `{"teams": ["Object with code=x does not exist."]}`,
`{"unknown": ...}` is ignored (DRF ignores unknown keys). A taken username or team name is 400, not 409.
Group membership lives only on the employee (`teams`, a many-to-many by code): there are no member calls.

Tests inspect `StaffState` (employees, teams, calls, bodies) and script answers with `StaffState.fault`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

API = "/api"
API_KEY = "9944b09199c62bcf9418ad846dd0e4bbdfc6ee4b"
TEXT_FIELDS = ("username", "first_name", "last_name", "email", "job_title")
PAGE_SIZE = 50
MAX_LIMIT = 100
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Fault:
    """The next `times` calls matching method and path (a regex over the path after /api) get this answer."""

    method: str
    path: str
    status: int = 500
    body: str = "<h1>Server Error (500)</h1>"
    content_type: str = "text/html"
    times: int = 1


@dataclass
class StaffState:
    api_key: str = API_KEY
    employees: dict[int, dict[str, Any]] = field(default_factory=dict)
    teams: dict[str, dict[str, Any]] = field(default_factory=dict)  # code -> team
    calls: list[tuple[str, str]] = field(default_factory=list)
    bodies: list[tuple[str, str, Any]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    next_id: int = 1
    origin: str = "http://testserver"  # the host part of `url` fields; set from each request

    def fault(self, method: str, path: str, **kw: Any) -> Fault:
        f = Fault(method, path, **kw)
        self.faults.append(f)
        return f

    # ---------------------------------------------------------------- helpers for tests (and for seeding)

    def employee(self, username: str) -> dict[str, Any] | None:
        return next((e for e in self.employees.values() if e["username"] == username), None)

    def team(self, name: str) -> dict[str, Any] | None:
        return next((t for t in self.teams.values() if t["name"] == name), None)

    def team_members(self, name: str) -> list[str]:
        team = self.team(name)
        assert team is not None, f"the staff app has no team {name!r}"
        return sorted(e["username"] for e in self.employees.values() if team["code"] in e["teams"])

    def add_employee(self, username: str, **fields: Any) -> dict[str, Any]:
        """An employee made in the app itself (HR's own work, or before the gateway came)."""
        eid = self.next_id
        self.next_id += 1
        employee = {"id": eid, "url": f"{self.origin}{API}/employees/{eid}/"} | {f: "" for f in TEXT_FIELDS}
        employee |= {"is_active": 1, "teams": []} | fields | {"username": username, "date_joined": _now()}
        self.employees[eid] = employee
        return employee

    def add_team(self, name: str, description: str = "") -> dict[str, Any]:
        code = base = _slugify(name) or "team"
        n = 1
        while code in self.teams:
            n += 1
            code = f"{base}-{n}"
        team = {"code": code, "url": f"{self.origin}{API}/teams/{code}/", "name": name, "description": description}
        self.teams[code] = team
        return team


STAFF_STATE = web.AppKey("staff_state", StaffState)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _slugify(value: str) -> str:
    """Django's slugify."""
    value = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode("ascii")
    value = re.sub(r"[^\w\s-]", "", value.lower())
    return re.sub(r"[-\s]+", "-", value).strip("-_")


def _detail(status: int, text: str, **headers: str) -> web.Response:
    return web.json_response({"detail": text}, status=status, headers=headers)


class _Staff:
    def __init__(self, state: StaffState) -> None:
        self.s = state

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path.removeprefix(API)
        self.s.origin = f"{request.scheme}://{request.host}"
        self.s.calls.append((request.method, path + (f"?{request.query_string}" if request.query_string else "")))
        if request.method in ("POST", "PUT", "PATCH") and request.can_read_body:
            try:
                self.s.bodies.append((request.method, path, await request.json()))
            except ValueError:
                self.s.bodies.append((request.method, path, await request.text()))
        for fault in self.s.faults:
            if fault.method == request.method and re.fullmatch(fault.path, path) and fault.times > 0:
                fault.times -= 1
                return web.Response(status=fault.status, text=fault.body, content_type=fault.content_type)
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "token" or not key:
            return _detail(401, "Authentication credentials were not provided.", **{"WWW-Authenticate": "Token"})
        if key != self.s.api_key:
            return _detail(401, "Invalid token.", **{"WWW-Authenticate": "Token"})
        if request.method == "PATCH":
            return _detail(405, 'Method "PATCH" not allowed.', Allow="GET, PUT, DELETE, HEAD, OPTIONS")
        if request.method in ("POST", "PUT"):
            try:
                body = await request.json()
            except ValueError:
                return _detail(400, "JSON parse error")
            if not isinstance(body, dict):
                return web.json_response(
                    {"non_field_errors": [f"Invalid data. Expected a dictionary, but got {type(body).__name__}."]},
                    status=400,
                )
        return await handler(request)

    # ---------------------------------------------------------------- pages

    def _page(self, request: web.Request, items: list[dict[str, Any]]) -> web.Response:
        try:
            limit = min(MAX_LIMIT, max(1, int(request.query.get("limit", str(PAGE_SIZE)))))
            offset = max(0, int(request.query.get("offset", "0")))
        except ValueError:
            limit, offset = PAGE_SIZE, 0  # DRF falls back to the defaults on a bad number
        url = request.url

        def link(at: int) -> str:
            return str(url.update_query(limit=limit, offset=at))

        return web.json_response(
            {
                "count": len(items),
                "next": link(offset + limit) if offset + limit < len(items) else None,
                "previous": (link(max(0, offset - limit)) if offset > 0 else None),
                "results": items[offset : offset + limit],
            }
        )

    # ---------------------------------------------------------------- employees

    def _employee(self, request: web.Request) -> dict[str, Any] | None:
        raw = request.match_info["id"]
        return self.s.employees.get(int(raw)) if raw.isdigit() else None

    def _validate(self, body: dict[str, Any], eid: int | None, *, partial: bool) -> dict[str, Any] | web.Response:
        errors: dict[str, list[str]] = {}
        clean: dict[str, Any] = {}
        if not partial and "username" not in body:
            errors["username"] = ["This field is required."]
        for name in TEXT_FIELDS:
            if name not in body:
                continue
            value = body[name]
            if value is None:
                errors[name] = ["This field may not be null."]
            elif not isinstance(value, str | int | float) or isinstance(value, bool):
                errors[name] = ["Not a valid string."]
            elif name == "username" and not str(value).strip():
                errors[name] = ["This field may not be blank."]
            elif name == "username" and not re.fullmatch(r"[\w.@+-]{1,150}", str(value)):
                errors[name] = ["Enter a valid username. This value may contain only letters, numbers, and @/./+/-/_ characters."]
            elif name == "email" and value != "" and not EMAIL.fullmatch(str(value)):
                errors[name] = ["Enter a valid email address."]
            else:
                clean[name] = str(value).strip()
        if "username" in clean:
            other = self.s.employee(clean["username"])
            if other is not None and other["id"] != eid:
                errors["username"] = ["employee with this username already exists."]
        if "is_active" in body:
            value = body["is_active"]
            if value is None:
                errors["is_active"] = ["This field may not be null."]
            elif isinstance(value, bool) or str(value) not in ("0", "1"):
                errors["is_active"] = [f'"{value}" is not a valid choice.']
            else:
                clean["is_active"] = int(value)
        if "teams" in body:
            value = body["teams"]
            if not isinstance(value, list):
                errors["teams"] = [f'Expected a list of items but got type "{type(value).__name__}".']
            else:
                missing = [c for c in value if not isinstance(c, str) or c not in self.s.teams]
                if missing:
                    errors["teams"] = [f"Object with code={missing[0]} does not exist."]
                else:
                    clean["teams"] = list(dict.fromkeys(value))
        return web.json_response(errors, status=400) if errors else clean

    async def list_employees(self, request: web.Request) -> web.Response:
        employees = sorted(self.s.employees.values(), key=lambda e: e["id"])
        for name in ("username", "email"):
            if name in request.query:
                employees = [e for e in employees if e[name] == request.query[name]]
        if "teams" in request.query:  # django-filter's ?teams=<code>: the employees in that team
            employees = [e for e in employees if request.query["teams"] in e["teams"]]
        return self._page(request, employees)

    async def create_employee(self, request: web.Request) -> web.Response:
        clean = self._validate(await request.json(), None, partial=False)
        if isinstance(clean, web.Response):
            return clean
        return web.json_response(self.s.add_employee(**clean), status=201)

    async def get_employee(self, request: web.Request) -> web.Response:
        employee = self._employee(request)
        return web.json_response(employee) if employee is not None else _detail(404, "Not found.")

    async def put_employee(self, request: web.Request) -> web.Response:
        employee = self._employee(request)
        if employee is None:
            return _detail(404, "Not found.")
        clean = self._validate(await request.json(), employee["id"], partial=False)
        if isinstance(clean, web.Response):
            return clean
        employee.update(clean)
        return web.json_response(employee)

    async def delete_employee(self, request: web.Request) -> web.Response:
        employee = self._employee(request)
        if employee is None:
            return _detail(404, "Not found.")
        del self.s.employees[employee["id"]]
        return web.Response(status=204)

    # ---------------------------------------------------------------- teams

    def _team(self, request: web.Request) -> dict[str, Any] | None:
        return self.s.teams.get(request.match_info["code"])

    def _validate_team(self, body: dict[str, Any], code: str | None) -> dict[str, Any] | web.Response:
        errors: dict[str, list[str]] = {}
        clean: dict[str, Any] = {}
        name = body.get("name")
        if "name" not in body:
            errors["name"] = ["This field is required."]
        elif name is None:
            errors["name"] = ["This field may not be null."]
        elif not isinstance(name, str) or not name.strip():
            errors["name"] = ["This field may not be blank."]
        else:
            other = self.s.team(name.strip())
            if other is not None and other["code"] != code:
                errors["name"] = ["team with this name already exists."]
            clean["name"] = name.strip()
        if "description" in body:
            if body["description"] is None:
                errors["description"] = ["This field may not be null."]
            else:
                clean["description"] = str(body["description"])
        return web.json_response(errors, status=400) if errors else clean

    async def list_teams(self, request: web.Request) -> web.Response:
        teams = list(self.s.teams.values())
        if "name" in request.query:
            teams = [t for t in teams if t["name"] == request.query["name"]]
        return self._page(request, teams)

    async def create_team(self, request: web.Request) -> web.Response:
        clean = self._validate_team(await request.json(), None)
        if isinstance(clean, web.Response):
            return clean
        return web.json_response(self.s.add_team(clean["name"], clean.get("description", "")), status=201)

    async def get_team(self, request: web.Request) -> web.Response:
        team = self._team(request)
        return web.json_response(team) if team is not None else _detail(404, "Not found.")

    async def put_team(self, request: web.Request) -> web.Response:
        team = self._team(request)
        if team is None:
            return _detail(404, "Not found.")
        clean = self._validate_team(await request.json(), team["code"])
        if isinstance(clean, web.Response):
            return clean
        team.update(clean)
        return web.json_response(team)

    async def delete_team(self, request: web.Request) -> web.Response:
        team = self._team(request)
        if team is None:
            return _detail(404, "Not found.")
        del self.s.teams[team["code"]]
        for employee in self.s.employees.values():
            if team["code"] in employee["teams"]:
                employee["teams"].remove(team["code"])
        return web.Response(status=204)


def create_staff_app(state: StaffState | None = None) -> web.Application:
    """The fake staff directory; its state is `app[STAFF_STATE]`."""
    state = state or StaffState()
    staff = _Staff(state)
    app = web.Application(middlewares=[staff.middleware])
    app[STAFF_STATE] = state
    app.router.add_get(f"{API}/employees/", staff.list_employees)
    app.router.add_post(f"{API}/employees/", staff.create_employee)
    app.router.add_get(f"{API}/employees/{{id}}/", staff.get_employee)
    app.router.add_put(f"{API}/employees/{{id}}/", staff.put_employee)
    app.router.add_delete(f"{API}/employees/{{id}}/", staff.delete_employee)
    app.router.add_get(f"{API}/teams/", staff.list_teams)
    app.router.add_post(f"{API}/teams/", staff.create_team)
    app.router.add_get(f"{API}/teams/{{code}}/", staff.get_team)
    app.router.add_put(f"{API}/teams/{{code}}/", staff.put_team)
    app.router.add_delete(f"{API}/teams/{{code}}/", staff.delete_team)
    # PATCH reaches the middleware's 405 through these routes.
    app.router.add_patch(f"{API}/employees/{{id}}/", staff.put_employee)
    app.router.add_patch(f"{API}/teams/{{code}}/", staff.put_team)
    return app


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Run the app on a free loopback port; yields its API base URL (…/api)."""
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url(API))
    finally:
        await server.close()
