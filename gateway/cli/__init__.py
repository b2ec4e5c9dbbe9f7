"""`scim-gateway serve | status | check | translate | import | reconcile | review | audit | pending | schema |
hash-token | backup`: the console script."""

from __future__ import annotations

import argparse
import os

from .audit import add_command as add_audit_command
from .backup import add_backup_parser
from .check import cmd_check
from .common import DEFAULT_HOST, DEFAULT_PORT, STORE_ENV, TOKEN_ENV
from .hub import add_hub_parser
from .pending import add_pending_parser
from .reconcile import add_commands as add_governance_commands
from .serve import cmd_serve
from .status import add_status_parser
from .tools import cmd_hash_token, cmd_import, cmd_schema, cmd_translate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scim-gateway", description="A SCIM 2.0 gateway in front of legacy apps")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway (the demo app when no --config is given)")
    serve.add_argument("--config", action="append", metavar="FILE", help="a mapping file or a folder of them (repeatable)")
    serve.add_argument("--host", default=DEFAULT_HOST)
    serve.add_argument("--port", type=int, default=DEFAULT_PORT)
    serve.add_argument("--token", help=f"bearer token for the app (default: ${TOKEN_ENV}, or the demo token)")
    serve.add_argument("--data-dir", default="data", help="where the store and the demo database live (default ./data)")
    serve.add_argument("--public-url", help="the gateway's URL as IdPs reach it (for Location headers)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--log-format",
        default=os.environ.get("SCIM_GATEWAY_LOG_FORMAT", "text"),
        choices=["text", "json"],
        help="text (for a terminal) or json: one object per line, a line per request (default: $SCIM_GATEWAY_LOG_FORMAT, else text)",
    )
    serve.add_argument(
        "--store",
        metavar="URL",
        help=f"a postgresql:// store shared by several gateway processes (default: ${STORE_ENV}, else SQLite in --data-dir);"
        f" a URL with a password only by ${STORE_ENV}",
    )
    serve.add_argument(
        "--store-pool-size", type=int, default=10, metavar="N", help="connections per process to a PostgreSQL store"
    )
    serve.add_argument("--workers", type=int, default=1, metavar="N", help="serving processes sharing the port (SO_REUSEPORT)")
    serve.add_argument(
        "--loop",
        choices=["auto", "uvloop", "asyncio"],
        default="auto",
        help="event loop: uvloop (libuv, faster) or Python's asyncio; auto: uvloop where it is installed",
    )
    serve.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS: the certificate chain (PEM), with --tls-key")
    serve.add_argument(
        "--tls-key", metavar="FILE", help="serve HTTPS: the certificate's private key (PEM, unencrypted), with --tls-cert"
    )
    serve.add_argument(
        "--recovery-interval",
        type=_positive_seconds,
        default=30.0,
        metavar="SECONDS",
        help="seconds between sweeps that settle writes left unsettled (a failed settle, a dead peer process); default 30",
    )
    serve.add_argument(
        "--audit-log",
        metavar="PATH",
        help="append-only audit log of every provisioning operation (default DATA_DIR/audit.log; off: none)",
    )
    serve.add_argument(
        "--admin-credentials",
        metavar="FILE",
        help="turn the admin page (/admin) on with the credentials in FILE (lines: bearer NAME SHA256, basic USER SHA256;"
        " default: $SCIM_GATEWAY_ADMIN_CREDENTIALS); $SCIM_GATEWAY_ADMIN_TOKEN adds a bearer token",
    )
    serve.add_argument("--hub", metavar="FILE", help="a hub file: serve /hub/scim/v2 and feed the apps it names (docs/hub.md)")
    serve.set_defaults(func=cmd_serve)

    add_status_parser(sub)

    check = sub.add_parser("check", help="validate mapping files; exit 1 on any problem")
    check.add_argument("files", nargs="*", metavar="FILE")
    check.add_argument("--hub", metavar="FILE", help="also check a hub file (and, against the mappings given, the apps it feeds)")
    check.add_argument("--connect", action="store_true", help="also open each app's connector and check its live schema")
    check.add_argument("--data-dir", default="data", help="with --connect: the data directory {data_dir} in DSNs stands for")
    check.set_defaults(func=cmd_check)

    translate = sub.add_parser("translate", help="dry run: print the app calls a SCIM request would make, calling nothing")
    translate.add_argument("app", help="the app's name (its mapping's `app`)")
    translate.add_argument(
        "request", metavar="REQUEST.json", help="a SCIM resource (a create), or {method, path, body[, current]}; - for stdin"
    )
    translate.add_argument("--config", action="append", metavar="FILE", help="mapping files or folders (default: the demo)")
    translate.add_argument("--data-dir", default="data", help=argparse.SUPPRESS)
    translate.set_defaults(func=cmd_translate)

    imp = sub.add_parser("import", help="link the accounts that already exist in the app (idempotent)")
    imp.add_argument("app", help="the app's name (its mapping's `app`)")
    imp.add_argument("--config", action="append", metavar="FILE", help="mapping files or folders (default: the demo)")
    imp.add_argument("--data-dir", default="data", help="where the SQLite store lives (default ./data)")
    imp.add_argument("--store", metavar="URL", help=f"a postgresql:// store (default: ${STORE_ENV}, else SQLite in --data-dir)")
    imp.set_defaults(func=cmd_import)

    add_governance_commands(sub)  # reconcile, review
    add_audit_command(sub)

    schema = sub.add_parser("schema", help="print the JSON Schema of mapping files")
    schema.add_argument("--hub", action="store_true", help="the JSON Schema of the hub file instead (docs/hub.md)")
    schema.set_defaults(func=cmd_schema)

    hash_token = sub.add_parser("hash-token", help="print the sha256 to put in a mapping's auth.bearer")
    hash_token.add_argument("token", help="the token, or - to read it from standard input")
    hash_token.set_defaults(func=cmd_hash_token)

    add_backup_parser(sub)
    add_pending_parser(sub)
    add_hub_parser(sub)
    return parser


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


__all__ = ["build_parser", "main"]
