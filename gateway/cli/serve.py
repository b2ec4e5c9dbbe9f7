"""`scim-gateway serve`: check the command line, compile the mappings, then run the gateway (or its workers).

Each step either gives what the next needs or stops with a clear message and exit status (2: the command
line is wrong; 1: it cannot start), before anything listens.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import socket
import sqlite3
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from .common import METRICS_TOKEN_ENV, STORE_ENV, TOKEN_ENV, Stop, audit_log_setting, mapping_files
from .logs import setup_logging

if TYPE_CHECKING:  # imported where used: `scim-gateway --help` need not load the gateway
    from ..connectors.registry import ConnectorRegistry
    from ..mapping.compile import CompiledMapping
    from ..settings import AdminCredential, GatewaySettings

log = logging.getLogger("scim_gateway")


@dataclass(frozen=True, slots=True)
class ServePlan:
    """What `serve` runs, checked: the settings, the compiled mappings, and how to listen."""

    settings: GatewaySettings
    registry: ConnectorRegistry
    compiled: list[CompiledMapping]
    token: str | None
    store_url: str | None
    tls: ssl.SSLContext | None


def cmd_serve(args: argparse.Namespace) -> int:
    from ..provisioning.shared_circuit import CIRCUITS_DIR_ENV
    from ..settings import METRICS_DIR_ENV

    if not getattr(args, "worker_index", 0):
        # Before prometheus_client is imported (it decides then): one process keeps its metrics in memory, and
        # `--workers` gives its workers a directory of its own, never one left from another run; so for circuits.
        os.environ.pop(METRICS_DIR_ENV, None)
        os.environ.pop(METRICS_DIR_ENV.lower(), None)
        os.environ.pop(CIRCUITS_DIR_ENV, None)
    setup_logging(args.log_level, args.log_format)
    try:
        plan = plan_serve(args)
    except Stop as stop:
        print(stop, file=sys.stderr)
        return stop.status
    if args.workers > 1:
        from ..metrics import shared_between_processes
        from ..provisioning.shared_circuit import circuits_shared_between_processes
        from .workers import serve_workers

        with shared_between_processes(), circuits_shared_between_processes():
            return serve_workers(args, worker_main)
    return run_gateway(args, plan)


def worker_main(args: argparse.Namespace) -> None:
    """A process started by `serve --workers N`: serve until told to stop, and stop if the parent goes away."""
    import signal
    import threading

    parent = os.getppid()
    # Own process group: a terminal's Ctrl-C reaches the parent only, which stops the workers once, in order.
    os.setpgrp()

    def watch_parent() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch_parent, name="watch-parent", daemon=True).start()
    sys.exit(cmd_serve(args))


def plan_serve(args: argparse.Namespace) -> ServePlan:
    store_url = _store_url(args)
    _check_processes(args)
    tls = tls_context(args)  # each worker loads the files itself: an SSLContext does not cross processes
    files, token = _mappings_and_token(args)
    settings = _settings(args, files, store_url)
    _probe_audit_log(settings)
    registry, compiled = _compile(settings)
    settings = _with_cli_token(settings, [m.app for m in compiled], token)
    _check_hub(settings, compiled)
    return ServePlan(settings, registry, compiled, token, store_url, tls)


def _store_url(args: argparse.Namespace) -> str | None:
    from ..store.postgres import mask_url

    store_url: str | None = args.store or os.environ.get(STORE_ENV) or None
    if store_url is None:
        return None
    if not store_url.startswith(("postgresql://", "postgres://")):
        raise Stop(2, f"--store / ${STORE_ENV} must be a postgresql:// URL, not {mask_url(store_url)}")
    if args.store and mask_url(args.store) != args.store:
        # The command line is visible to every user of the host (ps, /proc).
        raise Stop(2, f"--store must not carry a password: give the URL by ${STORE_ENV}")
    return store_url


def _check_processes(args: argparse.Namespace) -> None:
    if args.workers < 1 or args.store_pool_size < 1:
        raise Stop(2, "--workers and --store-pool-size must be at least 1")
    if args.workers > 1 and not hasattr(socket, "SO_REUSEPORT"):
        raise Stop(2, "--workers needs SO_REUSEPORT, which this platform lacks: run one process per port instead")


def tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The server's TLS context from --tls-cert and --tls-key (None: plain HTTP)."""
    if not args.tls_cert and not args.tls_key:
        return None
    if not args.tls_cert or not args.tls_key:
        raise Stop(2, "--tls-cert and --tls-key go together: give both (the certificate chain and its private key) or neither")

    def no_passphrase() -> bytes:
        # Never prompt on a terminal a service does not have.
        raise ValueError("the private key is encrypted: give an unencrypted key file, readable only by the gateway's user")

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    both = f"--tls-cert {args.tls_cert} with --tls-key {args.tls_key}"
    try:
        context.load_cert_chain(args.tls_cert, args.tls_key, password=no_passphrase)
    except ssl.SSLError as exc:  # a file that is no PEM, a key that does not match the certificate
        raise Stop(
            2, f"cannot use {both}: {exc.reason or exc}: they must be a PEM certificate (chain) and its own private key"
        ) from None
    except OSError as exc:
        raise Stop(2, f"cannot use {both}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise Stop(2, f"cannot use --tls-key {args.tls_key}: {exc}") from None
    return context


def _mappings_and_token(args: argparse.Namespace) -> tuple[list[Path], str | None]:
    """The mapping files (the demo's when none is given) and the --token, if any (the demo's for the demo)."""
    from ..demo import DEMO_TOKEN, DemoDatabaseError, demo_mapping_path, ensure_demo_database

    token = args.token or os.environ.get(TOKEN_ENV)
    if args.config:
        return mapping_files(args.config), token
    try:
        ensure_demo_database(Path(args.data_dir))
    except DemoDatabaseError as exc:
        raise Stop(1, str(exc)) from None
    except (OSError, sqlite3.Error) as exc:  # a read-only or full data directory, say
        raise Stop(1, f"cannot open the demo app's database in {args.data_dir}: {exc} (is the directory writable?)") from None
    if not token:
        token = DEMO_TOKEN
        log.warning("using the built-in DEMO token %r: set --token or %s for anything but a demo", DEMO_TOKEN, TOKEN_ENV)
    return [demo_mapping_path()], token


def _settings(args: argparse.Namespace, files: list[Path], store_url: str | None) -> GatewaySettings:
    from ..settings import GatewaySettings

    metrics_token = os.environ.get(METRICS_TOKEN_ENV)
    return GatewaySettings(
        **audit_log_setting(args.audit_log),
        metrics_token=SecretStr(metrics_token) if metrics_token else None,
        admin=admin_credentials(args),
        mappings=files,
        data_dir=Path(args.data_dir),
        public_url=args.public_url,
        store_url=SecretStr(store_url) if store_url else None,
        store_pool_size=args.store_pool_size,
        shared_store=args.workers > 1 or bool(getattr(args, "worker_index", 0)),
        recovery_interval=args.recovery_interval,
        hub_file=Path(args.hub) if getattr(args, "hub", None) else None,
    )


def admin_credentials(args: argparse.Namespace) -> list[AdminCredential]:
    """The admin page's credentials: $SCIM_GATEWAY_ADMIN_TOKEN and the file of --admin-credentials (or its variable)."""
    from ..admin_auth import ADMIN_CREDENTIALS_ENV, ADMIN_TOKEN_ENV, CredentialsFileError, read_credentials_file, token_credential

    found = []
    token = os.environ.get(ADMIN_TOKEN_ENV, "").strip()
    if token:
        found.append(token_credential(token))
    file = getattr(args, "admin_credentials", None) or os.environ.get(ADMIN_CREDENTIALS_ENV)
    if file:
        try:
            found.extend(read_credentials_file(Path(file)))
        except CredentialsFileError as exc:
            raise Stop(2, str(exc)) from None
    return found


def _probe_audit_log(settings: GatewaySettings) -> None:
    """Open the audit log once here, not at run_app, whose OSError would read as a port that cannot be bound."""
    from ..audit import AuditLog

    if settings.audit_file is None:
        return
    try:
        probe = AuditLog(settings.audit_file)
        probe.open()
        probe.close()
    except OSError as exc:
        raise Stop(
            1, f"cannot open the audit log {settings.audit_file}: {exc.strerror or exc} (choose another with --audit-log)"
        ) from None


def _compile(settings: GatewaySettings) -> tuple[ConnectorRegistry, list[CompiledMapping]]:
    from ..app import load_apps
    from ..connectors.registry import load_registry
    from ..mapping.loader import MappingFileError

    registry = load_registry()
    try:
        return registry, load_apps(settings, registry)
    except MappingFileError as exc:
        raise Stop(1, f"{exc}\n{len(exc.problems)} problem(s): not starting") from None


def _check_hub(settings: GatewaySettings, compiled: list[CompiledMapping]) -> None:
    from ..app import load_hub_for
    from ..mapping.loader import MappingFileError

    try:
        load_hub_for(settings, compiled)
    except MappingFileError as exc:
        raise Stop(1, f"{exc}\n{len(exc.problems)} problem(s): not starting") from None


def _with_cli_token(settings: GatewaySettings, names: list[str], token: str | None) -> GatewaySettings:
    if not token:
        return settings
    if len(names) != 1:
        raise Stop(2, "--token applies to a single app; with several apps give each its tokens in its mapping")
    return settings.model_copy(update={"extra_tokens": {names[0]: [SecretStr(token)]}})


def _banner(args: argparse.Namespace, plan: ServePlan) -> Callable[[Any], Awaitable[None]]:
    """On start-up, after every app's connector opened (or failed to and retries): the curl line then works."""
    from ..demo import DEMO_TOKEN
    from ..http.keys import APPS, HUB
    from ..store.postgres import mask_url

    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    root = args.public_url.rstrip("/") if args.public_url else f"{'https' if plan.tls else 'http'}://{host}:{args.port}"
    token = plan.token

    async def print_banner(app: Any) -> None:
        for mapping in plan.compiled:
            base = f"{root}/apps/{mapping.app}/scim/v2"
            print(f"SCIM base URL: {base}")
            runtime = app[APPS].get(mapping.app)
            if runtime is not None and runtime.not_connected is not None:
                print(f"Not connected: {runtime.not_connected} (retrying; its requests answer 503 meanwhile)")
            if token == DEMO_TOKEN:  # public, in the README: shown so the curl line works as printed
                print(f"Bearer token:  {token}")
                print(f"Try:           curl -H 'Authorization: Bearer {token}' {base}/Users")
            elif token:  # a real one: never into the log
                print(f"Bearer token:  the one given by {'--token' if args.token else '$' + TOKEN_ENV} (not shown)")
                print(f'Try:           curl -H "Authorization: Bearer ${TOKEN_ENV}" {base}/Users')
        if plan.settings.admin:
            print(f"Admin page:    {root}/admin")
        if plan.settings.hub_file is not None:
            print(
                f"Hub base URL:  {root}/hub/scim/v2 (feeding {', '.join(sorted(app[HUB].workers)) if HUB in app else 'nothing'})"
            )
        if plan.store_url:
            print(f"Store:         {mask_url(plan.store_url)}")
        sys.stdout.flush()

    return print_banner


async def _freeze_startup_objects(app: Any) -> None:
    """Leave what start-up built (modules, compiled mappings, SQLAlchemy metadata) out of the garbage collector's scans.

    A full collection otherwise walks every one of those objects again, a pause of a tenth of a second and more
    in the middle of serving, seen as the p99 of plain GETs.
    """
    gc.collect()
    gc.freeze()


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    """The serving loop: uvloop when asked or (auto) installed, else asyncio's own; the same code runs on both."""
    if kind != "asyncio":
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise SystemExit("--loop uvloop: uvloop is not installed (pip install uvloop), or use --loop asyncio") from None
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run_gateway(args: argparse.Namespace, plan: ServePlan) -> int:
    """Serve until stopped (one process, or one of `--workers N`); the exit status."""
    from ..app import create_app
    from ..connectors.errors import ConnectorSetupError
    from ..http.protocol import serve
    from ..store import StoreUnavailable

    worker = getattr(args, "worker_index", 0)  # set in the processes `--workers` starts
    app = create_app(plan.settings, plan.registry, plan.compiled)
    if worker <= 1:  # one process, or the first of `--workers N`: it prints the banner
        app.on_startup.append(_banner(args, plan))
    app.on_startup.append(_freeze_startup_objects)
    if worker:
        log.info("worker %d (pid %d) starting on %s:%d", worker, os.getpid(), args.host, args.port)
    try:
        # Workers share the port (SO_REUSEPORT): the kernel spreads connections over them.
        # web.run_app's life cycle, through a handler that answers aiohttp's own refusals as SCIM bodies.
        serve(
            app,
            host=args.host,
            port=args.port,
            shutdown_timeout=30,
            reuse_port=bool(worker) or None,
            ssl_context=plan.tls,
            loop=new_event_loop(args.loop),
        )
    except StoreUnavailable as exc:
        print(f"cannot open the correlation store: {exc}", file=sys.stderr)
        return 1
    except ConnectorSetupError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc} (choose another with --port)", file=sys.stderr)
        return 1
    return 0


__all__ = ["cmd_serve", "new_event_loop", "plan_serve", "run_gateway", "tls_context"]
