"""The route table: every endpoint under an app's SCIM base URL, `/apps/{app}/scim/v2`.

Declared, not parsed: one route per endpoint, each a view whose methods are the ones allowed (the router
answers 405 for the others). Endpoint names match in any case (`/serviceproviderconfig`), and the doubled
or trailing slashes that a base URL configured with a final "/" produces are accepted.
"""

from __future__ import annotations

from aiohttp import web

from . import views

BASE = "/apps/{app}/scim/v2"
# The hub's base URL: `hub` in the match info says the request is the hub's (gateway/hub).
HUB_BASE = "/{hub:hub}/scim/v2"


def under_base(*segments: str, base: str = BASE) -> str:
    """A route path below the base URL: `segments` joined by one or more slashes, any trailing slashes allowed."""
    path = base
    for i, segment in enumerate(segments):
        path += f"{{_s{i}:/+}}{segment}"
    return path + "{_end:/*}"


def word(name: str, var: str = "_w") -> str:
    """A fixed path segment, matched in any case."""
    return f"{{{var}:(?i:{name})}}"


# The fixed endpoints: no resource endpoint has their names, so resource routes, tried first, leave them alone.
FIXED = r"(?i:ServiceProviderConfig|ResourceTypes|Schemas|Bulk|Me|\.search)"
ENDPOINT = f"{{endpoint:(?!{FIXED}(?:/|$))[^/]+}}"
ID = r"{id:(?!\.search(?:/|$))[^/]+}"


def setup_routes(app: web.Application, *, hub: bool = False) -> None:
    """The routes under every app's base URL; with `hub`, the same under the hub's, /hub/scim/v2 (docs/hub.md)."""
    _scim_routes(app.router, BASE)
    if hub:
        _scim_routes(app.router, HUB_BASE)
        app.router.add_route("GET", "/hub/status", views.hub_status)


def _scim_routes(router: web.UrlDispatcher, base: str) -> None:
    def at(*segments: str) -> str:
        return under_base(*segments, base=base)

    # Most requests first: the router tries routes in order.
    router.add_view(at(ENDPOINT, ID), views.ResourceView)
    router.add_view(at(ENDPOINT), views.ResourcesView)
    router.add_view(at(ENDPOINT, ".search"), views.ResourceSearchView)
    router.add_view(at(word("ServiceProviderConfig")), views.ServiceProviderConfigView)
    router.add_view(at(word("ResourceTypes")), views.ResourceTypesView)
    router.add_view(at(word("ResourceTypes"), "{name}"), views.ResourceTypesView)
    router.add_view(at(word("Schemas")), views.SchemasView)
    router.add_view(at(word("Schemas"), "{urn}"), views.SchemasView)
    router.add_view(at(word("Bulk")), views.BulkView)
    router.add_view(at(word(r"\.search")), views.SearchAllView)
    router.add_route("*", at(word("Me")) + "{tail:(/.*)?}", views.me)
    router.add_route("*", at(), views.base_url)
    router.add_route("*", base + "/{tail:.*}", views.no_endpoint)
    # Anything else is the router's 404, answered as a SCIM error by the error middleware.


__all__ = ["BASE", "HUB_BASE", "setup_routes"]
