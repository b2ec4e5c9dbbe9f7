"""`scim-gateway audit`: search the audit log (the reader the admin page uses, gateway/audit_search.py), newest first.

A table on a terminal, JSON lines with --json (the records as the log holds them). `--user` takes a SCIM id,
or a userName / externalId the correlation store resolves to the person's ids in every app (when the store
can be opened: the SQLite file in --data-dir, or --store / $SCIM_GATEWAY_STORE).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from .common import STORE_ENV, Stop

COLUMNS = ("ts", "app", "op", "resource", "status", "scim_type", "reason", "credential")


def add_command(sub: Any) -> None:
    audit = sub.add_parser("audit", help="search the audit log, newest first (a table, or JSON lines with --json)")
    audit.add_argument("--audit-log", metavar="PATH", help="the audit log (default DATA_DIR/audit.log)")
    audit.add_argument("--data-dir", default="data", help="where the log and the SQLite store live (default ./data)")
    audit.add_argument("--store", metavar="URL", help=f"a postgresql:// store to resolve --user (default: ${STORE_ENV})")
    audit.add_argument("--app", action="append", metavar="APP", help="only this app's records (repeatable)")
    audit.add_argument("--user", metavar="U", help="a SCIM id, userName or externalId: that person's records in every app")
    audit.add_argument("--op", action="append", metavar="OP", help="create, replace, patch, delete, bulk, auth, reconcile-fix")
    audit.add_argument("--since", metavar="WHEN", help="ISO time (2026-05-04T09:00Z, 2026-05-04) or ago: 30m, 1h, 2d")
    audit.add_argument("--until", metavar="WHEN", help="as --since")
    audit.add_argument("--failed", action="store_true", help="only failures (status 400 and above, or none)")
    audit.add_argument("--json", action="store_true", help="JSON lines, one record each")
    audit.add_argument(
        "--limit", type=int, default=None, metavar="N", help="at most N records (default: 50 on a terminal, all otherwise)"
    )
    audit.set_defaults(func=cmd_audit)


def cmd_audit(args: argparse.Namespace) -> int:
    from ..audit_search import Reader

    try:
        path, query = _query(args)
    except Stop as stop:
        print(stop, file=sys.stderr)
        return stop.status
    if not path.exists():
        print(f"no audit log at {path} (give --audit-log or --data-dir)", file=sys.stderr)
        return 1
    limit = args.limit if args.limit is not None else (50 if sys.stdout.isatty() else None)
    reader = Reader(path)
    rows: list[dict[str, Any]] = []
    shown = 0
    try:
        for record in reader.records(query):
            if limit is not None and shown >= limit:
                break
            shown += 1
            if args.json:
                sys.stdout.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
            else:
                rows.append(record)
    except BrokenPipeError:  # `| head`
        return 0
    if not args.json:
        print(table(rows) if rows else "no record matches", flush=True)
    if reader.skipped:
        print(f"{reader.skipped} line(s) were not records (a torn last line?) and were skipped", file=sys.stderr)
    return 0


def _query(args: argparse.Namespace) -> tuple[Path, Any]:
    from ..audit_search import AuditQuery, BadTime, parse_when

    if args.limit is not None and args.limit < 1:
        raise Stop(2, "--limit must be at least 1")
    path = Path(args.audit_log) if args.audit_log else Path(args.data_dir) / "audit.log"
    query = AuditQuery(apps=set(args.app or ()), ops=set(args.op or ()), only_failed=args.failed)
    now = datetime.now(UTC)
    try:
        query.since = parse_when(args.since, now) if args.since else None
        query.until = parse_when(args.until, now) if args.until else None
    except BadTime as exc:
        raise Stop(2, f"--since/--until: {exc}") from None
    if args.user:
        query.user_given = True
        query.ids = _user_ids(args, args.user)
    return path, query


def _user_ids(args: argparse.Namespace, who: str) -> set[str]:
    """`who` and the ids the store resolves it to; `who` alone when there is no store to ask."""
    import asyncio

    store_url = args.store or os.environ.get(STORE_ENV) or None
    if store_url is None and not (Path(args.data_dir) / "gateway.db").exists():
        return {who}

    async def resolve() -> set[str]:
        from ..app import create_store
        from ..provisioning.audit_user import audit_ids
        from ..settings import GatewaySettings

        settings = GatewaySettings(
            mappings=[], data_dir=Path(args.data_dir), store_url=SecretStr(store_url) if store_url else None
        )
        store = create_store(settings)
        await store.open()
        try:
            return await audit_ids(store, who)
        finally:
            await store.close()

    from ..store import StoreError

    try:
        return asyncio.run(resolve())
    except (StoreError, OSError) as exc:
        print(f"cannot resolve --user {who!r} through the store ({exc}): matching it as a SCIM id", file=sys.stderr)
        return {who}


def _resource(record: dict[str, Any]) -> str:
    kind, rid = record.get("resource_type") or "", record.get("id") or ""
    return f"{kind} {rid}".strip()


def _cells(record: dict[str, Any]) -> list[str]:
    status = record.get("status")
    reason = "; ".join(str(record[k]) for k in ("reason", "fix", "detail") if record.get(k))
    return [
        str(record.get("ts", "")),
        str(record.get("app") or record.get("area") or ""),
        str(record.get("op") or ""),
        _resource(record),
        str(status if status is not None else record.get("outcome") or "-"),
        str(record.get("scim_type") or ""),
        reason,
        str(record.get("credential") or ""),
    ]


def table(records: list[dict[str, Any]]) -> str:
    rows = [list(COLUMNS)] + [_cells(r) for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows)


__all__ = ["add_command", "cmd_audit", "table"]
