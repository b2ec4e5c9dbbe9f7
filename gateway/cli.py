"""`scim-gateway serve | check | schema | hash-token`."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from pathlib import Path

from pydantic import SecretStr

TOKEN_ENV = "SCIM_GATEWAY_TOKEN"


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

    from .app import create_app
    from .demo import DEMO_TOKEN, demo_mapping_path, ensure_demo_database
    from .mapping.loader import MappingFileError
    from .settings import GatewaySettings

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("scim_gateway")
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
    settings = GatewaySettings(mappings=mappings, data_dir=data_dir, public_url=args.public_url)
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
    app = create_app(settings, registry, compiled)
    host_for_url = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    root = args.public_url.rstrip("/") if args.public_url else f"http://{host_for_url}:{args.port}"
    for name in names:
        base = f"{root}/apps/{name}/scim/v2"
        print(f"SCIM base URL: {base}")
        if token:
            print(f"Bearer token:  {token}")
            print(f"Try:           curl -H 'Authorization: Bearer {token}' {base}/Users")
    sys.stdout.flush()
    try:
        web.run_app(app, host=args.host, port=args.port, print=None, shutdown_timeout=30, access_log=None)
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc} (choose another with --port)", file=sys.stderr)
        return 1
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .connectors.registry import load_registry
    from .mapping.compile import load_mapping
    from .mapping.loader import MappingFileError

    registry = load_registry()
    files = _mapping_files(args.files)
    if not files:
        print("no mapping files given", file=sys.stderr)
        return 2
    problems = 0
    for path in files:
        try:
            compiled = load_mapping(path, registry, require_secrets=False)
        except MappingFileError as exc:
            for problem in exc.problems:
                print(problem)
            problems += len(exc.problems)
        else:
            kinds = ", ".join(compiled.resources)
            print(f"{path}: ok (app {compiled.app}: {kinds})")
    return 1 if problems else 0


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
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check", help="validate mapping files; exit 1 on any problem")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(func=cmd_check)

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
