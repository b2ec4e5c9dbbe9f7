"""Reading the demo legacy app's own rows, to assert what a SCIM request did to the app."""

from __future__ import annotations

import sqlite3
from urllib.parse import quote


def employee(db: sqlite3.Connection, login: str) -> sqlite3.Row | None:
    return db.execute("SELECT * FROM employees WHERE login = ? COLLATE NOCASE", (login,)).fetchone()


def emp_no(db: sqlite3.Connection, login: str) -> int:
    row = employee(db, login)
    assert row is not None, f"no employees row for {login}"
    return int(row["emp_no"])


def logins(db: sqlite3.Connection) -> set[str]:
    return {r[0] for r in db.execute("SELECT login FROM employees")}


def team(db: sqlite3.Connection, name: str) -> sqlite3.Row | None:
    return db.execute("SELECT * FROM teams WHERE team_name = ? COLLATE NOCASE", (name,)).fetchone()


def team_pairs(db: sqlite3.Connection) -> set[tuple[str, str]]:
    """Every (team_name, login) membership pair in the app."""
    rows = db.execute(
        "SELECT t.team_name, e.login FROM team_members m"
        " JOIN teams t ON t.team_id = m.team_id JOIN employees e ON e.emp_no = m.emp_no"
    ).fetchall()
    return {(r[0], r[1]) for r in rows}


def count(db: sqlite3.Connection, table: str) -> int:
    return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def q(text: str) -> str:
    """A filter, URL-encoded for a query string."""
    return quote(text, safe="")
