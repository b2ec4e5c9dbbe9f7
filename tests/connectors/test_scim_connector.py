"""The scim connector against a real SCIM server written by others (scim2-server, run as a process): the shared
connector contract in three of the target's shapes (full SCIM, no PATCH, no filters), and what is the
connector's own: PUT instead of PATCH, lookups without filters, the target's errors, the calls a list makes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from scim_gateway_plugins.scim import ScimConnector, ScimConnectorConfig, ScimSetupError
from yarl import URL

from gateway.connectors import AppConflict, AppContext, AppError, AppInvalid, AppNotFound, AppUnavailable, Record
from tests.conftest import free_port
from tests.connectors.conformance import ConnectorConformance
from tests.scim_target import TARGET_TOKEN, ScimTarget, TargetTenant

ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
USER_URN = "urn:ietf:params:scim:schemas:core:2.0:User"


def _target(tmp_path_factory: pytest.TempPathFactory, name: str, **modes: bool) -> Iterator[ScimTarget]:
    target = ScimTarget(tmp_path_factory.mktemp(name), **modes)
    target.start()
    yield target
    target.stop()


@pytest.fixture(scope="module")
def full_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScimTarget]:
    yield from _target(tmp_path_factory, "scim-full")


@pytest.fixture(scope="module")
def no_patch_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScimTarget]:
    yield from _target(tmp_path_factory, "scim-nopatch", patch=False)


@pytest.fixture(scope="module")
def no_filter_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScimTarget]:
    yield from _target(tmp_path_factory, "scim-nofilter", filter=False)


class Calls:
    """Every HTTP call a connector makes: (method, path, query, body)."""

    def __init__(self, connector: ScimConnector) -> None:
        self.made: list[tuple[str, str, dict[str, str], Any]] = []
        http = connector.http
        original = http.call

        async def spy(method: str, url: URL, **kwargs: Any) -> Any:
            self.made.append((method, url.path.split("/v2", 1)[-1], dict(url.query), kwargs.get("body")))
            return await original(method, url, **kwargs)

        http.call = spy  # type: ignore[method-assign]

    def methods(self) -> list[str]:
        return [f"{method} {path}" for method, path, _q, _b in self.made]

    def clear(self) -> None:
        self.made.clear()


@pytest.fixture
async def opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    monkeypatch.setenv("TEST_SCIM_TARGET_TOKEN", TARGET_TOKEN)
    connectors: list[ScimConnector] = []

    async def open_one(target: ScimTarget | TargetTenant, **overrides: Any) -> ScimConnector:
        tenant = target.tenant() if isinstance(target, ScimTarget) else target
        block: dict[str, Any] = {
            "type": "scim",
            "base_url": tenant.base_url,
            "auth": {"type": "bearer", "token": {"env": "TEST_SCIM_TARGET_TOKEN"}},
            "page_size": 3,
            "retries": 0,
        } | overrides
        connector = ScimConnector(ScimConnectorConfig.model_validate(block), AppContext("scimtest", tmp_path))
        await connector.open()
        connectors.append(connector)
        connector.tenant = tenant  # type: ignore[attr-defined]
        return connector

    yield open_one
    for connector in connectors:
        await connector.close()


class _Conformance(ConnectorConformance):
    list_all_ordered = False  # the target's order, its ids random

    @pytest.fixture
    def unique_field(self) -> str:
        return "userName"

    @pytest.fixture
    def text_field(self) -> str:
        return "title"

    def sample_user(self, tag: str) -> Record:
        return {
            "userName": f"user-{tag}",
            "name.givenName": "Test",
            "name.familyName": f"User {tag}",
            'emails[type eq "work"].value': f"{tag}@example.com",
            "title": f"about {tag}",
        }

    def sample_group(self, tag: str) -> Record:
        return {"displayName": f"group-{tag}"}


class TestScimConformance(_Conformance):
    @pytest.fixture
    async def connector(self, opened: Any, full_target: ScimTarget) -> ScimConnector:
        return await opened(full_target)  # type: ignore[no-any-return]


class TestScimWithoutPatchConformance(_Conformance):
    """A target that answers PATCH 501: updates and membership go as GET, merge, PUT."""

    @pytest.fixture
    async def connector(self, opened: Any, no_patch_target: ScimTarget) -> ScimConnector:
        return await opened(no_patch_target, patch=False)  # type: ignore[no-any-return]


class TestScimWithoutFiltersConformance(_Conformance):
    """A target that answers a filter 501: lookups list the records and compare them here."""

    @pytest.fixture
    async def connector(self, opened: Any, no_filter_target: ScimTarget) -> ScimConnector:
        return await opened(no_filter_target, filter_ops=[])  # type: ignore[no-any-return]


# ---------------------------------------------------------------- the connector's own


async def test_records_are_the_targets_resources(opened: Any, full_target: ScimTarget) -> None:
    connector = await opened(full_target)
    tenant: TargetTenant = connector.tenant
    ann = await connector.create(
        "User",
        {
            "userName": "ann",
            "name.givenName": "Ann",
            'emails[type eq "work"].value': "ann@work.example",
            'emails[type eq "home"].value': "ann@home.example",
            f"{ENTERPRISE}:department": "R&D",
            "active": True,
        },
    )
    raw = tenant.one("/Users", ann)
    assert raw is not None and raw["id"] == ann  # the native id is the target's own id
    assert raw["schemas"] == [USER_URN, ENTERPRISE]
    assert raw["name"] == {"givenName": "Ann"} and raw[ENTERPRISE] == {"department": "R&D"}
    assert sorted((e["type"], e["value"]) for e in raw["emails"]) == [("home", "ann@home.example"), ("work", "ann@work.example")]
    record = await connector.get("User", ann)
    assert record is not None
    assert record['emails[type eq "work"].value'] == "ann@work.example"
    assert record[f"{ENTERPRISE}:department"] == "R&D" and record["name.givenName"] == "Ann"
    assert not {"id", "meta", "schemas"} & set(record)
    # An element field changes that element only; the other stays as the target holds it.
    await connector.update("User", ann, {'emails[type eq "work"].value': "ann@new.example", "name.givenName": None})
    raw = tenant.one("/Users", ann)
    assert raw is not None
    assert sorted((e["type"], e["value"]) for e in raw["emails"]) == [("home", "ann@home.example"), ("work", "ann@new.example")]
    assert "givenName" not in raw.get("name", {})


async def test_put_instead_of_patch_reads_merges_and_keeps_what_it_does_not_change(
    opened: Any, no_patch_target: ScimTarget
) -> None:
    connector = await opened(no_patch_target, patch=False)
    tenant: TargetTenant = connector.tenant
    calls = Calls(connector)
    ann = await connector.create("User", {"userName": "ann", "title": "Dev", "name.familyName": "A"})
    ben = await connector.create("User", {"userName": "ben"})
    group = await connector.create_with_members("Group", {"displayName": "staff"}, [("User", ann)])
    calls.clear()
    await connector.update("User", ann, {"title": "Lead"})
    assert [m for m, *_ in calls.made] == ["GET", "PUT"]
    put_body = calls.made[1][3]
    assert put_body["userName"] == "ann" and put_body["name"] == {"familyName": "A"} and "meta" not in put_body
    raw = tenant.one("/Users", ann)
    assert raw is not None and (raw["title"], raw["name"]) == ("Lead", {"familyName": "A"})
    # A group's fields and members in one write: one GET, one PUT, the members kept or changed as asked.
    calls.clear()
    await connector.write("Group", group, {"displayName": "staff-2"}, [("User", ben)], [])
    assert [m for m, *_ in calls.made] == ["GET", "PUT"]
    raw = tenant.one("/Groups", group)
    assert raw is not None and raw["displayName"] == "staff-2"
    assert sorted(m["value"] for m in raw["members"]) == sorted([ann, ben])
    await connector.update("Group", group, {"displayName": "staff-3"})
    raw = tenant.one("/Groups", group)
    assert raw is not None and sorted(m["value"] for m in raw["members"]) == sorted([ann, ben])  # a PUT keeps them
    assert "PATCH" not in {m for m, *_ in calls.made}


async def test_a_target_without_patch_answers_501_when_patch_is_left_on(opened: Any, no_patch_target: ScimTarget) -> None:
    connector = await opened(no_patch_target)  # the option left at its default: the target's refusal says what to do
    ann = await connector.create("User", {"userName": "ann"})
    with pytest.raises(AppError, match=r"HTTP 501.*patch") as caught:
        await connector.update("User", ann, {"title": "x"})
    assert type(caught.value) is AppError


async def test_patch_sends_one_request_for_fields_and_members(opened: Any, full_target: ScimTarget) -> None:
    connector = await opened(full_target)
    ann = await connector.create("User", {"userName": "ann"})
    ben = await connector.create("User", {"userName": "ben"})
    group = await connector.create_with_members("Group", {"displayName": "g"}, [("User", ann)])
    calls = Calls(connector)
    await connector.write("Group", group, {"displayName": "g2"}, [("User", ben)], [("User", ann)])
    [(method, _path, _query, body)] = calls.made
    assert method == "PATCH"
    assert body["Operations"] == [
        {"op": "replace", "path": "displayName", "value": "g2"},
        {"op": "remove", "path": f'members[value eq "{ann}"]'},
        {"op": "add", "path": "members", "value": [{"value": ben}]},
    ]
    assert await connector.list_members("Group", group) == [("User", ben)]


async def test_find_without_filters_lists_and_compares_within_a_page_limit(opened: Any, no_filter_target: ScimTarget) -> None:
    connector = await opened(no_filter_target, filter_ops=[], scan_pages=2)
    assert connector.caps.search_ops == frozenset({"eq"})  # no co / sw / ew / pr pushed to a target that cannot filter
    ids = [await connector.create("User", {"userName": f"u{i}"}) for i in range(5)]
    calls = Calls(connector)
    found = await connector.find("User", "userName", "U3")
    assert [native_id for native_id, _ in found] == [ids[3]]
    assert all("filter" not in query for _m, _p, query, _b in calls.made)
    assert [(q["startIndex"], q["count"]) for _m, _p, q, _b in calls.made] == [("1", "3"), ("4", "3")]
    await connector.create("User", {"userName": "u5"})
    await connector.create("User", {"userName": "u6"})  # 7 users: more than 2 pages of 3
    with pytest.raises(AppError, match="more than 2 pages of 3"):
        await connector.find("User", "userName", "nobody")


async def test_find_with_filters_asks_the_target(opened: Any, full_target: ScimTarget) -> None:
    connector = await opened(full_target, filter_ops=["eq", "sw"])
    ann = await connector.create("User", {"userName": "ann.o'brien", 'emails[type eq "work"].value': 'a"b@x.example'})
    await connector.create("User", {"userName": "anna", 'emails[type eq "work"].value': "other@x.example"})
    calls = Calls(connector)
    assert [i for i, _ in await connector.find("User", "userName", "ANN.O'BRIEN")] == [ann]
    assert calls.made[0][2]["filter"] == 'userName eq "ANN.O\'BRIEN"'
    assert [i for i, _ in await connector.find("User", 'emails[type eq "work"].value', 'a"b@x.example')] == [ann]
    assert calls.made[1][2]["filter"] == 'emails[type eq "work" and value eq "a\\"b@x.example"]'
    assert sorted(r["userName"] for _i, r in await connector.find("User", "userName", "ann", "sw")) == ["ann.o'brien", "anna"]
    with pytest.raises(AppError, match="no 'co' filter"):
        await connector.find("User", "userName", "nn", "co")


@pytest.mark.parametrize(
    ("records", "pages"), [(7, [("1", "3"), ("4", "3"), ("7", "3")]), (6, [("1", "3"), ("4", "3")]), (0, [("1", "3")])]
)
async def test_list_all_stops_on_total_results_without_an_empty_page(
    opened: Any, full_target: ScimTarget, records: int, pages: list[tuple[str, str]]
) -> None:
    connector = await opened(full_target)
    ids = {await connector.create("User", {"userName": f"p{i}"}) for i in range(records)}
    calls = Calls(connector)
    assert {native_id async for native_id, _ in connector.list_all("User")} == ids
    assert [(q["startIndex"], q["count"]) for _m, _p, q, _b in calls.made] == pages


async def test_the_targets_errors_carry_its_scim_type_and_detail(opened: Any, full_target: ScimTarget) -> None:
    connector = await opened(full_target)
    await connector.create("User", {"userName": "ann"})
    with pytest.raises(AppConflict) as conflict:
        await connector.create("User", {"userName": "ANN"})
    assert "HTTP 409, scimType uniqueness: " in conflict.value.detail
    assert "already in use" in conflict.value.detail  # the target's own words
    with pytest.raises(AppInvalid) as invalid:
        await connector.create("User", {"title": "no userName"})
    assert "HTTP 400" in invalid.value.detail and len(invalid.value.detail) < 300
    with pytest.raises(AppNotFound):
        await connector.update("User", "no-such-id", {"title": "x"})


async def test_refused_credentials_and_an_unreachable_target_are_unavailable(
    opened: Any, full_target: ScimTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_SCIM_WRONG_TOKEN", "wrong-token-0123456789")
    connector = await opened(full_target, auth={"type": "bearer", "token": {"env": "TEST_SCIM_WRONG_TOKEN"}})
    with pytest.raises(AppUnavailable) as refused:
        await connector.get("User", "x")
    assert "HTTP 401" in refused.value.detail and refused.value.retry_after
    assert "wrong-token" not in refused.value.detail
    gone = await opened(TargetTenant(f"http://127.0.0.1:{free_port()}/t/v2"))
    with pytest.raises(AppUnavailable) as unreachable:
        await gone.create("User", {"userName": "x"})
    assert "cannot connect" in unreachable.value.detail and unreachable.value.retry_after


async def test_a_missing_secret_fails_open(tmp_path: Path) -> None:
    config = ScimConnectorConfig.model_validate(
        {"type": "scim", "base_url": "http://127.0.0.1:1/v2", "auth": {"type": "bearer", "token": {"env": "NO_SUCH_VAR_X"}}}
    )
    with pytest.raises(ScimSetupError, match="auth.token: environment variable NO_SUCH_VAR_X is not set"):
        await ScimConnector(config, AppContext("x", tmp_path)).open()


def test_options_are_checked_at_load() -> None:
    def problems(**block: Any) -> str:
        with pytest.raises(ValueError) as caught:
            ScimConnectorConfig.model_validate({"type": "scim", "base_url": "https://x.example/scim/v2"} | block)
        return str(caught.value)

    assert "credentials" in problems(base_url="https://user:pw@x.example/scim")
    assert "pw" not in problems(base_url="https://user:pw@x.example/scim")
    assert "member_kind" in problems(resources={"Group": {"endpoint": "/Groups", "members": {}}})
    assert "schema" in problems(resources={"Device": {"endpoint": "/Devices"}})
    assert "filter_ops" in problems(filter_ops=["gt"])
    assert "token" in problems(auth={"type": "bearer", "token": "inline-secret"})


async def test_plan_shows_the_calls_with_secrets_masked(opened: Any, full_target: ScimTarget) -> None:
    connector = await opened(full_target)
    [create] = connector.plan("create", "User", record={"userName": "ann", "name.givenName": "Ann"})
    assert create["method"] == "POST" and create["url"].endswith("/v2/Users")
    assert create["headers"]["Authorization"] == "Bearer ***" and create["headers"]["Content-Type"] == "application/scim+json"
    assert create["body"] == {"schemas": [USER_URN], "userName": "ann", "name": {"givenName": "Ann"}}
    [update] = connector.plan("update", "User", "abc", {"title": None, "displayName": "A"})
    assert (update["method"], update["url"].rsplit("/v2", 1)[1]) == ("PATCH", "/Users/abc")
    assert update["body"]["Operations"] == [
        {"op": "remove", "path": "title"},
        {"op": "replace", "path": "displayName", "value": "A"},
    ]
    [member] = connector.plan("add_members", "Group", "g1", members=[("User", "u1")])
    assert member["body"]["Operations"] == [{"op": "add", "path": "members", "value": [{"value": "u1"}]}]
    assert TARGET_TOKEN not in repr(connector.plan("delete", "User", "abc"))
    put = await opened(full_target, patch=False)
    assert [c["method"] for c in put.plan("remove_members", "Group", "g1", members=[("User", "u1")])] == ["GET", "PUT"]


async def test_check_reads_the_targets_schemas(opened: Any, full_target: ScimTarget) -> None:
    connector = await opened(full_target)
    assert await connector.check_schema() == []
    fields = connector.fields("User")
    assert fields is not None
    for name in (
        "userName",
        "name.givenName",
        "emails",
        'emails[type eq "work"].value',
        f"{ENTERPRISE}:department",
        "externalId",
    ):
        assert name in fields, name
    assert "usrName" not in fields and 'emails[type eq "work"].valu' not in fields
    assert "displayName" in (connector.fields("Group") or set())
    typo = await opened(full_target, resources={"User": {"endpoint": "/User"}})
    [(where, message)] = await typo.check_schema()
    assert where == ("resources", "User", "endpoint") and "did you mean /Users?" in message
