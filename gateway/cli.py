"""`scim-gateway serve | check | translate | import | schema | hash-token`."""

from __future__ import annotations

import argparse
import asyncio
import difflib
import gc
import hashlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import SecretStr

TOKEN_ENV = "SCIM_GATEWAY_TOKEN"
STORE_ENV = "SCIM_GATEWAY_STORE"


def _mapping_files(configs: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in configs:
        path = Path(item)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml")))
        else:
            files.append(path)
    return files


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from .app import APPS, create_app
    from .connectors.errors import ConnectorSetupError
    from .demo import DEMO_TOKEN, demo_mapping_path, ensure_demo_database
    from .mapping.loader import MappingFileError
    from .settings import GatewaySettings
    from .store.base import StoreUnavailable
    from .store.postgres import mask_url

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("scim_gateway")
    worker = getattr(args, "worker_index", 0)  # set in the processes `--workers` starts
    store_url = args.store or os.environ.get(STORE_ENV) or None
    if store_url is not None:
        if not store_url.startswith(("postgresql://", "postgres://")):
            print(f"--store / ${STORE_ENV} must be a postgresql:// URL, not {mask_url(store_url)}", file=sys.stderr)
            return 2
        if args.store and mask_url(args.store) != args.store:
            # The command line is visible to every user of the host (ps, /proc).
            print(f"--store must not carry a password: give the URL by ${STORE_ENV}", file=sys.stderr)
            return 2
    if args.workers < 1 or args.store_pool_size < 1:
        print("--workers and --store-pool-size must be at least 1", file=sys.stderr)
        return 2
    if args.workers > 1 and not hasattr(socket, "SO_REUSEPORT"):
        print("--workers needs SO_REUSEPORT, which this platform lacks: run one process per port instead", file=sys.stderr)
        return 2
    tls = _tls_context(args)  # each worker loads the files itself: an SSLContext does not cross processes
    if isinstance(tls, int):
        return tls
    data_dir = Path(args.data_dir)
    token = args.token or os.environ.get(TOKEN_ENV)
    if args.config:
        mappings = _mapping_files(args.config)
    else:
        ensure_demo_database(data_dir)
        mappings = [demo_mapping_path()]
        if not token:
            token = DEMO_TOKEN
            log.warning("using the built-in DEMO token %r: set --token or %s for anything but a demo", DEMO_TOKEN, TOKEN_ENV)
    audit: dict[str, Path | None] = {}
    if args.audit_log is not None:
        # Relative to the working directory, as any path given on the command line; `off`: no audit log.
        audit["audit_log"] = None if args.audit_log == "off" else Path(args.audit_log).expanduser().absolute()
    settings = GatewaySettings(
        **audit,
        mappings=mappings, data_dir=data_dir, public_url=args.public_url,
        store_url=SecretStr(store_url) if store_url else None, store_pool_size=args.store_pool_size,
        shared_store=args.workers > 1 or bool(worker),
    )
    if settings.audit_file is not None:
        from .audit import AuditLog

        try:  # here, not at run_app, whose OSError would read as a port that cannot be bound
            probe = AuditLog(settings.audit_file)
            probe.open()
            probe.close()
        except OSError as exc:
            print(f"cannot open the audit log {settings.audit_file}: {exc.strerror or exc} (choose another with --audit-log)", file=sys.stderr)
            return 1
    try:
        from .app import load_apps
        from .connectors.registry import load_registry

        registry = load_registry()
        compiled = load_apps(settings, registry)
    except MappingFileError as exc:
        print(exc, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s): not starting", file=sys.stderr)
        return 1
    names = [m.app for m in compiled]
    if token:
        if len(names) != 1:
            print("--token applies to a single app; with several apps give each its tokens in its mapping", file=sys.stderr)
            return 2
        settings = settings.model_copy(update={"extra_tokens": {names[0]: [SecretStr(token)]}})
    host_for_url = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    root = args.public_url.rstrip("/") if args.public_url else f"{'https' if tls else 'http'}://{host_for_url}:{args.port}"

    async def print_banner(app: web.Application) -> None:
        """On start-up, after every app's connector opened (or failed to and retries): the curl line then works."""
        for name in names:
            base = f"{root}/apps/{name}/scim/v2"
            print(f"SCIM base URL: {base}")
            runtime = app[APPS].get(name)
            if runtime is not None and runtime.not_connected is not None:
                print(f"Not connected: {runtime.not_connected} (retrying; its requests answer 503 meanwhile)")
            if token == DEMO_TOKEN:  # public, in the README: shown so the curl line works as printed
                print(f"Bearer token:  {token}")
                print(f"Try:           curl -H 'Authorization: Bearer {token}' {base}/Users")
            elif token:  # a real one: never into the log
                print(f"Bearer token:  the one given by {'--token' if args.token else '$' + TOKEN_ENV} (not shown)")
                print(f'Try:           curl -H "Authorization: Bearer ${TOKEN_ENV}" {base}/Users')
        if store_url:
            print(f"Store:         {mask_url(store_url)}")
        sys.stdout.flush()

    if args.workers > 1:
        return _serve_workers(args, log)
    app = create_app(settings, registry, compiled)
    if worker <= 1:  # one process, or the first of `--workers N`: it prints the banner
        app.on_startup.append(print_banner)
    app.on_startup.append(_freeze_startup_objects)
    if worker:
        log.info("worker %d (pid %d) starting on %s:%d", worker, os.getpid(), args.host, args.port)
    try:
        # Workers share the port (SO_REUSEPORT): the kernel spreads connections over them.
        web.run_app(
            app, host=args.host, port=args.port, print=None, shutdown_timeout=30, access_log=None, reuse_port=bool(worker) or None,
            ssl_context=tls, loop=new_event_loop(args.loop),
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


def _tls_context(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The server's TLS context from --tls-cert and --tls-key (None: plain HTTP), or an exit status after a clear error."""
    import ssl

    if not args.tls_cert and not args.tls_key:
        return None
    if not args.tls_cert or not args.tls_key:
        print("--tls-cert and --tls-key go together: give both (the certificate chain and its private key) or neither", file=sys.stderr)
        return 2

    def no_passphrase() -> bytes:
        # Never prompt on a terminal a service does not have.
        raise ValueError("the private key is encrypted: give an unencrypted key file, readable only by the gateway's user")

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(args.tls_cert, args.tls_key, password=no_passphrase)
    except ssl.SSLError as exc:  # a file that is no PEM, a key that does not match the certificate
        why = f"{exc.reason or exc}: they must be a PEM certificate (chain) and its own private key"
        print(f"cannot use --tls-cert {args.tls_cert} with --tls-key {args.tls_key}: {why}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"cannot use --tls-cert {args.tls_cert} with --tls-key {args.tls_key}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"cannot use --tls-key {args.tls_key}: {exc}", file=sys.stderr)
        return 2
    return context


def _worker_main(args: argparse.Namespace) -> None:
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


def _serve_workers(args: argparse.Namespace, log: logging.Logger) -> int:
    """Start `args.workers` serving processes on one port, forward SIGTERM / SIGINT to them, wait for them all."""
    import multiprocessing
    import multiprocessing.connection
    import signal

    context = multiprocessing.get_context("spawn")  # a fresh interpreter each: no inherited loop, sockets or locks
    procs: dict[int, multiprocessing.process.BaseProcess] = {}
    told: set[int] = set()  # the workers sent a stop signal
    stopping = False
    failed = False

    def stop_all(signum: int) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs.values():
            if proc.is_alive() and proc.pid is not None:
                told.add(proc.pid)
                os.kill(proc.pid, signum)

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s: stopping the workers", signal.Signals(signum).name)
        stop_all(signal.SIGTERM)

    # The handlers before the first worker starts: a signal meanwhile stops the workers started, and no more start.
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for index in range(1, args.workers + 1):
            if stopping:
                break
            child_args = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "func"})
            child_args.workers, child_args.worker_index = 1, index
            proc = context.Process(target=_worker_main, args=(child_args,), name=f"scim-gateway-worker-{index}")
            proc.start()
            procs[index] = proc
            if stopping and proc.pid not in told and proc.pid is not None:
                told.add(proc.pid)  # the signal came while this one started: tell it too, once
                os.kill(proc.pid, signal.SIGTERM)
        log.info("serving with %d worker processes: %s", len(procs), ", ".join(str(p.pid) for p in procs.values()))
        running = dict(procs)
        deadline: float | None = None
        while running:
            multiprocessing.connection.wait([p.sentinel for p in running.values()], timeout=1.0)
            for index, proc in list(running.items()):
                if proc.exitcode is None:
                    continue
                del running[index]
                # A worker still starting when told to stop has no handler yet: the signal ends it, cleanly (it served nothing).
                stopped = proc.exitcode == 0 or proc.exitcode == -signal.SIGTERM
                if not (stopping and stopped):
                    failed = True
                    log.error("worker %d (pid %s) exited with code %s%s", index, proc.pid, proc.exitcode,
                              "" if stopping else ": stopping the others")
                if not stopping:
                    stop_all(signal.SIGTERM)
            if stopping and deadline is None:
                deadline = time.monotonic() + 40  # run_app's shutdown_timeout is 30 s
            if deadline is not None and time.monotonic() > deadline:
                for proc in running.values():
                    log.error("worker (pid %s) did not stop in time: killing it", proc.pid)
                    proc.kill()
                deadline = time.monotonic() + 5
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 1 if failed else 0


def cmd_check(args: argparse.Namespace) -> int:
    import asyncio

    from .connectors.registry import load_registry
    from .mapping.compile import compile_mapping
    from .mapping.loader import MappingFileError, read_document

    registry = load_registry()
    files = _mapping_files(args.files)
    if not files:
        print("no mapping files given", file=sys.stderr)
        return 2
    problems = 0
    for path in files:
        try:
            doc = read_document(path)
            compiled = compile_mapping(doc, registry, require_secrets=False)
        except MappingFileError as exc:
            for problem in exc.problems:
                print(problem)
            problems += len(exc.problems)
            continue
        if args.connect:
            live = asyncio.run(_connect_problems(doc, compiled, Path(args.data_dir)))
            for problem in live:
                print(problem)
            problems += len(live)
            if live:
                continue
        kinds = ", ".join(compiled.resources)
        print(f"{path}: ok (app {compiled.app}: {kinds}{'; the live app fits' if args.connect else ''})")
    return 1 if problems else 0


async def _connect_problems(doc, compiled, data_dir: Path) -> list:  # type: ignore[no-untyped-def]
    """`check --connect`: open the app's connector and name what the live app lacks, at the mapping's lines."""
    from .connectors.base import AppContext

    connector = compiled.connector_cls(compiled.connector_config, AppContext(compiled.app, data_dir))
    open_error: Exception | None = None
    try:
        try:
            await connector.open()
        except Exception as exc:  # a misfit schema fails open; check_schema below names each misfit
            open_error = exc
        try:
            found = await connector.check_schema()
        except Exception as exc:
            return [doc.problem(("connector",), f"cannot connect: {open_error or exc}")]
        problems = [doc.problem(("connector", *loc), message) for loc, message in found]
        if open_error is not None and not found:
            problems.append(doc.problem(("connector",), f"cannot open: {open_error}"))
        for kind in compiled.resources:
            known = connector.fields(kind)
            if known is None:
                continue
            for i, rule in enumerate(compiled.config.resources[kind].attributes):  # every rule, computed fields too
                if rule.field not in known:
                    message = f"the app's {kind} records have no field {rule.field!r}"
                    near = difflib.get_close_matches(rule.field, sorted(known), n=1)
                    problems.append(doc.problem(("resources", kind, "attributes", i, "field"), message + (f" (did you mean {near[0]}?)" if near else "")))
            members = compiled.config.resources[kind].members
            if members is not None and members.field is not None:
                holder = "User" if members.via == "user_field" else kind
                holder_fields = connector.fields(holder)
                if holder_fields is not None and members.field not in holder_fields:
                    problems.append(doc.problem(("resources", kind, "members", "field"), f"the app's {holder} records have no field {members.field!r}"))
        return problems
    finally:
        await connector.close()


def _select_app(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The compiled mapping named APP among --config files (default: the demo), or an exit status."""
    from .connectors.registry import load_registry
    from .demo import demo_mapping_path, ensure_demo_database
    from .mapping.compile import load_mapping
    from .mapping.loader import MappingFileError

    registry = load_registry()
    if args.config:
        files = _mapping_files(args.config)
    else:
        ensure_demo_database(Path(args.data_dir))
        files = [demo_mapping_path()]
    found = []
    try:
        for path in files:
            found.append(load_mapping(path, registry, require_secrets=False))
    except MappingFileError as exc:
        print(exc, file=sys.stderr)
        return 1
    for mapping in found:
        if mapping.app == args.app:
            return mapping
    print(f"no app {args.app!r} in the mappings given (valid: {', '.join(m.app for m in found) or 'none'})", file=sys.stderr)
    return 2


def cmd_translate(args: argparse.Namespace) -> int:
    import asyncio

    from .provisioning.dryrun import plan_request
    from .scim.errors import ScimError

    mapping = _select_app(args)
    if isinstance(mapping, int):
        return mapping
    try:
        request = json.loads(Path(args.request).read_text() if args.request != "-" else sys.stdin.read())
    except (OSError, ValueError) as exc:
        print(f"{args.request}: not a readable JSON file: {exc}", file=sys.stderr)
        return 2
    if not isinstance(request, dict):
        print(f"{args.request}: expected a JSON object (a SCIM resource, or {{method, path, body}})", file=sys.stderr)
        return 2
    try:
        plan = asyncio.run(plan_request(mapping, request, Path(args.data_dir)))
    except ScimError as exc:
        print(f"{args.request}: the gateway would answer {exc.status}{' ' + exc.scim_type if exc.scim_type else ''}: {exc.detail}", file=sys.stderr)
        return 1
    except LookupError as exc:  # the connector's options lack the call this request needs
        print(f"{args.request}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(plan, indent=2, default=str))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    import asyncio

    from .app import create_store
    from .connectors.base import AppContext
    from .provisioning.provisioner import Provisioner
    from .scim.errors import ScimError
    from .settings import GatewaySettings
    from .store.base import StoreUnavailable

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    mapping = _select_app(args)
    if isinstance(mapping, int):
        return mapping
    store_url = args.store or os.environ.get(STORE_ENV) or None
    settings = GatewaySettings(mappings=[], data_dir=Path(args.data_dir), store_url=SecretStr(store_url) if store_url else None)
    tty = sys.stderr.isatty()

    def progress(kind: str) -> Callable[[dict[str, int]], None]:
        def show(counts: dict[str, int]) -> None:
            if tty and (counts["read"] % 100 == 0):
                print(f"\r{kind}: {counts['read']} read, {counts['linked']} linked", end="", file=sys.stderr, flush=True)

        return show

    async def run() -> int:
        store = create_store(settings)
        await store.open()
        connector = mapping.connector_cls(mapping.connector_config, AppContext(mapping.app, settings.data_dir))
        await connector.open()
        try:
            provisioner = Provisioner(mapping, connector, store)
            await provisioner.recover()
            status = 0
            for kind in ("User", "Group"):  # users first: a group's members must be linked before it
                if kind not in mapping.resources:
                    continue
                counts = await provisioner.import_existing(kind, progress(kind))
                if tty:
                    print("\r", end="", file=sys.stderr)
                print(
                    f"{kind}: {counts['read']} in the app, {counts['linked']} linked now, {counts['already']} already linked, "
                    f"{counts['conflicts']} conflicts, {counts['unnamed']} without a {provisioner.resource(kind).unique_attr}"
                )
                status = status or (1 if counts["conflicts"] else 0)
            return status
        finally:
            await connector.close()
            await store.close()

    try:
        return asyncio.run(run())
    except ScimError as exc:
        print(f"import {mapping.app}: {exc.detail}", file=sys.stderr)
        return 1
    except StoreUnavailable as exc:
        print(f"cannot open the correlation store: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # the connector's own failure, e.g. the app is down
        from .connectors.errors import AppError

        if isinstance(exc, AppError):
            print(f"import {mapping.app}: the app failed: {exc.detail}", file=sys.stderr)
            return 1
        raise


def cmd_schema(args: argparse.Namespace) -> int:
    from .connectors.registry import load_registry
    from .mapping.model import mapping_json_schema

    print(json.dumps(mapping_json_schema([cls.Config for cls in load_registry().types.values()]), indent=2))
    return 0


def cmd_hash_token(args: argparse.Namespace) -> int:
    token = sys.stdin.readline().strip() if args.token == "-" else args.token
    print(hashlib.sha256(token.encode()).hexdigest())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scim-gateway", description="A SCIM 2.0 gateway in front of legacy apps")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway (the demo app when no --config is given)")
    serve.add_argument("--config", action="append", metavar="FILE", help="a mapping file or a folder of them (repeatable)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--token", help=f"bearer token for the app (default: ${TOKEN_ENV}, or the demo token)")
    serve.add_argument("--data-dir", default="data", help="where the store and the demo database live (default ./data)")
    serve.add_argument("--public-url", help="the gateway's URL as IdPs reach it (for Location headers)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--store", metavar="URL",
        help=f"a postgresql:// store shared by several gateway processes (default: ${STORE_ENV}, else SQLite in --data-dir);"
        f" a URL with a password only by ${STORE_ENV}",
    )
    serve.add_argument("--store-pool-size", type=int, default=10, metavar="N", help="connections per process to a PostgreSQL store")
    serve.add_argument("--workers", type=int, default=1, metavar="N", help="serving processes sharing the port (SO_REUSEPORT)")
    serve.add_argument(
        "--loop", choices=["auto", "uvloop", "asyncio"], default="auto",
        help="event loop: uvloop (libuv, faster) or Python's asyncio; auto: uvloop where it is installed",
    )
    serve.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS: the certificate chain (PEM), with --tls-key")
    serve.add_argument("--tls-key", metavar="FILE", help="serve HTTPS: the certificate's private key (PEM, unencrypted), with --tls-cert")
    serve.add_argument(
        "--audit-log", metavar="PATH",
        help="append-only audit log of every provisioning operation (default DATA_DIR/audit.log; off: none)",
    )
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check", help="validate mapping files; exit 1 on any problem")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.add_argument("--connect", action="store_true", help="also open each app's connector and check its live schema")
    check.add_argument("--data-dir", default="data", help="with --connect: the data directory {data_dir} in DSNs stands for")
    check.set_defaults(func=cmd_check)

    translate = sub.add_parser("translate", help="dry run: print the app calls a SCIM request would make, calling nothing")
    translate.add_argument("app", help="the app's name (its mapping's `app`)")
    translate.add_argument("request", metavar="REQUEST.json", help="a SCIM resource (a create), or {method, path, body[, current]}; - for stdin")
    translate.add_argument("--config", action="append", metavar="FILE", help="mapping files or folders (default: the demo)")
    translate.add_argument("--data-dir", default="data", help=argparse.SUPPRESS)
    translate.set_defaults(func=cmd_translate)

    imp = sub.add_parser("import", help="link the accounts that already exist in the app (idempotent)")
    imp.add_argument("app", help="the app's name (its mapping's `app`)")
    imp.add_argument("--config", action="append", metavar="FILE", help="mapping files or folders (default: the demo)")
    imp.add_argument("--data-dir", default="data", help="where the SQLite store lives (default ./data)")
    imp.add_argument("--store", metavar="URL", help=f"a postgresql:// store (default: ${STORE_ENV}, else SQLite in --data-dir)")
    imp.set_defaults(func=cmd_import)

    schema = sub.add_parser("schema", help="print the JSON Schema of mapping files")
    schema.set_defaults(func=cmd_schema)

    hash_token = sub.add_parser("hash-token", help="print the sha256 to put in a mapping's auth.bearer")
    hash_token.add_argument("token", help="the token, or - to read it from standard input")
    hash_token.set_defaults(func=cmd_hash_token)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
