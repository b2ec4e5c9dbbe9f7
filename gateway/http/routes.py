"""The route table: every endpoint under an app's SCIM base URL, `/apps/{app}/scim/v2`.

Declared, not parsed: one route per endpoint, each a view whose methods are the ones allowed (the router
answers 405 for the others). Endpoint names match in any case (`/serviceproviderconfig`), and the doubled
or trailing slashes that a base URL configured with a final "/" produces are accepted.
"""

from __future__ import annotations

from aiohttp import web

from . import views

BASE = "/apps/{app}/scim/v2"


def under_base(*segments: str) -> str:
    """A route path below the base URL: `segments` joined by one or more slashes, any trailing slashes allowed."""
    path = BASE
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


def setup_routes(app: web.Application) -> None:
    router = app.router
    # Most requests first: the router tries routes in order.
    router.add_view(under_base(ENDPOINT, ID), views.ResourceView)
    router.add_view(under_base(ENDPOINT), views.ResourcesView)
    router.add_view(under_base(ENDPOINT, ".search"), views.ResourceSearchView)
    router.add_view(under_base(word("ServiceProviderConfig")), views.ServiceProviderConfigView)
    router.add_view(under_base(word("ResourceTypes")), views.ResourceTypesView)
    router.add_view(under_base(word("ResourceTypes"), "{name}"), views.ResourceTypesView)
    router.add_view(under_base(word("Schemas")), views.SchemasView)
    router.add_view(under_base(word("Schemas"), "{urn}"), views.SchemasView)
    router.add_view(under_base(word("Bulk")), views.BulkView)
    router.add_view(under_base(word(r"\.search")), views.SearchAllView)
    router.add_route("*", under_base(word("Me")) + "{tail:(/.*)?}", views.me)
    router.add_route("*", under_base(), views.base_url)
    router.add_route("*", BASE + "/{tail:.*}", views.no_endpoint)
    # Anything else is the router's 404, answered as a SCIM error by the error middleware.


__all__ = ["BASE", "setup_routes"]
