"""create_app(settings) -> web.Application: the gateway's wiring. Nothing happens at import time.

Mappings are validated and compiled before anything starts; then one cleanup context per resource: the
audit log, the store, each app (its connector opened, recovered, swept; closed at shutdown).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from . import runtime as app_runtime
from .admin_auth import AdminAuth
from .audit import AuditLog
from .auth import jwks_file_problem
from .connectors.registry import ConnectorRegistry, load_registry
from .http.admin import setup_admin
from .http.health import setup_health
from .http.keys import APPS, AUDIT, HUB, REGISTRY, SETTINGS, STORE
from .http.metrics import setup_metrics
from .http.middleware import scim_middleware
from .http.protocol import parser_limits
from .http.routes import setup_routes
from .hub.config import CompiledHub, fed_apps_problems, load_hub
from .hub.directory import HUB_APP
from .hub.runtime import create_hub, start_hub, stop_hub
from .mapping.compile import CompiledMapping, load_mapping
from .mapping.loader import MappingFileError, Problem
from .schema import DISPLAY_ATTRIBUTES
from .settings import GatewaySettings
from .store import PostgresStore, SqliteStore, Store

log = logging.getLogger(__name__)


def load_apps(settings: GatewaySettings, registry: ConnectorRegistry) -> list[CompiledMapping]:
    """Validate and compile every mapping; raises MappingFileError (all problems) before anything starts."""
    mappings: list[CompiledMapping] = []
    problems = []
    for path in settings.mappings:
        try:
            mappings.append(load_mapping(path, registry))
        except MappingFileError as exc:
            problems.extend(exc.problems)
    for mapping in mappings:
        jwt_config = mapping.config.auth.jwt
        problem = jwks_file_problem(jwt_config) if jwt_config is not None else None
        if problem is not None:
            problems.append(Problem(mapping.file, None, ("auth", "jwt", "jwks_file"), problem))
    names = [m.app for m in mappings]
    for name in {n for n in names if names.count(n) > 1}:
        problems.append(Problem(str(settings.mappings[names.index(name)]), None, ("app",), f"app {name!r} is defined twice"))
    if problems:
        raise MappingFileError(problems)
    return mappings


def create_app(
    settings: GatewaySettings, registry: ConnectorRegistry | None = None, mappings: list[CompiledMapping] | None = None
) -> web.Application:
    """The gateway for the apps in `settings` (mappings already compiled by the caller may be passed in)."""
    registry = registry or load_registry()
    if mappings is None:
        mappings = load_apps(settings, registry)
    app = web.Application(
        # One middleware: the audit log outermost (the status finally answered), the errors, the base URL's own.
        middlewares=[scim_middleware],
        client_max_size=settings.limits.max_body_bytes,
        # Long filters travel in the query string: request lines well past max_url_bytes reach the gateway's own
        # 414; past the parser's limits, `serve` answers through http/protocol.py's handler (a SCIM body too).
        handler_args=parser_limits(settings.limits),
    )
    app[SETTINGS] = settings
    app[REGISTRY] = registry
    app[STORE] = create_store(settings)
    app[APPS] = {}
    app[AUDIT] = AuditLog(settings.audit_file)
    app.cleanup_ctx.append(_audit_ctx)
    app.cleanup_ctx.append(_store_ctx)
    hub = load_hub_for(settings, mappings)
    fed = set(hub.config.apps) if hub is not None else set()
    for mapping in mappings:
        app.cleanup_ctx.append(_app_ctx(mapping, fed_by_hub=mapping.app in fed))
    if hub is not None:
        app.cleanup_ctx.append(_hub_ctx(hub))  # after the apps: its workers deliver to them
    setup_routes(app, hub=hub is not None)
    setup_health(app)
    setup_metrics(app)
    if settings.admin:
        setup_admin(app, AdminAuth(settings.admin))
    return app


def load_hub_for(settings: GatewaySettings, mappings: list[CompiledMapping]) -> CompiledHub | None:
    """The hub file, compiled and checked against the apps (each fed by the hub or by its own IdP, not both)."""
    if settings.hub_file is None:
        if any(m.app == HUB_APP for m in mappings):
            raise MappingFileError(fed_apps_problems(None, mappings, {}))
        return None
    hub = load_hub(settings.hub_file)
    problems = fed_apps_problems(hub, mappings, settings.extra_tokens)
    if problems:
        raise MappingFileError(problems)
    return hub


def _hub_ctx(compiled: CompiledHub) -> Callable[[web.Application], Any]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        hub = create_hub(compiled, app[SETTINGS], app[STORE], app[APPS])
        await start_hub(hub, app[SETTINGS])
        app[HUB] = hub
        yield
        await stop_hub(hub)

    return ctx


def create_store(settings: GatewaySettings) -> Store:
    """PostgreSQL when a store URL is set (several processes, several hosts), else the SQLite file in the data dir."""
    if settings.store_url is not None:
        return PostgresStore(settings.store_url.get_secret_value(), pool_size=settings.store_pool_size, labels=DISPLAY_ATTRIBUTES)
    return SqliteStore(settings.store_file, labels=DISPLAY_ATTRIBUTES)


async def _audit_ctx(app: web.Application) -> AsyncIterator[None]:
    audit = app[AUDIT]
    audit.open()
    if not audit.enabled:
        log.warning("the audit log is off: provisioning operations are not recorded")
    yield
    audit.close()


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    store = app[STORE]
    await store.open()
    yield
    await store.close()


def _app_ctx(mapping: CompiledMapping, *, fed_by_hub: bool = False) -> Callable[[web.Application], Any]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        tokens = settings.extra_tokens.get(mapping.app, [])
        runtime = app_runtime.create_runtime(mapping, settings, app[STORE], tokens, app[AUDIT], fed_by_hub=fed_by_hub)
        try:
            await app_runtime.start(runtime, settings)
        except BaseException:
            # aiohttp's run_app does not clean up after a failed start-up: close what already opened (this app's
            # connector, the store, earlier apps'), or their threads and sockets keep the process alive.
            await app_runtime.stop(runtime)
            await app.cleanup()
            raise
        app[APPS][mapping.app] = runtime
        yield
        app[APPS].pop(mapping.app, None)
        await app_runtime.stop(runtime)

    return ctx


__all__ = ["create_app", "create_store", "load_apps"]
