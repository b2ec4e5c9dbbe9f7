"""The reconcile command on a terminal: a progress bar on stderr when it is a tty (none in a pipe)."""

from __future__ import annotations

import os
import pty
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

from gateway.cli import main
from gateway.demo import ensure_demo_database


def test_progress_bar_on_a_terminal_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ensure_demo_database(data)
    with closing(sqlite3.connect(data / "demo.db")) as db:
        db.executemany("INSERT INTO employees (login, status) VALUES (?, 'A')", [(f"p{i}",) for i in range(120)])
        db.commit()
    assert main(["import", "demo", "--data-dir", str(data)]) == 0
    cmd = [sys.executable, "-m", "gateway.cli", "reconcile", "demo", "--data-dir", str(data)]
    master, slave = pty.openpty()
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=slave, timeout=60, check=False)
        os.close(slave)
        seen = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the terminal's other end is closed: all was read
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
    assert proc.returncode == 0, proc.stdout
    text = seen.decode()
    assert "User   [" in text and "120/120" in text and "50/120" in text, text
    piped = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
    assert piped.returncode == 0 and b"[" not in piped.stderr and b"0 orphans" in piped.stdout
