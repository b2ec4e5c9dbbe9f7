"""The SQL connector on every back end it serves: SQLite, PostgreSQL (asyncpg) and MariaDB (aiomysql).

The connector contract (ConnectorConformance) runs on each, against the demo HR
schema and against a schema that uses every table feature at once: template
keys, child-table fields, soft delete, named statements. The feature tests
assert the rows in the database, read past the connector.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from scim_gateway_plugins.sql import SqlConnector, SqlConnectorConfig, SqlSetupError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from gateway.connectors import AppConflict, AppContext, AppInvalid, AppNotFound, AppUnavailable, Record
from tests.conftest import free_port
from tests.proxy import TcpProxy
from tests.services import (
    create_mariadb_database,
    create_pg_database,
    drop_mariadb_database,
    drop_pg_database,
    load_schema,
    mariadb_url,
    pg_url,
    read_rows,
)

from .conformance import ConnectorConformance

BACKENDS = ["sqlite", "postgresql", "mariadb"]

# ---------------------------------------------------------------- schemas, one per dialect

HR = {
    "postgresql": """
CREATE TABLE employees (
    emp_no SERIAL PRIMARY KEY,
    login VARCHAR(200) NOT NULL,
    first_nm VARCHAR(100), last_nm VARCHAR(100), display_nm VARCHAR(200), mail VARCHAR(200), phone VARCHAR(50),
    job_title VARCHAR(100), dept VARCHAR(100), emp_code VARCHAR(20),
    mgr_emp_no INTEGER REFERENCES employees (emp_no) ON DELETE SET NULL,
    status CHAR(1) CONSTRAINT employees_status_check CHECK (status IN ('A', 'I')),
    created_ts TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE UNIQUE INDEX employees_login_key ON employees (lower(login));
CREATE TABLE teams (team_id SERIAL PRIMARY KEY, team_name VARCHAR(200) NOT NULL);
CREATE UNIQUE INDEX teams_team_name_key ON teams (lower(team_name));
CREATE TABLE team_members (
    team_id INTEGER NOT NULL REFERENCES teams (team_id) ON DELETE CASCADE,
    emp_no INTEGER NOT NULL REFERENCES employees (emp_no) ON DELETE CASCADE,
    PRIMARY KEY (team_id, emp_no)
);
""",
    "mariadb": """
CREATE TABLE employees (
    emp_no INT AUTO_INCREMENT PRIMARY KEY,
    login VARCHAR(200) NOT NULL UNIQUE,
    first_nm VARCHAR(100), last_nm VARCHAR(100), display_nm VARCHAR(200), mail VARCHAR(200), phone VARCHAR(50),
    job_title VARCHAR(100), dept VARCHAR(100), emp_code VARCHAR(20),
    mgr_emp_no INT NULL,
    status CHAR(1),
    created_ts DATETIME DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT employees_status_check CHECK (status IN ('A', 'I')),
    CONSTRAINT employees_mgr_fk FOREIGN KEY (mgr_emp_no) REFERENCES employees (emp_no) ON DELETE SET NULL
);
CREATE TABLE teams (team_id INT AUTO_INCREMENT PRIMARY KEY, team_name VARCHAR(200) NOT NULL UNIQUE);
CREATE TABLE team_members (
    team_id INT NOT NULL, emp_no INT NOT NULL, PRIMARY KEY (team_id, emp_no),
    FOREIGN KEY (team_id) REFERENCES teams (team_id) ON DELETE CASCADE,
    FOREIGN KEY (emp_no) REFERENCES employees (emp_no) ON DELETE CASCADE
);
""",
}

FEATURES = {
    "sqlite": """
CREATE TABLE staff (
    staff_id TEXT PRIMARY KEY, badge TEXT NOT NULL UNIQUE, login TEXT NOT NULL UNIQUE COLLATE NOCASE, full_name TEXT,
    status TEXT NOT NULL DEFAULT 'A' CHECK (status IN ('A', 'D')), deleted_at TEXT
);
CREATE TABLE staff_emails (
    staff_id TEXT NOT NULL REFERENCES staff (staff_id), kind TEXT NOT NULL, address TEXT NOT NULL UNIQUE,
    PRIMARY KEY (staff_id, kind)
);
CREATE TABLE crews (crew_id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE COLLATE NOCASE,
                    is_deleted INTEGER NOT NULL DEFAULT 0);
CREATE TABLE crew_staff (
    crew_id INTEGER NOT NULL REFERENCES crews (crew_id), staff_id TEXT NOT NULL REFERENCES staff (staff_id),
    PRIMARY KEY (crew_id, staff_id)
);
""",
    "postgresql": """
CREATE TABLE staff (
    staff_id VARCHAR(60) PRIMARY KEY, badge VARCHAR(40) NOT NULL UNIQUE, login VARCHAR(200) NOT NULL, full_name VARCHAR(200),
    status CHAR(1) NOT NULL DEFAULT 'A' CHECK (status IN ('A', 'D')), deleted_at TIMESTAMP
);
CREATE UNIQUE INDEX staff_login_key ON staff (lower(login));
CREATE TABLE staff_emails (
    staff_id VARCHAR(60) NOT NULL REFERENCES staff (staff_id), kind VARCHAR(10) NOT NULL, address VARCHAR(200) NOT NULL UNIQUE,
    PRIMARY KEY (staff_id, kind)
);
CREATE TABLE crews (crew_id SERIAL PRIMARY KEY, name VARCHAR(100) NOT NULL UNIQUE, is_deleted SMALLINT NOT NULL DEFAULT 0);
CREATE TABLE crew_staff (
    crew_id INTEGER NOT NULL REFERENCES crews (crew_id), staff_id VARCHAR(60) NOT NULL REFERENCES staff (staff_id),
    PRIMARY KEY (crew_id, staff_id)
);
CREATE SEQUENCE badge_seq START 1000;
""",
    "mariadb": """
CREATE TABLE staff (
    staff_id VARCHAR(60) PRIMARY KEY, badge VARCHAR(40) NOT NULL UNIQUE, login VARCHAR(200) NOT NULL UNIQUE, full_name VARCHAR(200),
    status CHAR(1) NOT NULL DEFAULT 'A' CHECK (status IN ('A', 'D')), deleted_at DATETIME NULL
);
CREATE TABLE staff_emails (
    staff_id VARCHAR(60) NOT NULL, kind VARCHAR(10) NOT NULL, address VARCHAR(200) NOT NULL UNIQUE,
    PRIMARY KEY (staff_id, kind), FOREIGN KEY (staff_id) REFERENCES staff (staff_id)
);
CREATE TABLE crews (crew_id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(100) NOT NULL UNIQUE, is_deleted TINYINT NOT NULL DEFAULT 0);
CREATE TABLE crew_staff (
    crew_id INT NOT NULL, staff_id VARCHAR(60) NOT NULL, PRIMARY KEY (crew_id, staff_id),
    FOREIGN KEY (crew_id) REFERENCES crews (crew_id), FOREIGN KEY (staff_id) REFERENCES staff (staff_id)
);
""",
}
HR["sqlite"] = (Path(__file__).resolve().parents[2] / "gateway" / "demo" / "schema.sql").read_text("utf-8")

HR_TABLES: dict[str, Any] = {
    "User": {"table": "employees", "key": "emp_no"},
    "Group": {
        "table": "teams",
        "key": "team_id",
        "members": {"table": "team_members", "group_column": "team_id", "member_column": "emp_no", "member_kind": "User"},
    },
}

DISABLE = "UPDATE staff SET status = 'D' WHERE staff_id = :id"
ENABLE = "UPDATE staff SET status = 'A' WHERE staff_id = :id"
FEATURE_TABLES: dict[str, Any] = {
    "User": {
        "table": "staff",
        "key": "staff_id",
        "key_strategy": "template",
        "key_template": "S{badge}",
        "children": [
            {"field": "work_email", "table": "staff_emails", "parent_column": "staff_id", "value_column": "address",
             "where": {"kind": "work"}},
            {"field": "home_email", "table": "staff_emails", "parent_column": "staff_id", "value_column": "address",
             "where": {"kind": "home"}},
        ],
        "soft_delete": {"column": "deleted_at"},
        "statements": {"disable": DISABLE, "enable": ENABLE},
    },
    "Group": {
        "table": "crews",
        "key": "crew_id",
        "soft_delete": {"column": "is_deleted", "value": 1},
        "members": {"table": "crew_staff", "group_column": "crew_id", "member_column": "staff_id", "member_kind": "User"},
    },
}  # fmt: skip


# ---------------------------------------------------------------- a database per test, on each back end


@dataclass
class Database:
    """A fresh database holding one schema; `rows` reads it past the connector."""

    backend: str
    dsn: str

    async def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        return await read_rows(self.dsn, sql, **params)

    async def execute(self, sql: str) -> None:
        engine = create_async_engine(self.dsn, poolclass=NullPool)
        try:
            async with engine.begin() as conn:
                await conn.exec_driver_sql(sql)
        finally:
            await engine.dispose()


async def fresh_database(backend: str, tmp_path: Path, script: str) -> tuple[Database, Any]:
    """(the database, what to drop afterwards)."""
    if backend == "sqlite":
        path = tmp_path / f"db-{len(list(tmp_path.iterdir()))}.db"
        await load_schema(backend, str(path), script)
        return Database(backend, f"sqlite+aiosqlite:///{path}"), None
    if backend == "postgresql":
        name = await create_pg_database()
        await load_schema(backend, name, script)
        return Database(backend, pg_url(name, "postgresql+asyncpg")), name
    name = await create_mariadb_database()
    await load_schema(backend, name, script)
    return Database(backend, mariadb_url(name)), name


async def drop(backend: str, name: Any) -> None:
    if backend == "postgresql":
        await drop_pg_database(name)
    elif backend == "mariadb":
        await drop_mariadb_database(name)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def features_db(backend: str, tmp_path: Path) -> AsyncIterator[Database]:
    db, name = await fresh_database(backend, tmp_path, FEATURES[backend])
    yield db
    await drop(backend, name)


def make_config(dsn: str, tables: dict[str, Any], **options: Any) -> SqlConnectorConfig:
    return SqlConnectorConfig.model_validate({"type": "sql", "dsn": dsn, "tables": copy.deepcopy(tables)} | options)


async def opened(dsn: str, tables: dict[str, Any], tmp_path: Path, **options: Any) -> SqlConnector:
    connector = SqlConnector(make_config(dsn, tables, **options), AppContext(name="hr", data_dir=tmp_path))
    await connector.open()
    return connector


@pytest.fixture
async def staff(features_db: Database, tmp_path: Path) -> AsyncIterator[SqlConnector]:
    connector = await opened(features_db.dsn, FEATURE_TABLES, tmp_path)
    yield connector
    await connector.close()


def member(login: str, badge: str | None = None, **fields: Any) -> Record:
    return {"badge": badge or f"B-{login}", "login": login, "full_name": f"Full {login}"} | fields


# ---------------------------------------------------------------- the contract on every back end


class TestHrConformance(ConnectorConformance):
    """The demo HR schema on PostgreSQL and MariaDB (SQLite: test_sql_connector.py)."""

    @pytest.fixture(params=["postgresql", "mariadb"])
    async def connector(self, request: pytest.FixtureRequest, tmp_path: Path, page_size: int) -> AsyncIterator[SqlConnector]:
        db, name = await fresh_database(request.param, tmp_path, HR[request.param])
        connector = await opened(db.dsn, HR_TABLES, tmp_path)
        connector.page_size = page_size
        yield connector
        await connector.close()
        await drop(request.param, name)

    @pytest.fixture
    def text_field(self) -> str:
        return "display_nm"

    def sample_user(self, tag: str) -> Record:
        return {"login": f"user.{tag}", "first_nm": "Ada", "display_nm": f"User {tag}", "dept": "R&D", "status": "A"}

    def sample_group(self, tag: str) -> Record:
        return {"team_name": f"Team {tag}"}


class TestFeatureConformance(ConnectorConformance):
    """Template keys, child-table fields, soft delete on both kinds: the contract still holds, on each back end."""

    @pytest.fixture
    async def connector(self, staff: SqlConnector, page_size: int) -> SqlConnector:
        staff.page_size = page_size
        return staff

    @pytest.fixture
    def text_field(self) -> str:
        return "full_name"

    def sample_user(self, tag: str) -> Record:
        return member(f"user.{tag}", badge=f"B-{tag}", work_email=f"{tag}@work.example")

    def sample_group(self, tag: str) -> Record:
        return {"name": f"Crew {tag}"}


# ---------------------------------------------------------------- child tables


STAFF_EMAILS = "SELECT staff_id, kind, address FROM staff_emails ORDER BY staff_id, kind"


async def test_child_fields_are_rows_of_the_child_table(staff: SqlConnector, features_db: Database) -> None:
    native_id = await staff.create("User", member("ann", work_email="ann@work.example", home_email=None))
    assert native_id == "SB-ann"  # key_template S{badge}
    assert await features_db.rows(STAFF_EMAILS) == [("SB-ann", "work", "ann@work.example")]
    got = await staff.get("User", native_id)
    assert got is not None and (got["work_email"], got["home_email"]) == ("ann@work.example", None)

    await staff.update("User", native_id, {"home_email": "ann@home.example", "full_name": "Ann B"})
    await staff.update("User", native_id, {"work_email": "ann.b@work.example"})  # in place
    assert await features_db.rows(STAFF_EMAILS) == [
        ("SB-ann", "home", "ann@home.example"),
        ("SB-ann", "work", "ann.b@work.example"),
    ]
    await staff.update("User", native_id, {"home_email": None})
    assert await features_db.rows(STAFF_EMAILS) == [("SB-ann", "work", "ann.b@work.example")]
    listed = [(fid, rec["work_email"], rec["home_email"]) async for fid, rec in staff.list_all("User")]
    assert listed == [("SB-ann", "ann.b@work.example", None)]


async def test_find_by_a_child_field(staff: SqlConnector) -> None:
    ann = await staff.create("User", member("ann", work_email="Ann@Work.example"))
    bob = await staff.create("User", member("bob", work_email="bob@work.example", home_email="ann@home.example"))
    assert [fid for fid, _ in await staff.find("User", "work_email", "ann@work.EXAMPLE")] == [ann]
    assert [fid for fid, _ in await staff.find("User", "work_email", "ann", "sw")] == [ann]
    assert [fid for fid, _ in await staff.find("User", "home_email", "ann", "sw")] == [bob]
    assert [fid for fid, _ in await staff.find("User", "home_email", None)] == [ann]
    assert sorted(fid for fid, _ in await staff.find("User", "work_email", "@WORK.example", "ew")) == [ann, bob]


async def test_a_child_row_conflict_rolls_back_the_whole_write(staff: SqlConnector, features_db: Database) -> None:
    await staff.create("User", member("ann", work_email="taken@work.example"))
    with pytest.raises(AppConflict, match="staff_emails.address already has the value 'taken@work.example'"):
        await staff.create("User", member("bob", work_email="taken@work.example"))
    assert await features_db.rows("SELECT staff_id FROM staff") == [("SB-ann",)]  # no bob without his email

    bob = await staff.create("User", member("bob", work_email="bob@work.example"))
    with pytest.raises(AppConflict):
        await staff.update("User", bob, {"full_name": "Robert", "work_email": "taken@work.example"})
    assert await features_db.rows("SELECT full_name FROM staff WHERE staff_id = :id", id=bob) == [("Full bob",)]

    crew = await staff.create("Group", {"name": "ops"})
    with pytest.raises(AppConflict):
        await staff.write("User", bob, {"full_name": "Robert", "home_email": "taken@work.example"}, [], [])
    assert await features_db.rows("SELECT full_name FROM staff WHERE staff_id = :id", id=bob) == [("Full bob",)]
    assert await features_db.rows("SELECT count(*) FROM crew_staff WHERE crew_id = :c", c=int(crew)) == [(0,)]


async def test_a_child_field_that_shadows_a_column_is_refused(features_db: Database, tmp_path: Path) -> None:
    tables = copy.deepcopy(FEATURE_TABLES)
    tables["User"]["children"][0]["field"] = "full_name"
    with pytest.raises(SqlSetupError, match=r"tables\.User\.children\[0\]\.field: 'full_name' is also a column of 'staff'"):
        await opened(features_db.dsn, tables, tmp_path)


# ---------------------------------------------------------------- keys


async def test_template_key_needs_its_fields_and_conflicts_as_a_key(staff: SqlConnector, features_db: Database) -> None:
    with pytest.raises(AppInvalid, match=r"staff\.staff_id is built as 'S\{badge\}': it needs badge"):
        await staff.create("User", {"login": "nobadge"})
    with pytest.raises(AppInvalid, match="staff.staff_id is the key"):
        await staff.create("User", member("x") | {"staff_id": "S1"})
    await staff.create("User", member("ann", badge="7"))
    with pytest.raises(AppConflict):
        await staff.create("User", member("ann2", badge="7", work_email="a2@work.example"))
    assert await features_db.rows("SELECT staff_id, badge FROM staff") == [("S7", "7")]
    assert await features_db.rows(STAFF_EMAILS) == []


async def test_sequence_keys(features_db: Database, tmp_path: Path) -> None:
    tables = copy.deepcopy(FEATURE_TABLES)
    tables["Group"] = {"table": "crews", "key": "crew_id", "key_strategy": "sequence", "sequence": "badge_seq"}
    if features_db.backend != "postgresql":
        with pytest.raises(
            SqlSetupError, match=r"tables\.Group\.sequence: (this database \(\w+\) has no sequences|the database has no sequence)"
        ):
            await opened(features_db.dsn, tables, tmp_path)
        return
    connector = await opened(features_db.dsn, tables, tmp_path)
    try:
        assert [await connector.create("Group", {"name": f"c{i}"}) for i in range(2)] == ["1000", "1001"]
    finally:
        await connector.close()
    tables["Group"]["sequence"] = "badge_sq"
    with pytest.raises(SqlSetupError, match=r"the database has no sequence 'badge_sq' \(did you mean badge_seq\?\)"):
        await opened(features_db.dsn, tables, tmp_path)


# ---------------------------------------------------------------- soft delete


async def test_soft_delete_marks_the_row_and_reads_skip_it(staff: SqlConnector, features_db: Database) -> None:
    ann = await staff.create("User", member("ann", work_email="ann@work.example"))
    bob = await staff.create("User", member("bob"))
    crew = await staff.create_with_members("Group", {"name": "ops"}, [("User", ann), ("User", bob)])
    await staff.delete("User", ann)
    await staff.delete("User", ann)  # already gone: not an error
    rows = await features_db.rows("SELECT staff_id, deleted_at FROM staff ORDER BY staff_id")
    assert [(r[0], r[1] is not None) for r in rows] == [(ann, True), (bob, False)]
    assert await features_db.rows(STAFF_EMAILS) == [(ann, "work", "ann@work.example")]  # the app's data is kept
    assert await staff.get("User", ann) is None
    assert await staff.find("User", "login", "ann") == []
    assert await staff.find("User", "work_email", "ann", "co") == []
    assert [fid async for fid, _ in staff.list_all("User")] == [bob]
    assert await staff.list_members("Group", crew) == [("User", bob)]
    with pytest.raises(AppNotFound):
        await staff.update("User", ann, {"full_name": "x"})
    with pytest.raises(AppNotFound):
        await staff.action("User", ann, "disable")
    with pytest.raises(AppInvalid, match=f"staff has no row with staff_id '{ann}'"):
        await staff.add_members("Group", crew, [("User", ann)])

    await staff.delete("Group", crew)
    assert await features_db.rows("SELECT is_deleted FROM crews") == [(1,)]
    assert await staff.get("Group", crew) is None
    with pytest.raises(AppNotFound):
        await staff.add_members("Group", crew, [("User", bob)])


# ---------------------------------------------------------------- named statements


async def test_statements_run_as_actions(staff: SqlConnector, features_db: Database) -> None:
    assert staff.caps.actions == {"disable", "enable"}
    ann = await staff.create("User", member("ann"))
    await staff.action("User", ann, "disable")
    assert await features_db.rows("SELECT status FROM staff") == [("D",)]
    await staff.action("User", ann, "enable")
    assert await features_db.rows("SELECT status FROM staff") == [("A",)]
    with pytest.raises(AppNotFound):
        await staff.action("User", "S-nobody", "disable")
    with pytest.raises(LookupError, match=r"no statement 'lock' for kind 'User' \(valid: disable, enable\)"):
        await staff.action("User", ann, "lock")


async def test_a_statement_that_fails_is_translated_and_rolled_back(features_db: Database, tmp_path: Path) -> None:
    tables = copy.deepcopy(FEATURE_TABLES)
    tables["User"]["statements"] = {"break": "UPDATE staff SET status = 'X' WHERE staff_id = :id"}
    connector = await opened(features_db.dsn, tables, tmp_path)
    try:
        ann = await connector.create("User", member("ann"))
        with pytest.raises(AppInvalid, match="check"):
            await connector.action("User", ann, "break")
    finally:
        await connector.close()
    assert await features_db.rows("SELECT status FROM staff") == [("A",)]


# ---------------------------------------------------------------- search: pushed down, never a wildcard

LITERALS = ["a%b", "a_b", "axb", "a/b", "a\\b", "o'brien; --", 'q"x', "100%", "x_", "ABC"]


@pytest.mark.parametrize(
    ("op", "probe", "expected"),
    [
        ("co", "%", ["a%b", "100%"]),
        ("co", "_", ["a_b", "x_"]),
        ("co", "/", ["a/b"]),
        ("co", "\\", ["a\\b"]),
        ("co", "'brien; -", ["o'brien; --"]),
        ("co", '"', ['q"x']),
        ("sw", "a", ["a%b", "a_b", "axb", "a/b", "a\\b", "ABC"]),
        ("sw", "A%", ["a%b"]),
        ("ew", "%", ["100%"]),
        ("ew", "_", ["x_"]),
        ("ew", "bc", ["ABC"]),
        ("eq", "a_b", ["a_b"]),
        ("eq", "abc", ["ABC"]),
        ("co", "nothing", []),
    ],
)
async def test_find_operators_take_values_literally(staff: SqlConnector, op: str, probe: str, expected: list[str]) -> None:
    ids = {await staff.create("User", member(value, badge=f"b{i}")): value for i, value in enumerate(LITERALS)}
    found = await staff.find("User", "login", probe, op)
    assert sorted(ids[fid] for fid, _ in found) == sorted(expected)
    assert all(record["login"] == ids[fid] for fid, record in found)  # stored and read back verbatim


async def test_find_refuses_an_unknown_operator(staff: SqlConnector) -> None:
    with pytest.raises(AppInvalid, match=r"unknown operator 'gt' \(valid: co, eq, ew, sw\)"):
        await staff.find("User", "login", "x", "gt")


# ---------------------------------------------------------------- constraint violations on each back end


@pytest.fixture
async def hr(backend: str, tmp_path: Path) -> AsyncIterator[tuple[SqlConnector, Database]]:
    db, name = await fresh_database(backend, tmp_path, HR[backend])
    connector = await opened(db.dsn, HR_TABLES, tmp_path)
    yield connector, db
    await connector.close()
    await drop(backend, name)


async def test_constraint_violations_translate_the_same_everywhere(hr: tuple[SqlConnector, Database]) -> None:
    sql, db = hr
    jdoe = await sql.create("User", {"login": "jdoe"})
    with pytest.raises(AppConflict) as caught:
        await sql.create("User", {"login": "JDoe"})
    assert caught.value.detail == "employees.login already has the value 'JDoe'"
    with pytest.raises(AppInvalid, match=r"employees\.login needs a value"):
        await sql.create("User", {"first_nm": "NoLogin"})
    with pytest.raises(AppInvalid, match="employees: the values break the check"):
        await sql.create("User", {"login": "badstatus", "status": "X"})
    with pytest.raises(AppInvalid, match="employees: a value refers to a row that does not exist"):
        await sql.create("User", {"login": "nomanager", "mgr_emp_no": 4242})
    with pytest.raises(AppInvalid, match=r"employees\.mgr_emp_no: 'boss' is not an integer"):
        await sql.create("User", {"login": "typed", "mgr_emp_no": "boss"})
    if db.backend != "sqlite":  # SQLite keeps any length
        with pytest.raises(AppInvalid, match="rejected a value"):
            await sql.create("User", {"login": "long", "phone": "9" * 51})
    # A reference given as the native id string is the app's integer.
    worker = await sql.create("User", {"login": "worker", "mgr_emp_no": jdoe})
    assert await db.rows("SELECT mgr_emp_no FROM employees WHERE emp_no = :w", w=int(worker)) == [(int(jdoe),)]
    assert await db.rows("SELECT login FROM employees ORDER BY emp_no") == [("jdoe",), ("worker",)]


async def test_a_group_write_that_breaks_a_constraint_changes_no_membership(hr: tuple[SqlConnector, Database]) -> None:
    sql, db = hr
    u1, u2 = await sql.create("User", {"login": "a"}), await sql.create("User", {"login": "b"})
    await sql.create("Group", {"team_name": "dev"})
    group = await sql.create_with_members("Group", {"team_name": "ops"}, [("User", u1)])
    with pytest.raises(AppConflict, match="teams.team_name already has the value 'DEV'"):
        await sql.write("Group", group, {"team_name": "DEV"}, [("User", u2)], [("User", u1)])
    assert await db.rows("SELECT team_id, emp_no FROM team_members") == [(int(group), int(u1))]
    with pytest.raises(AppInvalid):
        await sql.create_with_members("Group", {"team_name": "qa"}, [("User", u1), ("User", "4242")])
    assert await db.rows("SELECT team_name FROM teams ORDER BY team_id") == [("dev",), ("ops",)]


async def test_concurrent_duplicate_creates_yield_one_record(hr: tuple[SqlConnector, Database]) -> None:
    sql, db = hr
    results = await asyncio.gather(*(sql.create("User", {"login": "race"}) for _ in range(5)), return_exceptions=True)
    assert sum(isinstance(r, str) for r in results) == 1, results
    assert sum(isinstance(r, AppConflict) for r in results) == 4, results
    assert await db.rows("SELECT count(*) FROM employees") == [(1,)]


# ---------------------------------------------------------------- the live schema against the config


async def test_check_schema_names_every_misfit_with_its_near_miss(features_db: Database, tmp_path: Path) -> None:
    tables = copy.deepcopy(FEATURE_TABLES)
    tables["User"]["table"] = "staf"
    tables["Group"]["members"]["member_column"] = "staffid"
    tables["Group"]["soft_delete"]["column"] = "is_deletd"
    connector = SqlConnector(make_config(features_db.dsn, tables), AppContext(name="hr", data_dir=tmp_path))
    with pytest.raises(SqlSetupError):
        await connector.open()
    problems = await connector.check_schema()
    assert problems == [
        (("tables", "User", "table"), "the database has no table 'staf' (did you mean staff?)"),
        (("tables", "Group", "soft_delete", "column"), "table 'crews' has no column 'is_deletd' (did you mean is_deleted?)"),
        (("tables", "Group", "members", "member_column"), "table 'crew_staff' has no column 'staffid' (did you mean staff_id?)"),
    ]
    assert "name" in connector.fields("Group")
    assert "nmae" not in connector.fields("Group")
    assert connector.fields("User") is None  # its table is missing: unknown

    tables = copy.deepcopy(FEATURE_TABLES)
    tables["User"]["children"][1].update(table="staff_email", value_column="adress")
    tables["User"]["children"][0].update(value_column="adress", where={"knd": "work"})
    tables["User"]["key_template"] = "S{bdge}"
    connector = SqlConnector(make_config(features_db.dsn, tables), AppContext(name="hr", data_dir=tmp_path))
    assert [(".".join(map(str, loc)), message) for loc, message in await connector.check_schema()] == [
        ("tables.User.children.0.value_column", "table 'staff_emails' has no column 'adress' (did you mean address?)"),
        ("tables.User.children.0.where.knd", "table 'staff_emails' has no column 'knd' (did you mean kind?)"),
        ("tables.User.children.1.table", "the database has no table 'staff_email' (did you mean staff_emails?)"),
        ("tables.User.key_template", "{bdge} is neither a column of 'staff' nor a child field (did you mean badge?)"),
    ]
    assert "work_email" in connector.fields("User")
    assert "wrk_email" not in connector.fields("User")


async def test_check_schema_on_a_fitting_database_is_empty(staff: SqlConnector) -> None:
    assert await staff.check_schema() == []
    assert {"home_email", "deleted_at"} <= (staff.fields("User") or set())


# ---------------------------------------------------------------- a server that is down, or comes back


@pytest.mark.parametrize("server", ["postgresql", "mariadb"])
async def test_a_closed_port_is_unavailable(server: str, tmp_path: Path) -> None:
    port = free_port()
    dsn = f"postgresql://nobody@127.0.0.1:{port}/hr" if server == "postgresql" else f"mysql://nobody@127.0.0.1:{port}/hr"
    connector = SqlConnector(make_config(dsn, HR_TABLES, timeout=2), AppContext(name="hr", data_dir=tmp_path))
    with pytest.raises(AppUnavailable) as caught:
        await connector.open()
    assert caught.value.retry_after == 5
    with pytest.raises(AppUnavailable):
        await connector.check_schema()


@pytest.mark.parametrize("server", ["postgresql", "mariadb"])
async def test_a_server_that_goes_away_is_unavailable_until_it_is_back(server: str, tmp_path: Path) -> None:
    from tests.services import MARIADB_HOST, MARIADB_PORT, PG_HOST, PG_PORT

    db, name = await fresh_database(server, tmp_path, HR[server])
    proxy = TcpProxy((PG_HOST, PG_PORT) if server == "postgresql" else (MARIADB_HOST, MARIADB_PORT))
    await proxy.start()
    via_proxy = db.dsn.replace(f":{PG_PORT if server == 'postgresql' else MARIADB_PORT}/", f":{proxy.port}/")
    connector = await opened(via_proxy, HR_TABLES, tmp_path, timeout=2)
    try:
        native_id = await connector.create("User", {"login": "before"})
        await proxy.stop()
        for attempt in (
            connector.get("User", native_id),
            connector.create("User", {"login": "during"}),
            connector.find("User", "login", "before"),
        ):
            with pytest.raises(AppUnavailable) as caught:
                await attempt
            assert caught.value.retry_after == 5
        await proxy.start()
        # The pool's dead connections are replaced: the first request after the restart succeeds.
        assert (await connector.get("User", native_id) or {}).get("login") == "before"
        await connector.create("User", {"login": "after"})
        assert await db.rows("SELECT login FROM employees ORDER BY emp_no") == [("before",), ("after",)]
    finally:
        await connector.close()
        if proxy.serving:
            await proxy.stop()
        await drop(server, name)


# ---------------------------------------------------------------- the config: validated at load


BASE = {"table": "staff", "key": "staff_id"}


@pytest.mark.parametrize(
    ("table", "loc", "message"),
    [
        (BASE | {"key_strategy": "sequence"}, ("tables", "User"), "give `sequence` exactly when key_strategy is sequence"),
        (BASE | {"sequence": "s"}, ("tables", "User"), "give `sequence` exactly when key_strategy is sequence"),
        (BASE | {"key_strategy": "template"}, ("tables", "User"), "give `key_template` exactly when"),
        (BASE | {"key_strategy": "template", "key_template": "E{}"}, ("tables", "User", "key_template"), "{}: name a record field"),
        (BASE | {"key_strategy": "template", "key_template": "E{a.__class__}"}, ("tables", "User", "key_template"), "name a record field"),
        (BASE | {"key_strategy": "template", "key_template": "E{a[0]}"}, ("tables", "User", "key_template"), "name a record field"),
        (BASE | {"key_strategy": "template", "key_template": "E{a:{b}}"}, ("tables", "User", "key_template"), "may not name another field"),
        (BASE | {"key_strategy": "template", "key_template": "EMP"}, ("tables", "User", "key_template"), "names no record field"),
        (BASE | {"key_strategy": "template", "key_template": "E{x"}, ("tables", "User", "key_template"), "not a str.format template"),
        (BASE | {"key_strategy": "template", "key_template": "{staff_id}"}, ("tables", "User"), "cannot be built from itself"),
        (BASE | {"statements": {"disable": "UPDATE staff SET status = :status WHERE staff_id = :id"}},
         ("tables", "User", "statements"), "disable: unknown parameter :status (valid: :id)"),
        (BASE | {"statements": {"dis able": "CALL x(:id)"}}, ("tables", "User", "statements"), "a statement's name is an identifier"),
        (BASE | {"statements": {"disable": "  "}}, ("tables", "User", "statements"), "disable: the statement is empty"),
        (BASE | {"soft_delete": {"column": "d", "when": 1}}, ("tables", "User", "soft_delete", "when"), "Extra inputs"),
        (BASE | {"children": [{"field": "f", "table": "t", "parent_column": "p", "value_column": "v"}] * 2},
         ("tables", "User", "children"), "field 'f' is given twice"),
        (BASE | {"children": [{"field": "f", "table": "t", "parent_column": "p"}]},
         ("tables", "User", "children", 0, "value_column"), "Field required"),
    ],
)  # fmt: skip
def test_config_errors(table: dict[str, Any], loc: tuple[Any, ...], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        make_config("sqlite:///x.db", {"User": table})
    errors = caught.value.errors()
    assert any(e["loc"] == loc and message in e["msg"] for e in errors), errors


def test_capabilities_follow_the_config() -> None:
    caps = SqlConnector.capabilities_for(make_config("sqlite:///x.db", FEATURE_TABLES))
    assert (caps.membership, caps.search, caps.list_all) == (True, True, True)
    assert caps.search_ops == {"eq", "co", "sw", "ew"} and caps.actions == {"disable", "enable"}
    bare = SqlConnector.capabilities_for(make_config("sqlite:///x.db", {"User": BASE}))
    assert (bare.membership, bare.actions) == (False, frozenset())


@pytest.mark.parametrize(
    ("dsn", "driver"),
    [
        ("postgresql://u@h/db", "postgresql+asyncpg"),
        ("mysql://u@h/db", "mysql+aiomysql"),
        ("mariadb://u@h/db", "mariadb+aiomysql"),
    ],
)
def test_a_bare_dialect_gets_its_asyncio_driver(tmp_path: Path, dsn: str, driver: str) -> None:
    connector = SqlConnector(make_config(dsn, HR_TABLES), AppContext(name="hr", data_dir=tmp_path))
    url = connector._url()
    assert url.drivername == driver
    assert url.query.get("charset") == ("utf8mb4" if "mysql" in driver or "mariadb" in driver else None)


async def test_a_sync_driver_is_refused(tmp_path: Path) -> None:
    connector = SqlConnector(make_config("postgresql+psycopg2://u@h/db", HR_TABLES), AppContext(name="hr", data_dir=tmp_path))
    with pytest.raises(SqlSetupError, match="dsn: "):
        await connector.open()
