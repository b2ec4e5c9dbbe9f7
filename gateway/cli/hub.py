"""`scim-gateway hub status | replay | sync`, `schema --hub` and `check --hub`: the hub from the command line
(docs/hub.md). They work on the store, beside a running gateway (whose workers deliver what they queue)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from .common import STORE_ENV

if TYPE_CHECKING:
    from ..store.outbox import HubStore


def add_hub_parser(sub: Any) -> None:
    hub = sub.add_parser("hub", help="the hub's delivery to its apps: status, replay dead letters, sync an app")
    hub_sub = hub.add_subparsers(dest="hub_command", required=True)

    def store_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", default="data", help="where the SQLite store lives (default ./data)")
        p.add_argument("--store", metavar="URL", help=f"a postgresql:// store (default: ${STORE_ENV}, else SQLite in --data-dir)")

    status = hub_sub.add_parser("status", help="per user (and group) and app: delivered, pending, failed with the last error")
    status.add_argument("user", nargs="?", help="a userName (any case) or hub id; default: everything")
    status.add_argument("--app", help="only this app")
    status.add_argument("--json", action="store_true", help="the JSON document GET /hub/status answers")
    store_args(status)
    status.set_defaults(func=cmd_hub_status)

    replay = hub_sub.add_parser("replay", help="re-queue dead letters (all, an app's, or a user's)")
    replay.add_argument("app", nargs="?", help="only this app's")
    replay.add_argument("--user", help="only this user's (userName or hub id)")
    store_args(replay)
    replay.set_defaults(func=cmd_hub_replay)

    sync = hub_sub.add_parser("sync", help="queue every hub user and group for an app: its assignment is recomputed")
    sync.add_argument("app", help="an app the hub file names")
    sync.add_argument("--hub", required=True, metavar="FILE", help="the hub file")
    sync.add_argument("--wait", action="store_true", help="then wait until the running gateway has delivered them")
    sync.add_argument("--timeout", type=float, default=600.0, help="with --wait: give up after this many seconds")
    store_args(sync)
    sync.set_defaults(func=cmd_hub_sync)


def _run(args: argparse.Namespace, work: Callable[[HubStore], Awaitable[int]]) -> int:
    from ..app import create_store
    from ..hub.directory import HUB_APP
    from ..settings import GatewaySettings
    from ..store import StoreUnavailable
    from ..store.outbox import HubStore

    async def main() -> int:
        url = args.store or os.environ.get(STORE_ENV) or None
        settings = GatewaySettings(mappings=[], data_dir=Path(args.data_dir), store_url=SecretStr(url) if url else None)
        store = create_store(settings)
        await store.open()
        try:
            # Nothing is settled through this store: its router is never asked.
            return await work(HubStore(store.dialect, hub=HUB_APP, router=lambda _k, _d, _g: set()))
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except StoreUnavailable as exc:
        print(f"cannot open the correlation store: {exc}", file=sys.stderr)
        return 1


def cmd_hub_status(args: argparse.Namespace) -> int:
    from ..hub.runtime import status_document

    async def work(store: HubStore) -> int:
        doc = status_document(await store.status(args.user, args.app))
        if args.json:
            print(json.dumps(doc, indent=2))
        else:
            _print_status(doc)
        return 1 if args.user and not doc["resources"] else 0

    return _run(args, work)


def _print_status(doc: dict[str, Any]) -> None:
    for item in doc["resources"]:
        name = item["name"] or f"(deleted in the hub) {item['id']}"
        print(f"{item['type']} {name}")
        for app, s in sorted(item["apps"].items()):
            line = f"  {app}: {s['state']}"
            if s["state"] == "delivered":
                line += f" at {s['deliveredAt']}"
            if s["lastError"]:
                line += f"; {'last error' if s['state'] != 'failed' else 'error'} at {s['lastErrorAt']} after {s['attempts']} attempt(s): {s['lastError']}"
            print(line)
    t = doc["totals"]
    print(f"{t['delivered']} delivered, {t['pending']} pending, {t['failed']} failed")


def cmd_hub_replay(args: argparse.Namespace) -> int:
    async def work(store: HubStore) -> int:
        n = await store.replay(args.app, args.user)
        print(f"{n} dead letter(s) queued again; a running gateway delivers them")
        return 0

    return _run(args, work)


def cmd_hub_sync(args: argparse.Namespace) -> int:
    from ..hub.config import load_hub
    from ..mapping.loader import MappingFileError

    try:
        hub = load_hub(Path(args.hub), require_secrets=False)
    except MappingFileError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.app not in hub.config.apps:
        print(f"the hub file feeds no app {args.app!r} (valid: {', '.join(sorted(hub.config.apps))})", file=sys.stderr)
        return 2
    tty = sys.stderr.isatty()

    async def work(store: HubStore) -> int:
        items = await store.hub_resources()
        for start in range(0, len(items), 500):
            await store.enqueue(args.app, items[start : start + 500])
            if tty:
                _bar("queued", min(start + 500, len(items)), len(items))
        if tty:
            print(file=sys.stderr)
        print(f"{len(items)} hub resource(s) queued for {args.app}; their assignment is recomputed as they are delivered")
        if not args.wait:
            return 0
        deadline = time.monotonic() + args.timeout
        while True:
            states = [s for s in await store.status(app=args.app)]
            pending = sum(1 for s in states if s.state == "pending")
            failed = sum(1 for s in states if s.state == "dead")
            if tty:
                _bar("delivered", len(states) - pending, len(states))
            if not pending:
                if tty:
                    print(file=sys.stderr)
                print(f"{len(states) - failed} delivered, {failed} failed (see `scim-gateway hub status --app {args.app}`)")
                return 1 if failed else 0
            if time.monotonic() > deadline:
                print(
                    f"\n{pending} still pending after {args.timeout:g} s: is a gateway serving the hub running?", file=sys.stderr
                )
                return 1
            await asyncio.sleep(0.5)

    return _run(args, work)


def _bar(what: str, done: int, total: int) -> None:
    width = 30
    filled = width * done // total if total else width
    print(f"\r{what} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end="", file=sys.stderr, flush=True)


def cmd_hub_schema() -> int:
    from ..hub.config import hub_json_schema

    print(json.dumps(hub_json_schema(), indent=2))
    return 0


__all__ = ["add_hub_parser", "cmd_hub_replay", "cmd_hub_schema", "cmd_hub_status", "cmd_hub_sync"]
