"""The route table: which view answers which path under an app's base URL (names in any case, the doubled and
trailing slashes of a base URL configured with a final "/"), resolved by aiohttp's own router."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from gateway.http import views
from gateway.http.routes import setup_routes

BASE = "/apps/demo/scim/v2"


@pytest.fixture(scope="module")
def app() -> web.Application:
    app = web.Application()
    setup_routes(app)
    return app


async def resolve(app: web.Application, path: str, method: str = "GET") -> tuple[Any, dict[str, str]]:
    match = await app.router.resolve(make_mocked_request(method, path, app=app))
    return match.handler, {k: v for k, v in match.items() if not k.startswith("_")}


@pytest.mark.parametrize(
    ("path", "handler", "info"),
    [
        ("/Users/2819c223", views.ResourceView, {"endpoint": "Users", "id": "2819c223"}),
        ("/Groups/g-1", views.ResourceView, {"endpoint": "Groups", "id": "g-1"}),
        ("/Users", views.ResourcesView, {"endpoint": "Users"}),
        ("/users", views.ResourcesView, {"endpoint": "users"}),  # the view resolves the resource type in any case
        ("/Users/", views.ResourcesView, {"endpoint": "Users"}),
        ("//Users", views.ResourcesView, {"endpoint": "Users"}),
        ("//Users//2819c223/", views.ResourceView, {"endpoint": "Users", "id": "2819c223"}),
        ("/Users/.search", views.ResourceSearchView, {"endpoint": "Users"}),
        ("/.search", views.SearchAllView, {}),
        ("/ServiceProviderConfig", views.ServiceProviderConfigView, {}),
        ("/serviceproviderconfig", views.ServiceProviderConfigView, {}),
        ("/ResourceTypes", views.ResourceTypesView, {}),
        ("/ResourceTypes/User", views.ResourceTypesView, {"name": "User"}),
        ("/Schemas", views.SchemasView, {}),
        (
            "/schemas/urn:ietf:params:scim:schemas:core:2.0:User",
            views.SchemasView,
            {"urn": "urn:ietf:params:scim:schemas:core:2.0:User"},
        ),
        ("/Bulk", views.BulkView, {}),
        ("/BULK", views.BulkView, {}),
        ("/Me", views.me, {"tail": ""}),
        ("/Me/x", views.me, {"tail": "/x"}),
        ("", views.base_url, {}),
        ("/", views.base_url, {}),
        ("/Users/1/extra", views.no_endpoint, {"tail": "Users/1/extra"}),
        ("/Bulkier", views.ResourcesView, {"endpoint": "Bulkier"}),  # a name that only starts like a fixed one
        ("/Schemas/a/b", views.no_endpoint, {"tail": "Schemas/a/b"}),
    ],
)
async def test_each_path_has_its_view(app: web.Application, path: str, handler: Any, info: dict[str, str]) -> None:
    found, match_info = await resolve(app, BASE + path)
    assert found is handler, (path, found)
    assert {k: v for k, v in match_info.items() if k != "app"} == info
    assert match_info["app"] == "demo"


async def test_a_method_the_view_lacks_is_the_routers_405(app: web.Application) -> None:
    for path, method in (("/Bulk", "GET"), ("/Users/1", "POST"), ("/ServiceProviderConfig", "PUT"), ("/Users/.search", "GET")):
        handler, _ = await resolve(app, BASE + path, method)
        request = make_mocked_request(method, BASE + path, app=app)
        with pytest.raises(web.HTTPMethodNotAllowed):
            await handler(request)


async def test_paths_outside_a_base_url_have_no_route(app: web.Application) -> None:
    for path in ("/", "/apps/demo", "/apps/demo/scim/v2x/Users", "/APPS/demo/scim/v2/Users"):
        match = await app.router.resolve(make_mocked_request("GET", path, app=app))
        assert isinstance(match.http_exception, web.HTTPNotFound), path
