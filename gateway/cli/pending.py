"""`scim-gateway pending list [APP]`: the writes the journal holds unsettled; `pending settle SEQ`: settle one by hand.

Recovery settles what a crash left pending by itself; what it cannot decide (the app cannot tell whether
the write happened) it retries with backoff. An operator who knows better settles one entry:
`--link NATIVE_ID` (a create: the app has it, as that record), `--rollback` (the write did not happen: the
resource stays as it was), `--take-app` (the app's record is the truth: the copy becomes it). Each settle
is noted on the journal entry and written to the audit log (`--audit-log`, as the served gateway's).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from .common import STORE_ENV, Stop, audit_log_setting
from .tools import select_app

if TYPE_CHECKING:
    from ..provisioning.provisioner import Provisioner
    from ..settings import GatewaySettings
    from ..store import JournalEntry, Member, Store


def add_pending_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # Two subcommands, never an app name in a subcommand's place: an app may be called `settle` or `list`.
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--config", action="append", metavar="FILE", help="mapping files or folders (default: the demo)")
    where.add_argument("--data-dir", default="data", help="where the SQLite store lives (default ./data)")
    where.add_argument("--store", metavar="URL", help=f"a postgresql:// store (default: ${STORE_ENV}, else SQLite in --data-dir)")
    pending = sub.add_parser(
        "pending", help="the writes left unsettled in the journal: `pending list [APP]`, `pending settle SEQ`"
    )
    actions = pending.add_subparsers(dest="action", metavar="{list,settle}", required=True)
    listing = actions.add_parser("list", parents=[where], help="list the entries left pending (of one app, or every app)")
    listing.add_argument("app", nargs="?", metavar="APP", help="only this app's entries")
    listing.set_defaults(func=cmd_pending)
    settle = actions.add_parser("settle", parents=[where], help="settle one entry by hand, journaled and audited")
    settle.add_argument("seq", type=int, metavar="SEQ", help="the entry's number, as `pending list` shows it")
    how = settle.add_mutually_exclusive_group(required=True)
    how.add_argument("--link", metavar="NATIVE_ID", help="a create the app made, as this record of the app")
    how.add_argument("--rollback", action="store_true", help="the write did not happen; the resource stays as it was")
    how.add_argument("--take-app", action="store_true", help="the copy becomes what the app's record holds now")
    settle.add_argument(
        "--audit-log",
        metavar="PATH",
        help="the audit log the settle is written to, as `serve --audit-log` (default DATA_DIR/audit.log; off: none)",
    )
    settle.set_defaults(func=cmd_pending)


def cmd_pending(args: argparse.Namespace) -> int:
    from ..connectors.errors import AppError
    from ..provisioning.errors import ProvisioningError
    from ..store import StoreError

    try:
        return asyncio.run(_settle(args) if args.action == "settle" else _list(args))
    except Stop as stop:
        print(stop, file=sys.stderr)
        return stop.status
    except (ProvisioningError, AppError) as exc:
        print(f"pending: {'the app failed: ' if isinstance(exc, AppError) else ''}{exc.detail}", file=sys.stderr)
        return 1
    except StoreError as exc:
        print(f"pending: {exc}", file=sys.stderr)
        return 1


def _settings(args: argparse.Namespace) -> GatewaySettings:
    from ..settings import GatewaySettings

    url = args.store or os.environ.get(STORE_ENV) or None
    return GatewaySettings(
        mappings=[],
        data_dir=Path(args.data_dir),
        store_url=SecretStr(url) if url else None,
        **audit_log_setting(getattr(args, "audit_log", None)),
    )


def _store(args: argparse.Namespace) -> Store:
    from ..app import create_store

    return create_store(_settings(args))


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


async def _list(args: argparse.Namespace) -> int:
    store = _store(args)
    await store.open()
    try:
        entries = await store.pending_entries(args.app)
    finally:
        await store.close()
    if not entries:
        print("no pending journal entries" + (f" for {args.app}" if args.app else ""))
        return 0
    print(f"{'SEQ':>6}  {'APP':<12} {'TYPE':<6} {'RESOURCE':<36} {'OP':<6} {'AGE':>6} {'TRIES':>5}  LAST REASON")
    for e in entries:
        print(
            f"{e.seq:>6}  {e.app:<12} {e.type:<6} {e.resource_id:<36} {e.op:<6} {_age(e.age):>6} {e.attempts:>5}  {e.reason or '-'}"
        )
    return 0


async def _settle(args: argparse.Namespace) -> int:
    from ..audit import AuditLog
    from ..connectors.base import AppContext
    from ..provisioning.provisioner import Provisioner

    store = _store(args)
    await store.open()
    try:
        entry = await store.journal_entry(args.seq)
        if entry is None or entry.state != "pending":
            raise Stop(1, f"journal entry {args.seq} is {'not there' if entry is None else entry.state}: nothing to settle")
        args.app = entry.app
        mapping = select_app(args)
        connector = mapping.connector_cls(mapping.connector_config, AppContext(mapping.app, Path(args.data_dir)))
        if not args.rollback:
            await connector.open()
        try:
            provisioner = Provisioner(mapping, connector, store)
            how = await _apply(provisioner, entry, args)
        finally:
            if not args.rollback:
                await connector.close()
        await store.note(entry.seq, f"operator: {how}")
        audit_file = _settings(args).audit_file
        if audit_file is not None:
            audit = AuditLog(audit_file)
            audit.open()
            try:
                audit.write(_audit_line(entry, how, args))
            finally:
                audit.close()
        print(f"journal entry {entry.seq} ({entry.op} {entry.type} {entry.resource_id}): {how}")
        return 0
    finally:
        await store.close()


async def _apply(provisioner: Provisioner, entry: JournalEntry, args: argparse.Namespace) -> str:
    """Settle the entry as the operator says; what was done, in words."""
    from ..store import Member

    ctx = provisioner.ctx
    store = ctx.store
    row = await store.get_any(entry.resource_id)
    if args.rollback or row is None:
        await ctx.pipeline.abort(entry.seq, "operator: rolled back")
        return "rolled back by the operator"
    cres = ctx.resource(entry.type)
    if args.link is not None:
        if entry.op != "create":
            raise Stop(2, f"--link settles a create; entry {entry.seq} is an {entry.op}")
        record = await ctx.connector.get(cres.name, args.link)
        if record is None:
            raise Stop(1, f"the app has no {cres.name} {args.link!r}: nothing to link")
        data = await ctx.overlay(cres, row.data, record)
        members = await _members(provisioner, cres.name, args.link) if cres.name == "Group" and cres.members else []
        if members is None:  # the app cannot list them: the members the create was sent with, added again (no change if there)
            members = [Member(m["id"], m["type"]) for m in entry.payload.get("members", [])]
            natives = await ctx.natives(members)
            if natives:
                await ctx.memberships[cres.name].write(args.link, {}, natives, [])
        await ctx.pipeline.settle_create(entry.seq, args.link, data, members)
        return f"linked to the app's record {args.link} by the operator"
    # --take-app
    native_id = row.native_id
    if entry.op == "create":
        raise Stop(2, "--take-app settles an update or a delete; a create is settled with --link NATIVE_ID or --rollback")
    record = None if native_id is None else await ctx.connector.get(cres.name, native_id)
    if record is None:
        if entry.op == "delete":
            await ctx.pipeline.settle_delete(entry.seq)
            return "deleted, as the app has no record, by the operator"
        raise Stop(1, f"the app has no record for {cres.name} {row.id}: settle it with --rollback")
    if entry.op == "delete":
        await ctx.pipeline.abort(entry.seq, "operator: the app still has the record")
        return "kept, as the app still has the record, by the operator"
    data = await ctx.overlay(cres, row.data, record)
    in_app = await _members(provisioner, cres.name, native_id) if cres.name == "Group" and cres.members else None
    name = data.get(cres.unique_attr)
    key = name.lower() if isinstance(name, str) and name.strip() else row.unique_key
    await ctx.pipeline.settle_update(entry.seq, data, key, replace_members=in_app)
    return "the copy takes the app's record, by the operator"


async def _members(provisioner: Provisioner, kind: str, native_id: str | None) -> list[Member] | None:
    from ..connectors.errors import AppError

    if native_id is None:
        return None
    try:
        return await provisioner.ctx.members_from_app(native_id)
    except AppError:
        return None  # the app cannot list them: the copy's members stay


def _audit_line(entry: JournalEntry, how: str, args: argparse.Namespace) -> dict[str, Any]:
    action = "link" if args.link else "rollback" if args.rollback else "take-app"
    return {
        "app": entry.app,
        "actor": "operator",
        "op": f"pending settle --{action}",
        "resource_type": entry.type,
        "id": entry.resource_id,
        "journal_seq": entry.seq,
        "journal_op": entry.op,
        "outcome": how,
        "user": os.environ.get("USER") or os.environ.get("LOGNAME"),
        "pid": os.getpid(),
    }


__all__ = ["add_pending_parser", "cmd_pending"]
