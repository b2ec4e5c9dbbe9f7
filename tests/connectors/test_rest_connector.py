"""The REST connector: the conformance suite against the fake HR app on loopback, request shapes with
aioresponses, and the app's faults over real HTTP."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import scim_gateway_plugins.rest.connector as rest_module
from aiohttp import ClientResponse, web
from aioresponses import aioresponses as _aioresponses
from pydantic import ValidationError
from scim_gateway_plugins.rest import RestConnector, RestConnectorConfig, RestSetupError
from scim_gateway_plugins.rest.connector import TokenBucket, flatten, nest
from yarl import URL

from gateway.connectors import (
    AppBadResponse,
    AppConflict,
    AppContext,
    AppInvalid,
    AppNotFound,
    AppUnavailable,
    Capabilities,
    Record,
    load_registry,
)
from tests.conftest import free_port
from tests.fakes.hr_app import HR_STATE, HrState, create_hr_app, serve

from .conformance import ConnectorConformance

API_KEY = "hr-key-0123456789abcdef"
BASE = "http://hr.test/api"


def page(size: int) -> dict[str, Any]:
    return {"type": "page", "page_param": "page", "size_param": "per_page", "size": size, "start": 1}


def hr_config(base_url: str | dict[str, str], page_size: int = 100, **changes: Any) -> dict[str, Any]:
    """The fake HR app's connector block (the same calls as mappings/hr_rest.yaml)."""
    config: dict[str, Any] = {
        "type": "rest",
        "base_url": base_url,
        "timeout": 5,
        "retries": 2,
        "auth": {"type": "api_key", "in": "header", "name": "X-API-Key", "key": {"env": "HR_TEST_API_KEY"}},
        "resources": {
            "User": {
                "create": {"method": "POST", "path": "/users"},
                "get": {"path": "/users/{id}"},
                "update": {"method": "PATCH", "path": "/users/{id}"},
                "delete": {"path": "/users/{id}"},
                "search": {"path": "/users", "params": {"login": "login"}, "items": "data", "pagination": page(page_size)},
                "list": {"path": "/users", "items": "data", "pagination": page(page_size)},
                "actions": {"disable": {"path": "/users/{id}/disable"}, "enable": {"path": "/users/{id}/enable"}},
            },
            "Group": {
                "create": {"path": "/groups"},
                "get": {"path": "/groups/{id}"},
                "update": {"path": "/groups/{id}"},
                "delete": {"path": "/groups/{id}"},
                "search": {"path": "/groups", "params": {"name": "name"}, "items": "data", "pagination": page(page_size)},
                "list": {"path": "/groups", "items": "data", "pagination": page(page_size)},
                "members": {
                    "member_kind": "User",
                    "add": {"path": "/groups/{id}/members", "body": {"user_id": "{member}"}},
                    "remove": {"path": "/groups/{id}/members/{member}"},
                    "list": {
                        "path": "/groups/{id}/members",
                        "items": "data",
                        "member_id": "user_id",
                        "pagination": page(page_size),
                    },
                },
            },
        },
    }
    config.update(changes)
    return config


def make(config: dict[str, Any], tmp_path: Path) -> RestConnector:
    return RestConnector(RestConnectorConfig.model_validate(config), AppContext(name="hr", data_dir=tmp_path))


@pytest.fixture(autouse=True)
def api_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HR_TEST_API_KEY", API_KEY)
    monkeypatch.setattr(rest_module, "BACKOFF_BASE", 0.01)


@pytest.fixture
def hr_app() -> web.Application:
    return create_hr_app(api_key=API_KEY)


@pytest.fixture
def hr_state(hr_app: web.Application) -> HrState:
    return hr_app[HR_STATE]


@pytest.fixture
async def hr_url(hr_app: web.Application) -> AsyncIterator[str]:
    async with serve(hr_app) as url:
        yield url


@pytest.fixture
async def opened(tmp_path: Path) -> AsyncIterator[Any]:
    """opened(config) -> an opened connector, closed after the test."""
    made: list[RestConnector] = []

    async def open_one(config: dict[str, Any]) -> RestConnector:
        connector = make(config, tmp_path)
        await connector.open()
        made.append(connector)
        return connector

    yield open_one
    for connector in made:
        await connector.close()


@pytest.fixture
async def hr(opened: Any, hr_url: str) -> RestConnector:
    connector: RestConnector = await opened(hr_config(hr_url))
    return connector


def user(login: str, **fields: Any) -> Record:
    return {"login": login, "first_name": "Ada", "last_name": "Lovelace", "email": f"{login}@example.test"} | fields


class TestRestConformance(ConnectorConformance):
    @pytest.fixture
    async def connector(self, opened: Any, hr_url: str, page_size: int) -> RestConnector:
        connector: RestConnector = await opened(hr_config(hr_url, page_size))
        return connector

    @pytest.fixture
    def text_field(self) -> str:
        return "title"

    def sample_user(self, tag: str) -> Record:
        return user(f"user.{tag}", title=f"Title {tag}", department="R&D", status="enabled")

    def sample_group(self, tag: str) -> Record:
        return {"name": f"Team {tag}", "description": f"The {tag} team"}


# ---------------------------------------------------------------- registration and configuration


def test_registered_through_the_entry_point() -> None:
    assert load_registry().get("rest") is RestConnector
    assert RestConnector.Config is RestConnectorConfig


def test_capabilities_follow_the_configuration() -> None:
    full = RestConnectorConfig.model_validate(hr_config(BASE))
    assert RestConnector.capabilities_for(full) == Capabilities(
        membership=True,
        search=True,
        search_ops=frozenset({"eq"}),
        list_all=True,
        read=True,
        actions=frozenset({"disable", "enable"}),
    )
    bare = hr_config(BASE)
    for kind in bare["resources"].values():
        for key in ("search", "list", "members", "actions"):
            kind.pop(key, None)
    bare["resources"]["Group"].pop("get")
    caps = RestConnector.capabilities_for(RestConnectorConfig.model_validate(bare))
    assert caps == Capabilities(membership=False, search=False, list_all=False, read=False, actions=frozenset())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["resources"]["User"]["get"].update(path="/users/{ID}"), "unknown placeholder {ID} (valid: {id})"),
        (lambda c: c["resources"]["User"]["create"].update(path="/users/{id}"), "unknown placeholder {id} (valid: none here)"),
        (
            lambda c: (
                c["resources"]["User"].update(update={"method": "PUT", "path": "/users/{id}"})
                or c["resources"]["User"].pop("get")
            ),
            "an update that sends the whole record (PUT, or send: whole) needs get",
        ),
        (lambda c: c["resources"]["Group"]["members"].update(member_kind="Person"), "unknown kind 'Person' (valid: Group, User)"),
        (
            lambda c: c["resources"]["Group"]["members"]["add"].update(body={"user_id": "{mmber}"}),
            'body.user_id: unknown placeholder {mmber} (valid: "{id}", "{id:int}", "{member}", "{member:int}")',
        ),
        (lambda c: c.update(base_url="ftp://hr.test/api"), "give an absolute http:// or https:// URL"),
        (lambda c: c.update(base_url="https://admin:hunter22@hr.test/api"), "the URL carries credentials"),
        (lambda c: c.update(auth={"type": "bearer", "token": "inline-token"}), "Input should be a valid dictionary"),
        (lambda c: c.update(auth={"type": "kerberos"}), "'none', 'basic', 'bearer', 'api_key', 'oauth2_client_credentials'"),
        (lambda c: c["resources"]["User"]["list"].update(pagination={"type": "pages"}), "'none', 'offset', 'page', 'cursor'"),
    ],
)
def test_config_errors_name_the_problem_and_hide_the_input(change: Any, message: str) -> None:
    config = hr_config(BASE)
    change(config)
    with pytest.raises(ValidationError) as caught:
        RestConnectorConfig.model_validate(config)
    assert message in str(caught.value)
    assert "hunter22" not in str(caught.value) and "inline-token" not in str(caught.value)


async def test_open_names_an_unset_secret_and_opens_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HR_TEST_API_KEY")
    connector = make(hr_config(BASE), tmp_path)
    with pytest.raises(RestSetupError, match="auth.key: environment variable HR_TEST_API_KEY is not set"):
        await connector.open()
    with pytest.raises(RuntimeError, match="not open"):
        await connector.get("User", "1")


async def test_base_url_by_reference(opened: Any, hr_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HR_TEST_URL", hr_url)
    connector = await opened(hr_config({"env": "HR_TEST_URL"}))
    native_id = await connector.create("User", user("byref"))
    assert (await connector.get("User", native_id))["login"] == "byref"


def test_flatten_and_nest_are_inverse() -> None:
    nested = {"id": 1, "profile": {"name": {"first": "Ada", "last": None}, "tags": ["a", "b"]}, "empty": {}}
    flat = flatten(nested)
    assert flat == {"id": 1, "profile.name.first": "Ada", "profile.name.last": None, "profile.tags": ["a", "b"], "empty": {}}
    assert nest(flat) == nested
    with pytest.raises(AppInvalid):
        nest({"profile": "x", "profile.name": "y"})


# ---------------------------------------------------------------- request shapes (aioresponses)


class _Response(ClientResponse):
    """aioresponses 0.7.9 builds responses without aiohttp 3.14's `stream_writer` (pnuckowski/aioresponses#289)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(*args, **kwargs)


class aioresponses(_aioresponses):
    def add(self, url: Any, method: str = "GET", **kwargs: Any) -> None:
        kwargs.setdefault("response_class", _Response)
        super().add(url, method, **kwargs)


def sent(m: aioresponses, method: str, url: str) -> list[Any]:
    return m.requests.get((method, URL(url)), [])


def rest_config(**auth: Any) -> dict[str, Any]:
    return {
        "type": "rest",
        "base_url": BASE,
        "retries": 0,
        "headers": {"X-Tenant": "acme"},
        "auth": auth or {"type": "none"},
        "resources": {
            "User": {
                "create": {"path": "/users"},
                "get": {"path": "/users/{id}"},
                "update": {"path": "/users/{id}"},
                "delete": {"path": "/users/{id}"},
            }
        },
    }


async def test_api_key_in_a_header(opened: Any) -> None:
    connector = await opened(rest_config(type="api_key", key={"env": "HR_TEST_API_KEY"}))
    with aioresponses() as m:
        m.get(f"{BASE}/users/7", payload={"id": 7})
        await connector.get("User", "7")
        (call,) = sent(m, "GET", f"{BASE}/users/7")
    assert call.kwargs["headers"]["X-API-Key"] == API_KEY
    assert call.kwargs["headers"]["X-Tenant"] == "acme"


async def test_api_key_in_the_query(opened: Any) -> None:
    connector = await opened(rest_config(type="api_key", **{"in": "query"}, name="apikey", key={"env": "HR_TEST_API_KEY"}))
    with aioresponses() as m:
        m.get(f"{BASE}/users/7?apikey={API_KEY}", payload={"id": 7})
        assert await connector.get("User", "7") == {"id": 7}
        (call,) = sent(m, "GET", f"{BASE}/users/7?apikey={API_KEY}")
    assert "X-API-Key" not in call.kwargs["headers"]


async def test_basic_auth(opened: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HR_TEST_PASSWORD", "p@ss:word")
    connector = await opened(rest_config(type="basic", username="svc", password={"env": "HR_TEST_PASSWORD"}))
    with aioresponses() as m:
        m.get(f"{BASE}/users/1", payload={"id": 1})
        await connector.get("User", "1")
        (call,) = sent(m, "GET", f"{BASE}/users/1")
    assert call.kwargs["headers"]["Authorization"] == "Basic " + base64.b64encode(b"svc:p@ss:word").decode()


async def test_bearer_auth(opened: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HR_TEST_TOKEN", "static-token-xyz")
    connector = await opened(rest_config(type="bearer", token={"env": "HR_TEST_TOKEN"}))
    with aioresponses() as m:
        m.get(f"{BASE}/users/1", payload={"id": 1})
        await connector.get("User", "1")
        (call,) = sent(m, "GET", f"{BASE}/users/1")
    assert call.kwargs["headers"]["Authorization"] == "Bearer static-token-xyz"


@pytest.mark.parametrize(
    ("auth", "header", "sent_value"),
    [
        ({"scheme": "Token"}, "Authorization", "Token static-token-xyz"),  # Django REST framework
        ({"scheme": "SSWS"}, "Authorization", "SSWS static-token-xyz"),  # Okta's own API
        ({"scheme": "", "header": "X-Auth-Token"}, "X-Auth-Token", "static-token-xyz"),
    ],
)
async def test_token_schemes(
    opened: Any, monkeypatch: pytest.MonkeyPatch, auth: dict[str, str], header: str, sent_value: str
) -> None:
    """The secret holds only the secret: the scheme and the header are options."""
    monkeypatch.setenv("HR_TEST_TOKEN", "static-token-xyz")
    connector = await opened(rest_config(type="bearer", token={"env": "HR_TEST_TOKEN"}, **auth))
    with aioresponses() as m:
        m.get(f"{BASE}/users/1", payload={"id": 1})
        await connector.get("User", "1")
        (call,) = sent(m, "GET", f"{BASE}/users/1")
    assert call.kwargs["headers"][header] == sent_value
    [planned] = connector.plan("get", "User", "1")  # translate's view
    assert "static-token-xyz" not in repr(planned) and planned["headers"][header].endswith("***")


async def test_api_key_prefix(opened: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HR_TEST_KEY", "k-123")
    connector = await opened(rest_config(type="api_key", name="Authorization", prefix="Key ", key={"env": "HR_TEST_KEY"}))
    with aioresponses() as m:
        m.get(f"{BASE}/users/1", payload={"id": 1})
        await connector.get("User", "1")
        (call,) = sent(m, "GET", f"{BASE}/users/1")
    assert call.kwargs["headers"]["Authorization"] == "Key k-123"


async def test_basic_auth_username_by_reference(opened: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Zendesk's `{email}/token` or Freshservice's key-as-username: the user name is a secret too."""
    monkeypatch.setenv("HR_TEST_USER", "agent@acme.example/token")
    monkeypatch.setenv("HR_TEST_PASSWORD", "tok-9")
    connector = await opened(rest_config(type="basic", username={"env": "HR_TEST_USER"}, password={"env": "HR_TEST_PASSWORD"}))
    with aioresponses() as m:
        m.get(f"{BASE}/users/1", payload={"id": 1})
        await connector.get("User", "1")
        (call,) = sent(m, "GET", f"{BASE}/users/1")
    assert call.kwargs["headers"]["Authorization"] == "Basic " + base64.b64encode(b"agent@acme.example/token:tok-9").decode()


@pytest.mark.parametrize(("send", "body"), [(None, {"id": 1, "login": "x", "title": "New"}), ("changed", {"title": "New"})])
async def test_a_put_sends_the_whole_record_or_what_changed(opened: Any, send: str | None, body: dict[str, Any]) -> None:
    """PUT reads, merges and writes the whole record; `send: changed` is for apps whose PUT is a partial update."""
    config = rest_config()
    config["resources"]["User"]["update"] = {"method": "PUT", "path": "/users/{id}", **({"send": send} if send else {})}
    connector = await opened(config)
    with aioresponses() as m:
        m.get(f"{BASE}/users/1", payload={"id": 1, "login": "x", "title": "Old"})
        m.put(f"{BASE}/users/1", payload={})
        await connector.update("User", "1", {"title": "New"})
        (call,) = sent(m, "PUT", f"{BASE}/users/1")
        assert len(m.requests.get(("GET", URL(f"{BASE}/users/1")), [])) == (1 if send is None else 0)
    assert call.kwargs["json"] == body


TOKEN_URL = "https://idp.test/oauth2/token"


def oauth2(**extra: Any) -> dict[str, Any]:
    return {
        "type": "oauth2_client_credentials",
        "token_url": TOKEN_URL,
        "client_id": "gw-client",
        "client_secret": {"env": "HR_TEST_CLIENT_SECRET"},
        **extra,
    }


@pytest.fixture
def client_secret(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("HR_TEST_CLIENT_SECRET", "cl1ent-s3cret")
    return "cl1ent-s3cret"


async def test_oauth2_token_is_fetched_once_and_cached(opened: Any, client_secret: str) -> None:
    connector = await opened(rest_config(**oauth2(scope="hr.read hr.write", audience="https://hr.test")))
    with aioresponses() as m:
        m.post(TOKEN_URL, payload={"access_token": "tok-1", "token_type": "Bearer", "expires_in": 3600})
        m.get(f"{BASE}/users/1", payload={"id": 1}, repeat=True)
        await connector.get("User", "1")
        await connector.get("User", "1")
        (token_call,) = sent(m, "POST", TOKEN_URL)
        calls = sent(m, "GET", f"{BASE}/users/1")
    assert token_call.kwargs["data"] == {
        "grant_type": "client_credentials",
        "scope": "hr.read hr.write",
        "audience": "https://hr.test",
    }
    assert (
        token_call.kwargs["headers"]["Authorization"]
        == "Basic " + base64.b64encode(f"gw-client:{client_secret}".encode()).decode()
    )
    assert "X-Tenant" not in token_call.kwargs["headers"]  # the app's own headers never go to the IdP
    assert [c.kwargs["headers"]["Authorization"] for c in calls] == ["Bearer tok-1", "Bearer tok-1"]


async def test_oauth2_token_url_by_reference(opened: Any, client_secret: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HR_TEST_TOKEN_URL", "https://other-idp.test/token")
    connector = await opened(rest_config(**oauth2(token_url={"env": "HR_TEST_TOKEN_URL"})))
    with aioresponses() as m:
        m.post("https://other-idp.test/token", payload={"access_token": "tok-r", "expires_in": 3600})
        m.get(f"{BASE}/users/1", payload={"id": 1})
        await connector.get("User", "1")
        (call,) = sent(m, "GET", f"{BASE}/users/1")
    assert call.kwargs["headers"]["Authorization"] == "Bearer tok-r"


async def test_oauth2_client_secret_in_the_body(opened: Any, client_secret: str) -> None:
    connector = await opened(rest_config(**oauth2(client_auth="body")))
    with aioresponses() as m:
        m.post(TOKEN_URL, payload={"access_token": "tok-1", "expires_in": 3600})
        m.get(f"{BASE}/users/1", payload={"id": 1})
        await connector.get("User", "1")
        (token_call,) = sent(m, "POST", TOKEN_URL)
    assert token_call.kwargs["data"] == {
        "grant_type": "client_credentials",
        "client_id": "gw-client",
        "client_secret": client_secret,
    }
    assert "Authorization" not in token_call.kwargs["headers"]


async def test_oauth2_token_is_refreshed_shortly_before_it_expires(opened: Any, client_secret: str) -> None:
    connector = await opened(rest_config(**oauth2()))
    now = [1000.0]
    connector._http.oauth2.clock = lambda: now[0]
    with aioresponses() as m:
        m.post(TOKEN_URL, payload={"access_token": "tok-1", "expires_in": 100})
        m.post(TOKEN_URL, payload={"access_token": "tok-2", "expires_in": 100})
        m.get(f"{BASE}/users/1", payload={"id": 1}, repeat=True)
        await connector.get("User", "1")
        now[0] += 89  # 11 s left: still good
        await connector.get("User", "1")
        now[0] += 2  # 9 s left of 100: within the margin, refreshed before it runs out
        await connector.get("User", "1")
        calls = sent(m, "GET", f"{BASE}/users/1")
        assert len(sent(m, "POST", TOKEN_URL)) == 2
    assert [c.kwargs["headers"]["Authorization"] for c in calls] == ["Bearer tok-1", "Bearer tok-1", "Bearer tok-2"]


async def test_oauth2_refreshed_once_on_401_then_the_call_retried(opened: Any, client_secret: str) -> None:
    connector = await opened(rest_config(**oauth2()))
    with aioresponses() as m:
        m.post(TOKEN_URL, payload={"access_token": "revoked", "expires_in": 3600})
        m.post(TOKEN_URL, payload={"access_token": "fresh", "expires_in": 3600})
        m.post(f"{BASE}/users", status=401, payload={"error": "invalid_token"})
        m.post(f"{BASE}/users", status=201, payload={"id": 9})
        assert await connector.create("User", {"login": "x"}) == "9"
        calls = sent(m, "POST", f"{BASE}/users")
    assert [c.kwargs["headers"]["Authorization"] for c in calls] == ["Bearer revoked", "Bearer fresh"]


async def test_oauth2_a_second_401_is_refused_credentials(opened: Any, client_secret: str) -> None:
    connector = await opened(rest_config(**oauth2()))
    with aioresponses() as m:
        m.post(TOKEN_URL, payload={"access_token": "tok-a", "expires_in": 3600}, repeat=True)
        m.get(f"{BASE}/users/1", status=401, payload={"error": "nope"}, repeat=True)
        with pytest.raises(AppUnavailable, match="refused the gateway's credentials") as caught:
            await connector.get("User", "1")
        assert len(sent(m, "GET", f"{BASE}/users/1")) == 2
        assert len(sent(m, "POST", TOKEN_URL)) == 2
    assert "tok-a" not in str(caught.value)


async def test_oauth2_token_endpoint_refusal(opened: Any, client_secret: str) -> None:
    connector = await opened(rest_config(**oauth2()))
    with aioresponses() as m:
        m.post(TOKEN_URL, status=401, payload={"error": "invalid_client"})
        with pytest.raises(AppUnavailable, match="token endpoint refused the gateway's client credentials") as caught:
            await connector.get("User", "1")
    assert client_secret not in str(caught.value)


ITEMS = [{"id": i, "login": f"u{i}"} for i in range(1, 6)]


def paged_config(pagination: dict[str, Any], items: str | None = "data") -> dict[str, Any]:
    config = rest_config()
    config["resources"]["User"]["list"] = {"path": "/users", "items": items, "pagination": pagination}
    return config


async def listed(connector: RestConnector) -> list[str]:
    return [native_id async for native_id, _ in connector.list_all("User")]


async def test_pagination_none(opened: Any) -> None:
    connector = await opened(paged_config({"type": "none"}, items=None))
    with aioresponses() as m:
        m.get(f"{BASE}/users", payload=ITEMS)
        assert await listed(connector) == ["1", "2", "3", "4", "5"]


async def test_pagination_offset(opened: Any) -> None:
    connector = await opened(paged_config({"type": "offset", "offset_param": "skip", "limit_param": "take", "size": 3}))
    with aioresponses() as m:
        m.get(f"{BASE}/users?skip=0&take=3", payload={"data": ITEMS[:2]})  # the app caps pages at 2
        m.get(f"{BASE}/users?skip=2&take=3", payload={"data": ITEMS[2:4]})
        m.get(f"{BASE}/users?skip=4&take=3", payload={"data": ITEMS[4:]})
        m.get(f"{BASE}/users?skip=5&take=3", payload={"data": []})
        assert await listed(connector) == ["1", "2", "3", "4", "5"]


async def test_pagination_page(opened: Any) -> None:
    connector = await opened(paged_config({"type": "page", "page_param": "p", "size_param": "n", "size": 2, "start": 0}))
    with aioresponses() as m:
        m.get(f"{BASE}/users?p=0&n=2", payload={"data": ITEMS[:2]})
        m.get(f"{BASE}/users?p=1&n=2", payload={"data": ITEMS[2:4]})
        m.get(f"{BASE}/users?p=2&n=2", payload={"data": ITEMS[4:]})
        m.get(f"{BASE}/users?p=3&n=2", payload={"data": []})
        assert await listed(connector) == ["1", "2", "3", "4", "5"]


@pytest.mark.parametrize(
    ("pagination", "pages"),
    [
        # page numbers with the app's page count (GitHub-style apps, Zendesk's page_count)
        ({"type": "page", "size": 2, "total_pages": "meta.pages"}, [{"meta": {"pages": 3}}] * 3),
        # page numbers with a total of items
        ({"type": "page", "size": 2, "total": "total"}, [{"total": 5}] * 3),
        # offsets with a total (Jira, Atlassian: total; Freshservice-like)
        ({"type": "offset", "size": 2, "total": "total"}, [{"total": 5}] * 3),
        # a more-pages flag (Slack's has_more, Stripe's has_more)
        ({"type": "offset", "size": 2, "has_more": "has_more"}, [{"has_more": True}, {"has_more": True}, {"has_more": False}]),
        # a short page is the last, where the app says it never answers fewer before the end
        ({"type": "page", "size": 2, "short_page_ends": True}, [{}, {}, {}]),
    ],
    ids=["page-count", "page-total", "offset-total", "has-more", "short-page"],
)
async def test_pagination_stops_on_the_apps_signal(opened: Any, pagination: dict[str, Any], pages: list[dict[str, Any]]) -> None:
    """Five records in pages of two: three calls, never a fourth for an empty page (aioresponses refuses any call
    it was not given)."""
    connector = await opened(paged_config(pagination))
    with aioresponses() as m:
        for i, extra in enumerate(pages):
            if pagination["type"] == "page":
                url = f"{BASE}/users?page={i + 1}&per_page=2"
            else:
                url = f"{BASE}/users?offset={2 * i}&limit=2"
            m.get(url, payload={"data": ITEMS[2 * i : 2 * i + 2], **extra})
        assert await listed(connector) == ["1", "2", "3", "4", "5"]
        assert sum(len(calls) for calls in m.requests.values()) == 3


async def test_pagination_page_that_ignores_the_page_parameter_is_refused(opened: Any) -> None:
    connector = await opened(paged_config({"type": "page", "size": 2}))
    with aioresponses() as m:
        m.get(f"{BASE}/users?page=1&per_page=2", payload={"data": ITEMS[:2]})
        m.get(f"{BASE}/users?page=2&per_page=2", payload={"data": ITEMS[:2]})
        with pytest.raises(AppBadResponse, match="same page twice"):
            await listed(connector)


async def test_pagination_cursor(opened: Any) -> None:
    connector = await opened(paged_config({"type": "cursor", "next_cursor": "meta.next", "size_param": "limit", "size": 3}))
    with aioresponses() as m:
        m.get(f"{BASE}/users?limit=3", payload={"data": ITEMS[:3], "meta": {"next": "c2"}})
        m.get(f"{BASE}/users?limit=3&cursor=c2", payload={"data": ITEMS[3:], "meta": {"next": None}})
        assert await listed(connector) == ["1", "2", "3", "4", "5"]


async def test_pagination_next_link(opened: Any) -> None:
    connector = await opened(paged_config({"type": "next_link", "next": "links.next"}))
    with aioresponses() as m:
        m.get(f"{BASE}/users", payload={"data": ITEMS[:3], "links": {"next": "/api/users?after=3"}})  # relative
        m.get(f"{BASE}/users?after=3", payload={"data": ITEMS[3:], "links": {"next": f"{BASE}/users?after=5"}})
        m.get(f"{BASE}/users?after=5", payload={"data": [], "links": {}})
        assert await listed(connector) == ["1", "2", "3", "4", "5"]


async def test_pagination_next_link_to_another_host_is_not_followed(opened: Any) -> None:
    connector = await opened(paged_config({"type": "next_link", "next": "next"}))
    with aioresponses() as m:
        m.get(f"{BASE}/users", payload={"data": ITEMS[:3], "next": "https://evil.test/steal"})
        with pytest.raises(AppBadResponse, match="another host"):
            await listed(connector)
        assert not sent(m, "GET", "https://evil.test/steal")


async def test_pagination_link_header(opened: Any) -> None:
    connector = await opened(paged_config({"type": "link_header", "size_param": "per_page", "size": 3}, items=None))
    with aioresponses() as m:
        m.get(f"{BASE}/users?per_page=3", payload=ITEMS[:3], headers={"Link": f'<{BASE}/users?per_page=3&page=2>; rel="next"'})
        m.get(
            f"{BASE}/users?per_page=3&page=2",
            payload=ITEMS[3:],
            headers={"Link": f'<{BASE}/users?per_page=3&page=1>; rel="prev"'},
        )
        assert await listed(connector) == ["1", "2", "3", "4", "5"]


async def test_put_update_reads_merges_and_writes_the_whole_record(opened: Any) -> None:
    config = rest_config()
    config["resources"]["User"]["update"] = {"method": "PUT", "path": "/users/{id}"}
    connector = await opened(config)
    current = {"id": 4, "login": "ada", "profile": {"name": {"first": "Ada", "last": "Byron"}, "phones": ["1"]}, "title": "Eng"}
    with aioresponses() as m:
        m.get(f"{BASE}/users/4", payload=current)
        m.put(f"{BASE}/users/4", payload={})
        await connector.update("User", "4", {"profile.name.last": "Lovelace", "title": None})
        (put,) = sent(m, "PUT", f"{BASE}/users/4")
    assert put.kwargs["json"] == {
        "id": 4,
        "login": "ada",
        "profile": {"name": {"first": "Ada", "last": "Lovelace"}, "phones": ["1"]},
        "title": None,
    }


async def test_put_update_of_a_missing_record_is_not_found(opened: Any) -> None:
    config = rest_config()
    config["resources"]["User"]["update"] = {"method": "PUT", "path": "/users/{id}"}
    connector = await opened(config)
    with aioresponses() as m:
        m.get(f"{BASE}/users/4", status=404)
        with pytest.raises(AppNotFound):
            await connector.update("User", "4", {"title": "x"})
        assert not sent(m, "PUT", f"{BASE}/users/4")


async def test_envelope_and_record_path(opened: Any) -> None:
    config = rest_config()
    config["resources"]["User"] |= {"envelope": "user", "record": "data", "id": "user_id"}
    connector = await opened(config)
    with aioresponses() as m:
        m.post(f"{BASE}/users", status=201, payload={"data": {"user_id": "u-1", "login": "ada"}})
        m.get(f"{BASE}/users/u-1", payload={"data": {"user_id": "u-1", "login": "ada", "name": {"first": "Ada"}}})
        m.patch(f"{BASE}/users/u-1", payload={})
        assert await connector.create("User", {"login": "ada", "name.first": "Ada"}) == "u-1"
        assert await connector.get("User", "u-1") == {"user_id": "u-1", "login": "ada", "name.first": "Ada"}
        await connector.update("User", "u-1", {"name.first": "Ida"})
        (post,) = sent(m, "POST", f"{BASE}/users")
        (patch,) = sent(m, "PATCH", f"{BASE}/users/u-1")
    assert post.kwargs["json"] == {"user": {"login": "ada", "name": {"first": "Ada"}}}
    assert patch.kwargs["json"] == {"user": {"name": {"first": "Ida"}}}


async def test_create_without_body_takes_the_id_from_location(opened: Any) -> None:
    connector = await opened(rest_config())
    with aioresponses() as m:
        m.post(f"{BASE}/users", status=201, body="", headers={"Location": f"{BASE}/users/abc-42"})
        assert await connector.create("User", {"login": "x"}) == "abc-42"


async def test_ids_are_quoted_in_paths(opened: Any) -> None:
    connector = await opened(rest_config())
    with aioresponses() as m:
        m.get(f"{BASE}/users/a%2Fb%3Fc%20d", payload={"id": "a/b?c d"})
        assert await connector.get("User", "a/b?c d") == {"id": "a/b?c d"}


async def test_a_member_list_of_bare_ids(opened: Any) -> None:
    """A team's members answered as {"uids": [7, 9]}: `member_id: null` says each item is the id itself."""
    config = rest_config()
    config["resources"]["Group"] = copy.deepcopy(config["resources"]["User"]) | {
        "members": {
            "member_kind": "User",
            "add": {"path": "/teams/{id}/members/{member}", "method": "PUT"},
            "remove": {"path": "/teams/{id}/members/{member}"},
            "list": {"path": "/teams/{id}/members", "items": "uids", "member_id": None},
        }
    }
    connector = await opened(config)
    with aioresponses() as m:
        m.get(f"{BASE}/teams/5/members", payload={"uids": [7, "9", 7]})
        assert await connector.list_members("Group", "5") == [("User", "7"), ("User", "9")]
        m.get(f"{BASE}/teams/5/members", payload={"uids": [{"id": 7}]})
        with pytest.raises(AppBadResponse, match="each item should be an id"):
            await connector.list_members("Group", "5")


async def test_member_and_action_bodies(opened: Any) -> None:
    config = rest_config()
    config["resources"]["Group"] = copy.deepcopy(config["resources"]["User"]) | {
        "members": {
            "member_kind": "User",
            "add": {
                "method": "PUT",
                "path": "/groups/{id}/members/{member}",
                "body": {"member": {"id": "{member:int}", "role": "user"}},
            },
            "remove": {"path": "/groups/{id}/members/{member}"},
            "list": {"path": "/groups/{id}/members", "member_id": "user.id"},
        },
        "actions": {"archive": {"path": "/groups/{id}/archive", "body": {"group": "{id}", "reason": "scim"}}},
    }
    connector = await opened(config)
    with aioresponses() as m:
        m.put(f"{BASE}/groups/3/members/5", status=204)
        m.delete(f"{BASE}/groups/3/members/6", status=404)  # not a member: fine
        m.get(f"{BASE}/groups/3/members", payload=[{"user": {"id": 5}}, {"user": {"id": 5}}])
        m.post(f"{BASE}/groups/3/archive", status=204)
        await connector.add_members("Group", "3", [("User", "5"), ("User", "5")])
        await connector.remove_members("Group", "3", [("User", "6")])
        assert await connector.list_members("Group", "3") == [("User", "5")]
        await connector.action("Group", "3", "archive")
        (put,) = sent(m, "PUT", f"{BASE}/groups/3/members/5")
        (post,) = sent(m, "POST", f"{BASE}/groups/3/archive")
    assert put.kwargs["json"] == {"member": {"id": 5, "role": "user"}}
    assert post.kwargs["json"] == {"group": "3", "reason": "scim"}


@pytest.mark.parametrize(
    ("status", "payload", "error", "detail"),
    [
        (409, {"error": "login already taken"}, AppConflict, "HTTP 409: login already taken"),
        (422, {"errors": [{"message": "email is invalid"}]}, AppInvalid, "HTTP 422: email is invalid"),
        (400, {"message": "bad field"}, AppInvalid, "HTTP 400: bad field"),
        (403, {"message": "forbidden"}, AppUnavailable, "refused the gateway's credentials"),
        (502, {"message": "upstream"}, AppUnavailable, "HTTP 502"),
    ],
)
async def test_app_status_becomes_an_app_error(opened: Any, status: int, payload: Any, error: type, detail: str) -> None:
    connector = await opened(rest_config())
    with aioresponses() as m:
        m.post(f"{BASE}/users", status=status, payload=payload)
        with pytest.raises(error) as caught:
            await connector.create("User", {"login": "x"})
    assert detail in caught.value.detail


async def test_the_apps_message_never_carries_a_secret(opened: Any) -> None:
    connector = await opened(rest_config(type="api_key", key={"env": "HR_TEST_API_KEY"}))
    with aioresponses() as m:
        m.post(f"{BASE}/users", status=422, payload={"error": f"key {API_KEY} may not create users"})
        with pytest.raises(AppInvalid) as caught:
            await connector.create("User", {"login": "x"})
    assert API_KEY not in str(caught.value) and "key *** may not" in caught.value.detail


# ---------------------------------------------------------------- plan (dry run)


async def test_plan_masks_every_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, client_secret: str) -> None:
    monkeypatch.setenv("HR_TEST_PASSWORD", "pw-very-secret")
    monkeypatch.setenv("HR_TEST_TENANT", "tenant-secret")
    cases = {
        "api_key": ({"type": "api_key", "key": {"env": "HR_TEST_API_KEY"}}, ("X-API-Key", "***")),
        "basic": ({"type": "basic", "username": "svc", "password": {"env": "HR_TEST_PASSWORD"}}, ("Authorization", "Basic ***")),
        "oauth2": (oauth2(), ("Authorization", "Bearer ***")),
    }
    for auth, (header, masked) in cases.values():
        config = rest_config(**auth) | {"headers": {"X-Tenant": {"env": "HR_TEST_TENANT"}}}
        connector = make(config, tmp_path)
        await connector.open()
        try:
            (call,) = connector.plan("create", "User", record={"login": "ada", "name.first": "Ada"})
        finally:
            await connector.close()
        assert call == {
            "method": "POST",
            "url": f"{BASE}/users",
            "headers": {"Accept": "application/json", "X-Tenant": "***", header: masked},
            "body": {"login": "ada", "name": {"first": "Ada"}},
        }
        text = json.dumps(call)
        for secret in (API_KEY, "pw-very-secret", client_secret, "tenant-secret"):
            assert secret not in text


def test_plan_masks_a_query_api_key_and_calls_nothing(tmp_path: Path) -> None:
    config = hr_config(BASE, auth={"type": "api_key", "in": "query", "name": "key", "key": {"env": "HR_TEST_API_KEY"}})
    connector = make(config, tmp_path)  # never opened: a plan calls nothing
    (call,) = connector.plan("get", "User", "7")
    assert call["url"] == f"{BASE}/users/7?key=***"
    calls = connector.plan("add_members", "Group", "3", members=[("User", "5"), ("User", "6")])
    assert [(c["method"], c["url"], c["body"]) for c in calls] == [
        ("POST", f"{BASE}/groups/3/members?key=***", {"user_id": "5"}),
        ("POST", f"{BASE}/groups/3/members?key=***", {"user_id": "6"}),
    ]
    (call,) = connector.plan("disable", "User", "7")
    assert (call["method"], call["url"]) == ("POST", f"{BASE}/users/7/disable?key=***")
    assert API_KEY not in json.dumps(calls)


def test_plan_of_a_put_update_reads_first(tmp_path: Path) -> None:
    config = rest_config()
    config["resources"]["User"]["update"] = {"method": "PUT", "path": "/users/{id}"}
    get, put = make(config, tmp_path).plan("update", "User", "1", record={"title": "x"})
    assert (get["method"], put["method"], put["body"]) == ("GET", "PUT", {"title": "x"})
    (get,) = make(config, tmp_path).plan("get", "User")
    assert get["url"] == f"{BASE}/users/{{id}}"


def test_plan_with_base_url_by_reference_names_the_reference(tmp_path: Path) -> None:
    (call,) = make(rest_config() | {"base_url": {"env": "HR_TEST_URL_UNSET"}}, tmp_path).plan("delete", "User", "1")
    assert call["url"] == "{environment variable HR_TEST_URL_UNSET}/users/1"


# ---------------------------------------------------------------- rate limit


async def test_token_bucket_limits_calls_per_second() -> None:
    bucket = TokenBucket(20)
    start = time.monotonic()
    for _ in range(30):  # 20 at once, then 10 more at 20 per second
        await bucket.acquire()
    assert 0.4 <= time.monotonic() - start < 2


async def test_rate_limit_applies_to_the_apps_calls(opened: Any, hr_url: str) -> None:
    connector = await opened(hr_config(hr_url, rate_limit=10))
    start = time.monotonic()
    await asyncio.gather(*(connector.get("User", "1") for _ in range(13)))
    assert time.monotonic() - start >= 0.25


# ---------------------------------------------------------------- the app's faults, over real HTTP


async def test_find_and_actions_against_the_app(hr: RestConnector, hr_state: HrState) -> None:
    native_id = await hr.create("User", user("Grace.Hopper"))
    await hr.create("User", user("grace"))
    assert [i for i, _ in await hr.find("User", "login", "GRACE.HOPPER")] == [native_id]
    await hr.action("User", native_id, "disable")
    assert hr_state.users[int(native_id)]["status"] == "disabled"
    await hr.action("User", native_id, "enable")
    assert hr_state.users[int(native_id)]["status"] == "enabled"


async def test_500_is_unavailable_after_the_retries(hr: RestConnector, hr_state: HrState) -> None:
    hr_state.fault("GET", r"/users/\d+", status=500, times=10)
    with pytest.raises(AppUnavailable, match="HTTP 500") as caught:
        await hr.get("User", "1")
    assert caught.value.retry_after == 5
    assert len([c for c in hr_state.calls if c[0] == "GET"]) == 3  # 1 + retries: 2


async def test_get_is_retried_and_then_succeeds(hr: RestConnector, hr_state: HrState) -> None:
    native_id = await hr.create("User", user("retry"))
    hr_state.fault("GET", rf"/users/{native_id}", status=503, body="busy", content_type="text/plain")
    assert (await hr.get("User", native_id))["login"] == "retry"
    assert hr_state.calls.count(("GET", f"/users/{native_id}")) == 2


async def test_post_is_never_retried(hr: RestConnector, hr_state: HrState) -> None:
    hr_state.fault("POST", "/users", status=503, headers={"Retry-After": "7"})
    with pytest.raises(AppUnavailable) as caught:
        await hr.create("User", user("once"))
    assert caught.value.retry_after == 7
    assert hr_state.calls == [("POST", "/users")]
    assert hr_state.users == {}


async def test_429_waits_retry_after_then_succeeds(hr: RestConnector, hr_state: HrState) -> None:
    native_id = await hr.create("User", user("patient"))
    hr_state.fault("GET", rf"/users/{native_id}", status=429, body='{"error": "slow down"}', headers={"Retry-After": "1"})
    start = time.monotonic()
    assert (await hr.get("User", native_id))["login"] == "patient"
    assert time.monotonic() - start >= 0.95


async def test_429_asking_for_longer_than_the_cap_passes_retry_after_on(hr: RestConnector, hr_state: HrState) -> None:
    hr_state.fault("GET", r"/users/1", status=429, headers={"Retry-After": "120"})
    start = time.monotonic()
    with pytest.raises(AppUnavailable, match="rate limiting") as caught:
        await hr.get("User", "1")
    assert caught.value.retry_after == 120
    assert time.monotonic() - start < 1
    assert hr_state.calls == [("GET", "/users/1")]


async def test_html_body_is_a_bad_response(hr: RestConnector, hr_state: HrState) -> None:
    hr_state.fault("GET", r"/users/1", status=200, body="<html><body>Please log in</body></html>", content_type="text/html")
    with pytest.raises(AppBadResponse, match="HTML") as caught:
        await hr.get("User", "1")
    assert "log in" not in str(caught.value)


async def test_truncated_json_is_a_bad_response(hr: RestConnector, hr_state: HrState) -> None:
    hr_state.fault("POST", "/users", status=201, body='{"id": 12, "login": "cut')
    with pytest.raises(AppBadResponse, match="not JSON"):
        await hr.create("User", user("cut"))


async def test_created_record_without_id_is_a_bad_response(hr: RestConnector, hr_state: HrState) -> None:
    hr_state.fault("POST", "/users", status=201, body='{"login": "noid"}')
    with pytest.raises(AppBadResponse, match="no id at 'id'"):
        await hr.create("User", user("noid"))


async def test_slow_answer_past_the_timeout_is_unavailable(opened: Any, hr_url: str, hr_state: HrState) -> None:
    connector = await opened(hr_config(hr_url, timeout=0.3, retries=0))
    hr_state.fault("GET", r"/users/1", status=None, delay=1.0)
    start = time.monotonic()
    with pytest.raises(AppUnavailable, match="within 0.3 s"):
        await connector.get("User", "1")
    assert time.monotonic() - start < 0.9


async def test_connection_refused_is_unavailable(opened: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    connector = await opened(hr_config(f"http://127.0.0.1:{port}/api", retries=1))
    with pytest.raises(AppUnavailable, match="cannot connect to the app") as caught:
        await connector.get("User", "1")
    assert caught.value.retry_after == 5


async def test_wrong_api_key_is_refused_credentials(opened: Any, hr_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HR_TEST_API_KEY", "wrong-key-0000")
    connector = await opened(hr_config(hr_url))
    with pytest.raises(AppUnavailable, match="refused the gateway's credentials") as caught:
        await connector.create("User", user("denied"))
    assert "wrong-key-0000" not in str(caught.value)


async def test_member_add_of_an_unknown_user_is_invalid(hr: RestConnector) -> None:
    group = await hr.create("Group", {"name": "Ops"})
    with pytest.raises(AppInvalid, match="no such user"):
        await hr.add_members("Group", group, [("User", "424242")])
    with pytest.raises(AppNotFound):
        await hr.add_members("Group", "424242", [("User", "1")])


async def test_check_schema_reads_the_first_page_of_each_list(opened: Any, hr_url: str, hr_state: HrState) -> None:
    connector = await opened(hr_config(hr_url))
    assert await connector.check_schema() == []
    config = hr_config(hr_url)
    config["resources"]["Group"]["list"]["path"] = "/teams"
    connector = await opened(config)
    assert await connector.check_schema() == [(("resources", "Group", "list", "path"), "the app has no /teams (HTTP 404)")]


async def test_a_post_the_app_refused_with_429_is_sent_again(hr: RestConnector, hr_state: HrState) -> None:
    """429 means the app did nothing: safe to repeat even a create."""
    hr_state.fault("POST", "/users", status=429, body='{"error": "slow down"}', headers={"Retry-After": "0"})
    native_id = await hr.create("User", user("again"))
    assert hr_state.calls.count(("POST", "/users")) == 2
    assert [u["login"] for u in hr_state.users.values()] == ["again"] and str(native_id)


async def test_a_post_that_never_connected_is_sent_again_once_the_app_listens(opened: Any) -> None:
    """Connection refused: the app never saw the create, so repeating it cannot create twice."""
    port = free_port()
    app = create_hr_app(api_key=API_KEY)
    runner = web.AppRunner(app)
    await runner.setup()

    async def come_up_later() -> None:
        await asyncio.sleep(0.05)
        await web.TCPSite(runner, "127.0.0.1", port).start()

    try:
        connector = await opened(
            hr_config(f"http://127.0.0.1:{port}/api", retries=10)
        )  # backoff is shortened here: ~0.5 s in all
        starter = asyncio.create_task(come_up_later())
        native_id = await connector.create("User", user("late"))
        await starter
        assert [u["login"] for u in app[HR_STATE].users.values()] == ["late"] and native_id
    finally:
        await runner.cleanup()
