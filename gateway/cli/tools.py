"""The commands around serving: `translate` (a dry run), `import` (adopt the app's accounts), `schema`, `hash-token`."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import SecretStr

from .common import STORE_ENV, Stop, mapping_files

if TYPE_CHECKING:
    from ..mapping.compile import CompiledMapping


def select_app(args: argparse.Namespace) -> CompiledMapping:
    """The compiled mapping named APP among the --config files (default: the demo)."""
    from ..connectors.registry import load_registry
    from ..demo import DemoDatabaseError, demo_mapping_path, ensure_demo_database
    from ..mapping.compile import load_mapping
    from ..mapping.loader import MappingFileError

    registry = load_registry()
    if args.config:
        files = mapping_files(args.config)
    else:
        try:
            ensure_demo_database(Path(args.data_dir))
        except DemoDatabaseError as exc:
            raise Stop(1, str(exc)) from None
        files = [demo_mapping_path()]
    try:
        found = [load_mapping(path, registry, require_secrets=False) for path in files]
    except MappingFileError as exc:
        raise Stop(1, str(exc)) from None
    for mapping in found:
        if mapping.app == args.app:
            return mapping
    raise Stop(2, f"no app {args.app!r} in the mappings given (valid: {', '.join(m.app for m in found) or 'none'})")


def cmd_translate(args: argparse.Namespace) -> int:
    import asyncio

    from ..scim.dryrun import plan_request
    from ..scim.errors import ScimError

    try:
        mapping = select_app(args)
        request = _request_file(args.request)
    except Stop as stop:
        print(stop, file=sys.stderr)
        return stop.status
    try:
        plan = asyncio.run(plan_request(mapping, request, Path(args.data_dir)))
    except ScimError as exc:
        print(
            f"{args.request}: the gateway would answer {exc.status}{' ' + exc.scim_type if exc.scim_type else ''}: {exc.detail}",
            file=sys.stderr,
        )
        return 1
    except LookupError as exc:  # the connector's options lack the call this request needs
        print(f"{args.request}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(plan, indent=2, default=str))
    return 0


def _request_file(name: str) -> dict[str, object]:
    try:
        request = json.loads(Path(name).read_text() if name != "-" else sys.stdin.read())
    except (OSError, ValueError) as exc:
        raise Stop(2, f"{name}: not a readable JSON file: {exc}") from None
    if not isinstance(request, dict):
        raise Stop(2, f"{name}: expected a JSON object (a SCIM resource, or {{method, path, body}})")
    return request


def cmd_import(args: argparse.Namespace) -> int:
    import asyncio

    from ..connectors.errors import AppError
    from ..provisioning.errors import ProvisioningError
    from ..store import StoreUnavailable

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        mapping = select_app(args)
    except Stop as stop:
        print(stop, file=sys.stderr)
        return stop.status
    try:
        return asyncio.run(_import(args, mapping))
    except (ProvisioningError, AppError) as exc:  # the app is down, say, or cannot list its records
        print(f"import {mapping.app}: {'the app failed: ' if isinstance(exc, AppError) else ''}{exc.detail}", file=sys.stderr)
        return 1
    except StoreUnavailable as exc:
        print(f"cannot open the correlation store: {exc}", file=sys.stderr)
        return 1


async def _import(args: argparse.Namespace, mapping: CompiledMapping) -> int:
    """Link what the app has: users first (a group's members must be linked before it), then groups."""
    from ..app import create_store
    from ..audit import AuditLog
    from ..connectors.base import AppContext
    from ..provisioning.provisioner import Provisioner
    from ..settings import GatewaySettings

    store_url = args.store or os.environ.get(STORE_ENV) or None
    settings = GatewaySettings(mappings=[], data_dir=Path(args.data_dir), store_url=SecretStr(store_url) if store_url else None)
    store = create_store(settings)
    await store.open()
    connector = mapping.connector_cls(mapping.connector_config, AppContext(mapping.app, settings.data_dir))
    await connector.open()
    audit = AuditLog(settings.audit_file)  # what its recovery settles is audited, as the server's is
    audit.open()
    try:
        provisioner = Provisioner(mapping, connector, store, audit=audit)
        await provisioner.recover()
        status = 0
        tty = sys.stderr.isatty()
        for kind in ("User", "Group"):
            if kind not in mapping.resources:
                continue
            counts = await provisioner.import_existing(kind, _progress(kind) if tty else None)
            if tty:
                print("\r", end="", file=sys.stderr)
            print(
                f"{kind}: {counts['read']} in the app, {counts['linked']} linked now, {counts['already']} already linked, "
                f"{counts['conflicts']} conflicts, {counts['unnamed']} without a {provisioner.resource(kind).unique_attr}"
                + (f", {counts['repaired']} with their members brought up to date" if counts.get("repaired") else "")
            )
            status = status or (1 if counts["conflicts"] else 0)
        return status
    finally:
        audit.close()
        await connector.close()
        await store.close()


def _progress(kind: str) -> Callable[[dict[str, int]], None]:
    def show(counts: dict[str, int]) -> None:
        if counts["read"] % 100 == 0:
            print(f"\r{kind}: {counts['read']} read, {counts['linked']} linked", end="", file=sys.stderr, flush=True)

    return show


def cmd_schema(args: argparse.Namespace) -> int:
    from ..connectors.registry import load_registry
    from ..mapping.model import mapping_json_schema

    if getattr(args, "hub", False):
        from .hub import cmd_hub_schema

        return cmd_hub_schema()
    print(json.dumps(mapping_json_schema([cls.Config for cls in load_registry().types.values()]), indent=2))
    return 0


def cmd_hash_token(args: argparse.Namespace) -> int:
    token = sys.stdin.readline().strip() if args.token == "-" else args.token
    print(hashlib.sha256(token.encode()).hexdigest())
    return 0


__all__ = ["cmd_hash_token", "cmd_import", "cmd_schema", "cmd_translate", "select_app"]
