"""An online backup of an SQLite database file while gateways keep writing to it (SQLite's backup API).

The copy is one consistent snapshot (WAL content included), written beside the destination under a temporary
name and renamed into place when complete, so a destination file is never half a backup. Writers are not
stopped: the backup copies a bounded number of pages per step and lets them in between; a write that lands
during a step makes SQLite restart the copy from that snapshot, which the step loop absorbs.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

PAGES_PER_STEP = 1024  # 4 MiB at SQLite's default page size: writers wait at most one step


def backup_database(source: Path, destination: Path, progress: Callable[[int, int], None] | None = None) -> int:
    """Copy the database `source` to `destination` (replaced atomically); the number of pages copied.

    Raises FileNotFoundError when `source` does not exist (a backup never creates an empty database), and
    sqlite3.Error when it is not a database or cannot be read.
    """
    if not source.is_file():
        raise FileNotFoundError(f"no database at {source}")
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    partial.unlink(missing_ok=True)
    src = sqlite3.connect(source, timeout=30.0)  # it only reads; not mode=ro, which a WAL file without -shm refuses
    try:
        dst = sqlite3.connect(partial)
        try:
            step = (lambda _status, left, total: progress(total - left, total)) if progress else None
            src.backup(dst, pages=PAGES_PER_STEP, progress=step)
            pages = int(dst.execute("PRAGMA page_count").fetchone()[0])
            if dst.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError(f"the copy of {source} fails its integrity check")
            dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file: no -wal beside it
        finally:
            dst.close()
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        os.replace(partial, destination)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        src.close()
    return pages


__all__ = ["backup_database"]
