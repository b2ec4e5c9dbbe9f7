"""`scim-gateway backup DEST`: an online backup of the SQLite data directory while the gateway serves."""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from pathlib import Path

from .common import STORE_ENV

# What a data directory holds that a restore needs: the correlation store, and the demo app's own database.
DATABASES = ("gateway.db", "demo.db")


def cmd_backup(args: argparse.Namespace) -> int:
    from ..store.backup import backup_database

    if args.store or os.environ.get(STORE_ENV):
        print(
            "backup copies the SQLite store of a data directory; a PostgreSQL store is backed up with PostgreSQL's"
            " own tools (pg_dump, or continuous archiving): see docs/operations.md, 'Backup and restore'",
            file=sys.stderr,
        )
        return 2
    data_dir, destination = Path(args.data_dir), Path(args.destination)
    if destination.resolve() == data_dir.resolve():
        print(f"the backup must go elsewhere than the data directory {data_dir}", file=sys.stderr)
        return 2
    found = [name for name in DATABASES if (data_dir / name).is_file()]
    if "gateway.db" not in found:
        print(f"no correlation store in {data_dir} (gateway.db): nothing to back up", file=sys.stderr)
        return 1
    for name in found:
        try:
            pages = backup_database(data_dir / name, destination / name)
        except (OSError, sqlite3.Error) as exc:
            print(f"backup of {data_dir / name} failed: {exc}", file=sys.stderr)
            return 1
        print(f"{data_dir / name} -> {destination / name} ({pages} pages, integrity ok)")
    return 0


def add_backup_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    backup = sub.add_parser("backup", help="copy the SQLite store (and the demo's database) while the gateway serves")
    backup.add_argument("destination", metavar="DEST", help="a directory: gateway.db (and demo.db) are written there")
    backup.add_argument("--data-dir", default="data", help="the data directory the gateway serves from (default ./data)")
    backup.add_argument("--store", metavar="URL", help=argparse.SUPPRESS)
    backup.set_defaults(func=cmd_backup)


__all__ = ["add_backup_parser", "cmd_backup"]
