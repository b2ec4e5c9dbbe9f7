"""The embedded demo: a legacy HR app on SQLite, created on first run, upgraded by numbered migrations, and its mapping."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from importlib import resources
from pathlib import Path

DEMO_APP = "demo"
DEMO_TOKEN = "demo-token-not-for-production"

# The demo database's migrations, files of this package in order; the database's PRAGMA user_version is the number
# of those applied. Released files are never edited: a change is a new file at the end. The first is the schema as
# every release before migrations created it (CREATE ... IF NOT EXISTS), so a data directory of such a release
# (user_version 0, its tables already there) takes it as a no-op and goes on from there.
DEMO_MIGRATIONS: tuple[str, ...] = ("schema.sql",)


class DemoDatabaseError(RuntimeError):
    """The demo database cannot be used by this release (made by a newer one)."""


def demo_mapping_path() -> Path:
    """The packaged demo mapping (mappings/demo.yaml in the source tree)."""
    ref = resources.files(__package__).joinpath("demo.yaml")
    return Path(str(ref))


def statements(script: str) -> list[str]:
    """A migration's statements, split where SQLite's own tokenizer says one is complete (comments may hold `;`)."""
    out: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            out.append(pending.strip())
            pending = ""
    return out


def ensure_demo_database(data_dir: Path, migrations: tuple[str | Path, ...] = DEMO_MIGRATIONS) -> Path:
    """Create the demo app's database, or bring one made by an earlier release up to date; idempotent, and safe
    for several processes at once (one write transaction does the whole upgrade)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "demo.db"
    package = resources.files(__package__)
    with closing(sqlite3.connect(path, isolation_level=None, timeout=30)) as db:
        db.execute("BEGIN IMMEDIATE")
        try:
            current = int(db.execute("PRAGMA user_version").fetchone()[0])
            if current > len(migrations):
                raise DemoDatabaseError(
                    f"{path} was made by a newer release (demo schema {current}; this one knows {len(migrations)})"
                )
            for number, name in enumerate(migrations, start=1):
                if number > current:
                    script = name.read_text("utf-8") if isinstance(name, Path) else package.joinpath(name).read_text("utf-8")
                    for statement in statements(script):
                        db.execute(statement)
                    db.execute(f"PRAGMA user_version = {number}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("PRAGMA journal_mode = WAL")  # kept by the file: readers and the writer do not block each other
    return path
