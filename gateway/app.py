"""create_app(settings) -> web.Application. Every AppKey lives here; nothing happens at import time."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web

from .connectors.base import AppContext, Connector
from .connectors.errors import AppError, ConnectorSetupError
from .connectors.registry import ConnectorRegistry, load_registry
from .mapping.compile import CompiledMapping, load_mapping
from .mapping.loader import MappingFileError, Problem
from .provisioning.provisioner import Provisioner
from .settings import GatewaySettings
from .store.base import Store
from .store.postgres import PostgresStore
from .store.sqlite import SqliteStore

log = logging.getLogger(__name__)


@dataclass(slots=True)
class AppRuntime:
    """One provisioned app: its compiled mapping, connector, provisioner, and accepted token digests."""

    mapping: CompiledMapping
    connector: Connector
    provisioner: Provisioner
    token_digests: list[bytes] = field(default_factory=list)


SETTINGS = web.AppKey("settings", GatewaySettings)
REGISTRY = web.AppKey("registry", ConnectorRegistry)
STORE = web.AppKey("store", Store)
APPS = web.AppKey("apps", dict[str, AppRuntime])


def load_apps(settings: GatewaySettings, registry: ConnectorRegistry) -> list[CompiledMapping]:
    """Validate and compile every mapping; raises MappingFileError (all problems) before anything starts."""
    mappings: list[CompiledMapping] = []
    problems = []
    for path in settings.mappings:
        try:
            mappings.append(load_mapping(path, registry))
        except MappingFileError as exc:
            problems.extend(exc.problems)
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
    from .api import error_middleware, setup_routes

    registry = registry or load_registry()
    if mappings is None:
        mappings = load_apps(settings, registry)
    app = web.Application(
        middlewares=[error_middleware],
        client_max_size=settings.limits.max_body_bytes,
        # Long filters travel in the query string: allow request lines past aiohttp's 8 KiB default.
        handler_args={"max_line_size": 16384, "max_field_size": 16384},
    )
    app[SETTINGS] = settings
    app[REGISTRY] = registry
    app[STORE] = create_store(settings)
    app[APPS] = {}
    app.cleanup_ctx.append(_store_ctx)
    for mapping in mappings:
        app.cleanup_ctx.append(_connector_ctx(mapping))
    setup_routes(app)
    return app


def create_store(settings: GatewaySettings) -> Store:
    """PostgreSQL when a store URL is set (several processes, several hosts), else the SQLite file in the data dir."""
    if settings.store_url is not None:
        return PostgresStore(settings.store_url.get_secret_value(), pool_size=settings.store_pool_size)
    return SqliteStore(settings.store_file)


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    store = app[STORE]
    await store.open()
    yield
    await store.close()


async def _recovery_sweep(provisioner: Provisioner, interval: float) -> None:
    """Settle, while serving, writes left pending longer than two intervals (a failed settle, a dead peer process)."""
    while True:
        await asyncio.sleep(interval)
        try:
            repaired = await provisioner.recover(older_than=2 * interval)
            if repaired:
                log.info("app %s: recovery settled %d unfinished writes", provisioner.app, repaired)
        except Exception:
            log.exception("app %s: recovery sweep failed; it runs again in %s s", provisioner.app, interval)


def _connector_ctx(mapping: CompiledMapping):  # type: ignore[no-untyped-def]
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        connector = mapping.connector_cls(mapping.connector_config, AppContext(mapping.app, settings.data_dir))
        try:
            await connector.open()
        except BaseException as exc:
            # aiohttp's run_app does not clean up after a failed start-up: close what already opened
            # (the store, earlier apps' connectors), or their threads and sockets keep the process alive.
            await app.cleanup()
            if isinstance(exc, ConnectorSetupError | AppError):
                detail = exc.detail if isinstance(exc, AppError) else str(exc)
                raise ConnectorSetupError(f"app {mapping.app} ({mapping.file}): {detail}") from None
            raise
        digests = list(mapping.token_digests)
        digests += [hashlib.sha256(t.get_secret_value().encode()).digest() for t in settings.extra_tokens.get(mapping.app, [])]
        if not digests:
            log.warning("app %s accepts no bearer token: every request will be refused", mapping.app)
        provisioner = Provisioner(mapping, connector, app[STORE])
        repaired = await provisioner.recover(older_than=settings.startup_recovery_age)
        if repaired:
            log.info("app %s: recovery settled %d unfinished writes", mapping.app, repaired)
        app[APPS][mapping.app] = AppRuntime(mapping, connector, provisioner, digests)
        sweeper = asyncio.create_task(_recovery_sweep(provisioner, settings.recovery_interval), name=f"recovery:{mapping.app}")
        yield
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        app[APPS].pop(mapping.app, None)
        await connector.close()

    return ctx
