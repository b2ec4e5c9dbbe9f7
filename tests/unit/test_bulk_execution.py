"""Bulk execution without HTTP: the ordering and bookkeeping of run_bulk against a recording executor, and a
whole BulkRequest through the SCIM service and the provisioner into the demo app's real SQLite database."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.app import create_store
from gateway.connectors.base import AppContext
from gateway.provisioning.provisioner import Provisioner
from gateway.scim.bulk import BATCH_SIZE, BulkEntry, BulkResult, run_bulk
from gateway.scim.errors import ScimError, uniqueness
from gateway.scim.service import ScimService
from gateway.settings import LimitsConfig
from tests.conftest import GROUP_URN, PATCH_URN, demo_settings, user_body

BULK = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"


class Recorder:
    """An executor that records what it is asked, answers from `answers` (path -> status), and never touches an app."""

    def __init__(self, fail: dict[str, ScimError] | None = None, crash_on: str | None = None) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.fail = fail or {}
        self.crash_on = crash_on
        self.created = 0

    def target(self, path: str) -> tuple[str | None, str | None]:
        parts = [p for p in path.split("/") if p]
        return ({"Users": "User", "Groups": "Group"}.get(parts[0]) if parts else None), (parts[1] if len(parts) > 1 else None)

    async def operation(self, method: str, path: str, data: Any, version: str | None) -> BulkResult:
        self.calls.append((method, path, data))
        if self.crash_on == path:
            raise RuntimeError("a bug")
        if path in self.fail:
            raise self.fail[path]
        if method == "POST":
            return self._created(path)
        return BulkResult(204 if method == "DELETE" else 200, resource_id=None if method == "DELETE" else path.rsplit("/", 1)[1])

    async def create_many(self, path: str, datas: list[dict[str, Any]]) -> list[BulkResult | ScimError]:
        self.calls.append(("POST*", path, len(datas)))
        return [self._created(path) for _ in datas]

    def _created(self, path: str) -> BulkResult:
        self.created += 1
        rid = f"id{self.created}"
        return BulkResult(201, f"https://gw{path}/{rid}", 'W/"1"', rid)


def bulk(*operations: dict[str, Any], fail_on_errors: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"schemas": [BULK], "Operations": list(operations)}
    if fail_on_errors is not None:
        body["failOnErrors"] = fail_on_errors
    return body


def post(bulk_id: str, path: str = "/Users", **data: Any) -> dict[str, Any]:
    return {"method": "POST", "path": path, "bulkId": bulk_id, "data": data or {"userName": bulk_id}}


async def test_an_operation_waits_for_the_bulk_ids_it_names_and_gets_their_ids() -> None:
    executor = Recorder()
    entries: list[BulkEntry | None] = []
    add_member = {"schemas": [PATCH_URN], "Operations": [{"op": "add", "path": "members", "value": [{"value": "bulkId:u"}]}]}
    response = await run_bulk(
        executor,
        bulk(
            {"method": "PATCH", "path": "/Groups/bulkId:g", "data": add_member},
            post("g", "/Groups", displayName="team", members=[{"value": "bulkId:u"}]),
            post("u"),
        ),
        max_operations=10,
        entries=entries,
    )
    # The user first (the group names it), then the group, then the PATCH of the group; bulkIds replaced by ids.
    assert executor.calls == [
        ("POST", "/Users", {"userName": "u"}),
        ("POST", "/Groups", {"displayName": "team", "members": [{"value": "id1"}]}),
        ("PATCH", "/Groups/id2", {**add_member, "Operations": [{"op": "add", "path": "members", "value": [{"value": "id1"}]}]}),
    ]
    # The answer and the audit entries keep the request's order.
    assert [(o.get("bulkId"), o["status"]) for o in response["Operations"]] == [(None, "200"), ("g", "201"), ("u", "201")]
    assert [(e.method, e.resource_type, e.resource_id, e.status) for e in entries if e] == [
        ("PATCH", "Group", "id2", 200),
        ("POST", "Group", "id2", 201),
        ("POST", "User", "id1", 201),
    ]


async def test_independent_creates_go_to_the_executor_as_one_batch() -> None:
    executor = Recorder()
    operations = [post(f"u{i}") for i in range(BATCH_SIZE + 4)]
    operations.insert(3, {"method": "DELETE", "path": "/Users/old"})
    entries: list[BulkEntry | None] = []
    response = await run_bulk(executor, bulk(*operations), max_operations=len(operations), entries=entries)
    # Runs of POSTs to one path split by the DELETE and by the batch size; each answered as one by one.
    assert executor.calls == [
        ("POST*", "/Users", 3),
        ("DELETE", "/Users/old", None),
        ("POST*", "/Users", BATCH_SIZE),
        ("POST", "/Users", {"userName": f"u{BATCH_SIZE + 3}"}),
    ]
    assert [o["status"] for o in response["Operations"]].count("201") == BATCH_SIZE + 4
    assert all(e is not None and e.status in (201, 204) for e in entries)


async def test_a_failed_operation_fails_what_depends_on_it_and_fail_on_errors_stops_the_rest() -> None:
    executor = Recorder(fail={"/Users": uniqueness("userName 'dup' is already taken")})
    entries: list[BulkEntry | None] = []
    response = await run_bulk(
        executor,
        bulk(
            post("dup"),
            {"method": "PATCH", "path": "/Users/bulkId:dup", "data": {"schemas": [PATCH_URN], "Operations": []}},
            {"method": "DELETE", "path": "/Users/x"},
            {"method": "DELETE", "path": "/Users/y"},
            fail_on_errors=2,
        ),
        max_operations=10,
        entries=entries,
    )
    assert [(o["status"], o.get("response", {}).get("scimType")) for o in response["Operations"]] == [
        ("409", "uniqueness"),
        ("409", "invalidValue"),
    ]
    assert [c[:2] for c in executor.calls] == [("POST", "/Users")]  # the PATCH never ran, nor anything after the second error
    assert [(e.resource_id, e.status, e.scim_type) if e else None for e in entries] == [
        (None, 409, "uniqueness"),
        ("bulkId:dup", 409, "invalidValue"),
        None,
        None,
    ]


async def test_operations_that_refer_in_a_circle_are_refused_without_running() -> None:
    executor = Recorder()
    response = await run_bulk(
        executor,
        bulk(
            post("a", displayName="bulkId:b"),
            post("b", displayName="bulkId:a"),
            post("c"),
        ),
        max_operations=10,
        entries=[],
    )
    assert executor.calls == [("POST", "/Users", {"userName": "c"})]
    assert [(o["bulkId"], o["status"]) for o in response["Operations"]] == [("a", "409"), ("b", "409"), ("c", "201")]
    assert "unresolved bulkId reference" in response["Operations"][0]["response"]["detail"]


async def test_when_the_request_fails_as_a_whole_the_entries_say_what_ran() -> None:
    executor = Recorder(crash_on="/Users/boom")
    entries: list[BulkEntry | None] = []
    with pytest.raises(RuntimeError):
        await run_bulk(
            executor,
            bulk(post("u1"), {"method": "DELETE", "path": "/Users/boom"}, post("u2")),
            max_operations=10,
            entries=entries,
        )
    assert [(e.method, e.resource_id, e.status) if e else None for e in entries] == [
        ("POST", "id1", 201),
        ("DELETE", "boom", None),
        None,
    ]


@pytest.mark.parametrize(
    ("body", "status", "scim_type"),
    [
        ({"schemas": ["wrong"], "Operations": []}, 400, "invalidSyntax"),
        ({"schemas": [BULK]}, 400, "invalidSyntax"),
        (bulk(*[post(f"u{i}") for i in range(3)]), 413, None),
        (bulk(post("x"), post("x")), 400, "invalidValue"),
        (bulk(post("x"), fail_on_errors=0), 400, "invalidValue"),
    ],
)
async def test_a_bad_bulk_request_is_refused_as_a_whole(body: dict[str, Any], status: int, scim_type: str | None) -> None:
    executor = Recorder()
    entries: list[BulkEntry | None] = []
    with pytest.raises(ScimError) as refused:
        await run_bulk(executor, body, max_operations=2, entries=entries)
    assert (refused.value.status, refused.value.scim_type) == (status, scim_type)
    assert executor.calls == [] and entries == []


# ---------------------------------------------------------------- through the service and the provisioner


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[ScimService]:
    settings = demo_settings(tmp_path)
    from gateway.app import load_apps
    from gateway.connectors.registry import load_registry

    (mapping,) = load_apps(settings, load_registry())
    store = create_store(settings)
    await store.open()
    connector = mapping.connector_cls(mapping.connector_config, AppContext(mapping.app, tmp_path))
    await connector.open()
    try:
        yield ScimService(Provisioner(mapping, connector, store), LimitsConfig())
    finally:
        await connector.close()
        await store.close()


async def test_a_bulk_request_provisions_users_and_a_group_into_the_app(service: ScimService, tmp_path: Path) -> None:
    entries: list[BulkEntry | None] = []
    reply = await service.bulk(
        "https://gw/apps/demo/scim/v2",
        bulk(
            {"method": "POST", "path": "/Users", "bulkId": "ann", "data": user_body("ann@example.com", title="Lead")},
            {"method": "POST", "path": "/Users", "bulkId": "bob", "data": user_body("bob@example.com")},
            {"method": "POST", "path": "/Users", "bulkId": "dup", "data": user_body("ANN@example.com")},
            {
                "method": "POST",
                "path": "/Users",
                "bulkId": "bad",
                "data": {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"]},
            },
            {
                "method": "POST",
                "path": "/Groups",
                "bulkId": "team",
                "data": {
                    "schemas": [GROUP_URN],
                    "displayName": "Team",
                    "members": [{"value": "bulkId:ann"}, {"value": "bulkId:bob"}],
                },
            },
            {
                "method": "PATCH",
                "path": "/Users/bulkId:bob",
                "data": {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": "title", "value": "Dev"}]},
            },
        ),
        entries,
    )
    answers = reply.body["Operations"]
    assert [(o["bulkId"] if "bulkId" in o else None, o["status"]) for o in answers] == [
        ("ann", "201"),
        ("bob", "201"),
        ("dup", "409"),
        ("bad", "400"),
        ("team", "201"),
        (None, "200"),
    ]
    assert answers[2]["response"]["scimType"] == "uniqueness" and "userName" in answers[3]["response"]["detail"]
    assert all(o["location"].startswith("https://gw/apps/demo/scim/v2/") for o in answers if o["status"] in ("200", "201"))
    with sqlite3.connect(tmp_path / "demo.db") as db:
        people = dict(db.execute("SELECT login, job_title FROM employees"))
        members = sorted(
            login
            for (login,) in db.execute(
                "SELECT e.login FROM team_members m JOIN employees e USING (emp_no) JOIN teams t USING (team_id) WHERE t.team_name = 'Team'"
            )
        )
    assert people == {"ann@example.com": "Lead", "bob@example.com": "Dev"}  # nothing of the refused two
    assert members == ["ann@example.com", "bob@example.com"]
    assert await service.provisioner.store.pending("demo") == []
    assert [(e.resource_type, e.status) for e in entries if e] == [
        ("User", 201),
        ("User", 201),
        ("User", 409),
        ("User", 400),
        ("Group", 201),
        ("User", 200),
    ]
