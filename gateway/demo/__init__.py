"""The embedded demo: a legacy HR app on SQLite, created on first run, and its mapping."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from importlib import resources
from pathlib import Path

DEMO_APP = "demo"
DEMO_TOKEN = "demo-token-not-for-production"


def demo_mapping_path() -> Path:
    """The packaged demo mapping (mappings/demo.yaml in the source tree)."""
    ref = resources.files(__package__).joinpath("demo.yaml")
    return Path(str(ref))


def ensure_demo_database(data_dir: Path) -> Path:
    """Create the demo app's database (tables only) if it does not exist yet; idempotent."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "demo.db"
    script = resources.files(__package__).joinpath("schema.sql").read_text("utf-8")
    with closing(sqlite3.connect(path)) as db:
        db.executescript(script)
        db.execute("PRAGMA journal_mode = WAL")  # kept by the file: readers and the writer do not block each other
    return path
