"""create_app(settings) -> web.Application. Every AppKey lives here; nothing happens at import time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web

from .audit import AuditLog
from .auth import AppAuth, create_app_auth, jwks_file_problem
from .connectors.base import AppContext, Connector
from .connectors.errors import AppError, ConnectorSetupError
from .connectors.registry import ConnectorRegistry, load_registry
from .mapping.compile import CompiledMapping, load_mapping
from .mapping.loader import MappingFileError, Problem
from .provisioning.breaker import Breaker
from .provisioning.provisioner import Provisioner
from .scim.errors import ScimError, unavailable
from .settings import GatewaySettings
from .store.base import Store
from .store.postgres import PostgresStore
from .store.sqlite import SqliteStore

log = logging.getLogger(__name__)


@dataclass(slots=True)
class AppRuntime:
    """One provisioned app: its compiled mapping, connector, provisioner, and what it accepts as credentials.

    An app whose connector could not open at start-up (its database down, its
    host refusing) is served all the same: discovery from its mapping, 503 for
    everything else, until the background opener gets it open.
    """

    mapping: CompiledMapping
    connector: Connector
    provisioner: Provisioner
    auth: AppAuth
    not_connected: str | None = None  # why the connector is not open yet; None once it serves
    next_attempt: float = 0.0  # loop time of the next attempt to open it
    connector_open: bool = False
    serving: asyncio.Event = field(default_factory=asyncio.Event)  # set once the connector is open and recovery ran
    tasks: list[asyncio.Task[None]] = field(default_factory=list)  # the opener, the recovery sweep

    def refusal(self) -> ScimError | None:
        """The 503 for a request that needs the app while its connector is not open; None once it serves."""
        if self.not_connected is None:
            return None
        wait = max(1, math.ceil(self.next_attempt - asyncio.get_running_loop().time()))
        return unavailable(f"app {self.mapping.app} is unavailable: not connected ({self.not_connected}); next attempt in {wait} s", wait)


SETTINGS = web.AppKey("settings", GatewaySettings)
REGISTRY = web.AppKey("registry", ConnectorRegistry)
STORE = web.AppKey("store", Store)
APPS = web.AppKey("apps", dict[str, AppRuntime])
AUDIT = web.AppKey("audit", AuditLog)


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
    from .api import audit_middleware, error_middleware, setup_routes

    registry = registry or load_registry()
    if mappings is None:
        mappings = load_apps(settings, registry)
    app = web.Application(
        # The audit middleware is outermost: it records the status the client is finally answered.
        middlewares=[audit_middleware, error_middleware],
        client_max_size=settings.limits.max_body_bytes,
        # Long filters travel in the query string: allow request lines past aiohttp's 8 KiB default, and well past
        # max_url_bytes, so that a long URL gets the gateway's SCIM 414 rather than aiohttp's text/plain 400.
        handler_args={"max_line_size": max(65_536, 4 * settings.limits.max_url_bytes), "max_field_size": 16384},
    )
    app[SETTINGS] = settings
    app[REGISTRY] = registry
    app[STORE] = create_store(settings)
    app[APPS] = {}
    app[AUDIT] = AuditLog(settings.audit_file)
    app.cleanup_ctx.append(_audit_ctx)
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


async def _recovery_sweep(provisioner: Provisioner, interval: float) -> None:
    """Settle, while serving, writes left pending longer than two intervals (a failed settle, a dead peer process)."""
    while True:
        await asyncio.sleep(interval)
        if provisioner.breaker is not None and provisioner.breaker.retry_in() is not None:
            continue  # the app's circuit is open: every entry would only be postponed
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
        auth = create_app_auth(mapping, settings.extra_tokens.get(mapping.app, []))
        if not auth.accepts_anything:
            log.warning("app %s accepts no bearer token: every request will be refused", mapping.app)
        provisioner = Provisioner(mapping, connector, app[STORE], Breaker(mapping.app, mapping.config.breaker))
        runtime = AppRuntime(mapping, connector, provisioner, auth)
        try:
            await connector.open()
        except AppError as exc:
            # The app is unreachable, which the operator may not control: the other apps serve, this one answers
            # 503 naming why, and opening it is retried in the background.
            delay = mapping.config.breaker.reset_after
            runtime.not_connected = exc.detail
            runtime.next_attempt = asyncio.get_running_loop().time() + delay
            log.warning("app %s (%s) cannot be reached: %s; it answers 503 until it opens (next attempt in %g s)",
                        mapping.app, mapping.file, exc.detail, delay)
            runtime.tasks.append(asyncio.create_task(_open_later(runtime, settings, delay), name=f"open:{mapping.app}"))
        except BaseException as exc:
            # aiohttp's run_app does not clean up after a failed start-up: close what already opened
            # (the store, earlier apps' connectors), or their threads and sockets keep the process alive.
            await app.cleanup()
            if isinstance(exc, ConnectorSetupError):  # the mapping does not fit the app: only the operator can fix it
                raise ConnectorSetupError(f"app {mapping.app} ({mapping.file}): {exc}") from None
            raise
        else:
            runtime.connector_open = True
            await _start_serving(runtime, settings)
        app[APPS][mapping.app] = runtime
        yield
        for task in runtime.tasks:
            task.cancel()
        for task in runtime.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        app[APPS].pop(mapping.app, None)
        if runtime.connector_open:
            await connector.close()

    return ctx


async def _start_serving(runtime: AppRuntime, settings: GatewaySettings, *, later: bool = False) -> None:
    """Start-up recovery for the app, then it serves, with its recovery sweep."""
    provisioner = runtime.provisioner
    try:
        repaired = await provisioner.recover(older_than=settings.startup_recovery_age)
    except Exception:
        if not later:
            raise  # at start-up, as for any failure to start: the gateway does not start
        # Opened in the background: serve it; the recovery sweep settles what start-up recovery could not.
        log.exception("app %s: start-up recovery failed; the recovery sweep retries it", provisioner.app)
        repaired = 0
    if repaired:
        log.info("app %s: recovery settled %d unfinished writes", provisioner.app, repaired)
    runtime.tasks.append(
        asyncio.create_task(_recovery_sweep(provisioner, settings.recovery_interval), name=f"recovery:{provisioner.app}")
    )
    runtime.not_connected = None
    runtime.serving.set()


async def _open_later(runtime: AppRuntime, settings: GatewaySettings, delay: float) -> None:
    """Retry opening an app's connector, the delay doubling up to the breaker's max_reset_after, until it opens."""
    app, limit = runtime.mapping.app, runtime.mapping.config.breaker.max_reset_after
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(max(0.0, runtime.next_attempt - loop.time()))
        try:
            await runtime.connector.open()
        except AppError as exc:
            reason = exc.detail
        except ConnectorSetupError as exc:
            # Reachable now, but the mapping does not fit it (a missing table): an operator must act; keep trying.
            reason = str(exc)
            log.error("app %s (%s): %s", app, runtime.mapping.file, reason)
        except Exception as exc:
            reason = f"opening failed: {type(exc).__name__}"
            log.exception("app %s: opening its connector failed", app)
        else:
            runtime.connector_open = True
            await _start_serving(runtime, settings, later=True)
            log.info("app %s: connected; serving", app)
            return
        delay = min(delay * 2, limit)
        runtime.not_connected = reason
        runtime.next_attempt = loop.time() + delay
        log.warning("app %s still cannot be reached: %s; next attempt in %g s", app, reason, delay)
