"""One provisioned app while the gateway serves it: its connector opened (or retried), start-up recovery,
the recovery sweep, the scheduled reconcile (the mapping's `reconcile.interval`), and what it answers while its
app cannot be reached.

An app whose connector cannot open at start-up (its database down, its host refusing) is served all the
same: discovery from its mapping, 503 for everything else, until a background opener gets it open. A
mapping that does not fit the app (a missing table) stops start-up: only the operator can fix that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import socket
import uuid
from dataclasses import dataclass, field

from pydantic import SecretStr

from .audit import AuditLog
from .auth import AppAuth, create_app_auth
from .connectors.base import AppContext, Connector
from .connectors.errors import AppError, ConnectorSetupError
from .mapping.compile import CompiledMapping
from .provisioning.breaker import Breaker
from .provisioning.errors import ProvisioningError
from .provisioning.pipeline import utc_now
from .provisioning.provisioner import Provisioner
from .provisioning.reconcile import for_keeping
from .provisioning.shared_circuit import shared_circuit
from .scim.errors import ScimError, unavailable
from .scim.service import ScimService
from .settings import GatewaySettings
from .store import Store, StoreError

log = logging.getLogger(__name__)


@dataclass(slots=True)
class AppRuntime:
    """One app: its compiled mapping, connector, provisioner, SCIM service, and what it accepts as credentials."""

    mapping: CompiledMapping
    connector: Connector
    provisioner: Provisioner
    service: ScimService
    auth: AppAuth
    not_connected: str | None = None  # why the connector is not open yet; None once it serves
    next_attempt: float = 0.0  # loop time of the next attempt to open it
    connector_open: bool = False
    serving: asyncio.Event = field(default_factory=asyncio.Event)  # set once the connector is open and recovery ran
    tasks: list[asyncio.Task[None]] = field(default_factory=list)  # the opener, the recovery sweep

    @property
    def name(self) -> str:
        return self.mapping.app

    def refusal(self) -> ScimError | None:
        """The 503 for a request that needs the app while its connector is not open; None once it serves."""
        if self.not_connected is None:
            return None
        wait = max(1, math.ceil(self.next_attempt - asyncio.get_running_loop().time()))
        return unavailable(
            f"app {self.name} is unavailable: not connected ({self.not_connected}); next attempt in {wait} s", wait
        )


def create_runtime(
    mapping: CompiledMapping,
    settings: GatewaySettings,
    store: Store,
    cli_tokens: list[SecretStr],
    audit: AuditLog | None = None,
    *,
    fed_by_hub: bool = False,
) -> AppRuntime:
    connector = mapping.connector_cls(mapping.connector_config, AppContext(mapping.app, settings.data_dir))
    auth = create_app_auth(mapping, cli_tokens)
    if fed_by_hub:
        log.info("app %s is fed by the hub (/hub/scim/v2): its own endpoint accepts no IdP token", mapping.app)
    elif not auth.accepts_anything:
        log.warning("app %s accepts no bearer token: every request will be refused", mapping.app)
    provisioner = Provisioner(
        mapping, connector, store, Breaker(mapping.app, mapping.config.breaker, shared=shared_circuit(mapping.app)), audit
    )
    return AppRuntime(mapping, connector, provisioner, ScimService(provisioner, settings.limits), auth)


async def start(runtime: AppRuntime, settings: GatewaySettings) -> None:
    """Open the app's connector and serve it; unreachable: serve 503s and keep trying in the background.

    ConnectorSetupError (the mapping does not fit the app) and any other failure propagate: start-up fails.
    """
    mapping = runtime.mapping
    try:
        await runtime.connector.open()
    except AppError as exc:
        # The app is unreachable, which the operator may not control: the other apps serve, this one answers
        # 503 naming why, and opening it is retried in the background.
        delay = mapping.config.breaker.reset_after
        runtime.not_connected = exc.detail
        runtime.next_attempt = asyncio.get_running_loop().time() + delay
        log.warning(
            "app %s (%s) cannot be reached: %s; it answers 503 until it opens (next attempt in %g s)",
            mapping.app,
            mapping.file,
            exc.detail,
            delay,
        )
        runtime.tasks.append(asyncio.create_task(_open_later(runtime, settings, delay), name=f"open:{mapping.app}"))
        return
    except ConnectorSetupError as exc:
        raise ConnectorSetupError(f"app {mapping.app} ({mapping.file}): {exc}") from None
    runtime.connector_open = True
    await _start_serving(runtime, settings)


async def stop(runtime: AppRuntime) -> None:
    for task in runtime.tasks:
        task.cancel()
    for task in runtime.tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if runtime.connector_open:
        await runtime.connector.close()


async def _start_serving(runtime: AppRuntime, settings: GatewaySettings, *, later: bool = False) -> None:
    """Start-up recovery for the app, then it serves, with its recovery sweep."""
    provisioner = runtime.provisioner
    try:
        repaired = await provisioner.recover(older_than=settings.startup_recovery_age)
    except Exception:
        if not later:
            raise  # at start-up, as for any failure to start: the gateway does not start
        # Opened in the background: serve it; the recovery sweep settles what start-up recovery could not.
        log.exception("app %s: start-up recovery failed; the recovery sweep retries it", runtime.name)
        repaired = 0
    if repaired:
        log.info("app %s: recovery settled %d unfinished writes", runtime.name, repaired)
    runtime.tasks.append(
        asyncio.create_task(_recovery_sweep(provisioner, settings.recovery_interval), name=f"recovery:{runtime.name}")
    )
    interval = runtime.mapping.config.reconcile.interval_seconds
    if interval is not None:
        runtime.tasks.append(asyncio.create_task(_reconcile_schedule(provisioner, interval), name=f"reconcile:{runtime.name}"))
    runtime.not_connected = None
    runtime.serving.set()


async def _recovery_sweep(provisioner: Provisioner, interval: float) -> None:
    """Settle, while serving, writes left pending longer than two intervals (a failed settle, a dead peer process)."""
    while True:
        await asyncio.sleep(interval)
        if provisioner.breaker is not None and provisioner.breaker.retry_in() is not None:
            continue  # the app's circuit is open: every entry would only be postponed
        try:
            repaired = await provisioner.recover(older_than=2 * interval, due=True)
            if repaired:
                log.info("app %s: recovery settled %d unfinished writes", provisioner.app, repaired)
        except Exception:
            log.exception("app %s: recovery sweep failed; it runs again in %s s", provisioner.app, interval)


# Who holds a scheduled task's lease: this process, on this host.
LEASE_HOLDER = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
RECONCILE_CHECK_SECONDS = 60.0  # how often a process asks whether the app's turn is free


async def _reconcile_schedule(provisioner: Provisioner, interval: float) -> None:
    """The mapping's `reconcile.interval`: a report-only reconcile each interval, kept in the store for the admin
    page; one process runs each turn where several share the store (a lease of one interval: the turn is taken
    once, by whoever asks first after the last one ran out). A run that fails is kept as a report naming why,
    and its turn is given back so the next check tries again."""
    app, lease = provisioner.app, f"reconcile:{provisioner.app}"
    while True:
        try:
            if (provisioner.breaker is None or provisioner.breaker.retry_in() is None) and await provisioner.store.take_lease(
                lease, LEASE_HOLDER, interval
            ):
                await _scheduled_run(provisioner, lease)
        except Exception:
            log.exception("app %s: the scheduled reconcile could not start; it is tried again", app)
        await asyncio.sleep(min(interval, RECONCILE_CHECK_SECONDS) * random.uniform(0.9, 1.1))


async def _scheduled_run(provisioner: Provisioner, lease: str) -> None:
    app = provisioner.app
    ran_at = utc_now()
    try:
        report = await provisioner.reconcile()
    except (ProvisioningError, AppError, StoreError) as exc:
        detail = exc.detail if isinstance(exc, ProvisioningError | AppError) else str(exc)
        log.warning("app %s: the scheduled reconcile failed: %s", app, detail)
        await provisioner.store.save_report(app, {"app": app, "ran_at": ran_at, "trigger": "schedule", "error": detail}, ran_at)
        await provisioner.store.release_lease(lease, LEASE_HOLDER)
        return
    report["trigger"] = "schedule"
    await provisioner.store.save_report(app, for_keeping(report), report["ran_at"])
    log.info("app %s: scheduled reconcile found %d (in %.1f s)", app, report["found"], report["duration_s"])


async def _open_later(runtime: AppRuntime, settings: GatewaySettings, delay: float) -> None:
    """Retry opening an app's connector, the delay doubling up to the breaker's max_reset_after, until it opens."""
    app, limit = runtime.name, runtime.mapping.config.breaker.max_reset_after
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


__all__ = ["AppRuntime", "create_runtime", "start", "stop"]
