"""The SQL connector against real SQLite files built from the demo HR app's schema."""

from __future__ import annotations

import asyncio
import copy
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from scim_gateway_plugins.sql import SecretRef, SqlConnector, SqlConnectorConfig, SqlSetupError
from sqlalchemy.dialects.sqlite.base import SQLiteDialect

from gateway.connectors import AppConflict, AppContext, AppInvalid, AppNotFound, AppUnavailable, Record, load_registry

from .conformance import ConnectorConformance

SCHEMA = files("gateway").joinpath("demo/schema.sql").read_text("utf-8")

CONFIG: dict[str, Any] = {
    "type": "sql",
    "dsn": "sqlite:///{data_dir}/hr.db",
    "tables": {
        "User": {"table": "employees", "key": "emp_no"},
        "Group": {
            "table": "teams",
            "key": "team_id",
            "members": {"table": "team_members", "group_column": "team_id", "member_column": "emp_no", "member_kind": "User"},
        },
    },
}


def run_script(path: Path, script: str) -> None:
    with closing(sqlite3.connect(path)) as db:
        db.executescript(script)


def config(**changes: Any) -> SqlConnectorConfig:
    return SqlConnectorConfig.model_validate(copy.deepcopy(CONFIG) | changes)


async def opened(tmp_path: Path, cfg: SqlConnectorConfig | None = None) -> SqlConnector:
    connector = SqlConnector(cfg or config(), AppContext(name="hr", data_dir=tmp_path))
    await connector.open()
    return connector


@pytest.fixture
def hr_db(tmp_path: Path) -> Path:
    path = tmp_path / "hr.db"
    run_script(path, SCHEMA)
    return path


@pytest.fixture
async def sql(tmp_path: Path, hr_db: Path) -> AsyncIterator[SqlConnector]:
    connector = await opened(tmp_path)
    yield connector
    await connector.close()


def user(login: str, **fields: Any) -> Record:
    return {"login": login, "first_nm": "Ada", "last_nm": "Lovelace", "mail": f"{login}@example.test"} | fields


class TestSqliteConformance(ConnectorConformance):
    @pytest.fixture
    async def connector(self, sql: SqlConnector, page_size: int) -> SqlConnector:
        sql.page_size = page_size
        return sql

    @pytest.fixture
    def text_field(self) -> str:
        return "display_nm"

    def sample_user(self, tag: str) -> Record:
        return user(f"user.{tag}", display_nm=f"User {tag}", dept="R&D", status="A")

    def sample_group(self, tag: str) -> Record:
        return {"team_name": f"Team {tag}"}


# ---------------------------------------------------------------- registration


def test_registered_through_the_entry_point() -> None:
    assert load_registry().get("sql") is SqlConnector
    assert SqlConnector.Config is SqlConnectorConfig


# ---------------------------------------------------------------- records as the app keeps them


async def test_native_ids_are_strings_and_records_keep_column_types(sql: SqlConnector) -> None:
    native_id = await sql.create("User", user("typed"))
    record = await sql.get("User", native_id)
    assert record is not None
    assert native_id == str(record["emp_no"]) and isinstance(record["emp_no"], int)
    assert record["created_ts"]  # a column default, filled in by the app
    assert set(record) == {
        "emp_no", "login", "first_nm", "last_nm", "display_nm", "mail", "phone", "job_title",
        "dept", "emp_code", "mgr_emp_no", "status", "created_ts",
    }  # fmt: skip


@pytest.mark.parametrize("bad_id", ["abc", "007", "1.0", " 1", "1e3", "99999999999999999999999", ""])
async def test_an_id_no_integer_key_can_have(sql: SqlConnector, bad_id: str) -> None:
    await sql.create("User", user("someone"))  # emp_no 1 exists
    assert await sql.get("User", bad_id) is None
    with pytest.raises(AppNotFound):
        await sql.update("User", bad_id, {"dept": "x"})
    await sql.delete("User", bad_id)  # nothing to delete: not an error
    assert len([item async for item in sql.list_all("User")]) == 1


async def test_update_with_no_changes_still_checks_the_row(sql: SqlConnector) -> None:
    native_id = await sql.create("User", user("nochange"))
    await sql.update("User", native_id, {})
    with pytest.raises(AppNotFound):
        await sql.update("User", "424242", {})


async def test_unique_conflict_names_the_column_and_value_not_the_sql(sql: SqlConnector) -> None:
    await sql.create("User", user("jdoe"))
    with pytest.raises(AppConflict) as caught:
        await sql.create("User", user("JDoe"))  # login is COLLATE NOCASE
    assert caught.value.detail == "employees.login already has the value 'JDoe'"
    assert "INSERT" not in str(caught.value) and "example.test" not in str(caught.value)
    assert caught.value.__cause__ is not None and "INSERT" not in str(caught.value.__cause__)


async def test_concurrent_duplicate_creates_yield_one_record(sql: SqlConnector) -> None:
    results = await asyncio.gather(*(sql.create("User", user("race")) for _ in range(5)), return_exceptions=True)
    assert sum(isinstance(r, str) for r in results) == 1
    assert sum(isinstance(r, AppConflict) for r in results) == 4


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"first_nm": "NoLogin"}, "employees.login needs a value"),
        (user("nulled") | {"login": None}, "employees.login needs a value"),
        (user("badstatus", status="X"), "employees: the values break the check"),
        (user("nomanager", mgr_emp_no=4242), "employees: a value refers to a row that does not exist"),
    ],
)
async def test_constraint_violations_are_invalid(sql: SqlConnector, record: Record, message: str) -> None:
    with pytest.raises(AppInvalid) as caught:
        await sql.create("User", record)
    assert caught.value.detail.startswith(message)


async def test_not_null_on_update_is_invalid(sql: SqlConnector) -> None:
    native_id = await sql.create("User", user("keepme"))
    with pytest.raises(AppInvalid, match=r"employees\.login needs a value"):
        await sql.update("User", native_id, {"login": None})


@pytest.mark.parametrize("operation", ["create", "update", "find"])
async def test_unknown_column_is_invalid_and_named(sql: SqlConnector, operation: str) -> None:
    native_id = await sql.create("User", user("cols"))
    with pytest.raises(AppInvalid, match=r"employees has no column 'loginname' \(did you mean login\?\)"):
        if operation == "create":
            await sql.create("User", user("cols2", loginname="x"))
        elif operation == "update":
            await sql.update("User", native_id, {"loginname": "x"})
        else:
            await sql.find("User", "loginname", "x")


@pytest.mark.parametrize("operation", ["create", "update"])
async def test_the_key_is_not_written(sql: SqlConnector, operation: str) -> None:
    native_id = await sql.create("User", user("key"))
    with pytest.raises(AppInvalid, match=r"employees\.emp_no is the key"):
        if operation == "create":
            await sql.create("User", user("key2", emp_no=77))
        else:
            await sql.update("User", native_id, {"emp_no": 77})


@pytest.mark.parametrize("value", [["a", "b"], {"a": 1}])
async def test_non_scalar_values_are_invalid(sql: SqlConnector, value: Any) -> None:
    with pytest.raises(AppInvalid, match=r"employees\.phone"):
        await sql.create("User", user("multi", phone=value))


async def test_an_integer_beyond_64_bits_is_invalid(sql: SqlConnector) -> None:
    with pytest.raises(AppInvalid, match="too large"):
        await sql.create("User", user("big", mgr_emp_no=2**70))


async def test_find_by_integer_and_null_columns(sql: SqlConnector) -> None:
    boss = await sql.create("User", user("boss"))
    worker = await sql.create("User", user("worker", mgr_emp_no=int(boss)))
    assert [fid for fid, _ in await sql.find("User", "mgr_emp_no", boss)] == [worker]
    assert [fid for fid, _ in await sql.find("User", "mgr_emp_no", int(boss))] == [worker]
    assert [fid for fid, _ in await sql.find("User", "mgr_emp_no", None)] == [boss]
    assert await sql.find("User", "mgr_emp_no", "not-a-number") == []
    assert [fid for fid, _ in await sql.find("User", "emp_no", worker)] == [worker]


async def test_deleting_a_manager_lets_the_app_null_the_reference(sql: SqlConnector) -> None:
    boss = await sql.create("User", user("boss"))
    worker = await sql.create("User", user("worker", mgr_emp_no=int(boss)))
    await sql.delete("User", boss)  # ON DELETE SET NULL: foreign keys are on
    record = await sql.get("User", worker)
    assert record is not None and record["mgr_emp_no"] is None


async def test_list_all_streams_in_pages_of_the_default_size(sql: SqlConnector) -> None:
    assert sql.page_size == 500
    for i in range(3):
        await sql.create("User", user(f"p{i}"))
    assert [fid async for fid, _ in sql.list_all("User")] == ["1", "2", "3"]


# ---------------------------------------------------------------- membership


async def test_add_members_to_a_missing_group_is_not_found(sql: SqlConnector) -> None:
    member = await sql.create("User", user("m"))
    for group in ("4242", "abc"):
        with pytest.raises(AppNotFound):
            await sql.add_members("Group", group, [("User", member)])


async def test_add_a_missing_member_is_invalid_and_adds_nothing(sql: SqlConnector) -> None:
    group = await sql.create("Group", {"team_name": "ops"})
    member = await sql.create("User", user("m"))
    for missing in ("4242", "abc"):
        with pytest.raises(AppInvalid, match=f"employees has no row with emp_no '{missing}'"):
            await sql.add_members("Group", group, [("User", member), ("User", missing)])
    assert await sql.list_members("Group", group) == []


async def test_members_of_another_kind_are_refused(sql: SqlConnector) -> None:
    group = await sql.create("Group", {"team_name": "ops"})
    other = await sql.create("Group", {"team_name": "dev"})
    with pytest.raises(AppInvalid, match="holds members of kind User, not Group"):
        await sql.add_members("Group", group, [("Group", other)])
    await sql.remove_members("Group", group, [("Group", other), ("User", "abc")])  # cannot be present: no error


async def test_membership_of_a_kind_without_members_table(sql: SqlConnector) -> None:
    with pytest.raises(LookupError, match="no members table for kind 'User'"):
        await sql.list_members("User", "1")


async def test_many_members_in_one_call(sql: SqlConnector) -> None:
    # More ids than one IN (...) list carries.
    run_script_ids = [await sql.create("User", user(f"bulk{i}")) for i in range(1203)]
    group = await sql.create("Group", {"team_name": "everyone"})
    await sql.add_members("Group", group, [("User", i) for i in run_script_ids])
    assert len(await sql.list_members("Group", group)) == 1203
    await sql.remove_members("Group", group, [("User", i) for i in run_script_ids[:1100]])
    assert await sql.list_members("Group", group) == [("User", i) for i in run_script_ids[1100:]]


# ---------------------------------------------------------------- one SCIM write, one transaction


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    """What the file holds, read past the connector."""
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql).fetchall()


TEAMS = "SELECT team_id, team_name FROM teams ORDER BY team_id"
MEMBERS = "SELECT team_id, emp_no FROM team_members ORDER BY team_id, emp_no"


async def test_create_with_members_writes_the_group_and_its_members(sql: SqlConnector, hr_db: Path) -> None:
    u1, u2 = await sql.create("User", user("a")), await sql.create("User", user("b"))
    group = await sql.create_with_members("Group", {"team_name": "ops"}, [("User", u1), ("User", u2), ("User", u1)])
    assert rows(hr_db, TEAMS) == [(int(group), "ops")]
    assert rows(hr_db, MEMBERS) == [(int(group), int(u1)), (int(group), int(u2))]


@pytest.mark.parametrize("missing", ["4242", "abc"])
async def test_create_with_a_missing_member_leaves_no_group(sql: SqlConnector, hr_db: Path, missing: str) -> None:
    member = await sql.create("User", user("m"))
    with pytest.raises(AppInvalid, match=f"employees has no row with emp_no '{missing}'"):
        await sql.create_with_members("Group", {"team_name": "ops"}, [("User", member), ("User", missing)])
    assert rows(hr_db, TEAMS) == [] and rows(hr_db, MEMBERS) == []
    # Never committed, not created and deleted again: AUTOINCREMENT did not move.
    assert rows(hr_db, "SELECT seq FROM sqlite_sequence WHERE name = 'teams'") == []
    assert await sql.create("Group", {"team_name": "ops"}) == "1"


async def test_create_with_members_of_a_taken_name_conflicts_and_adds_nothing(sql: SqlConnector, hr_db: Path) -> None:
    member = await sql.create("User", user("m"))
    taken = await sql.create("Group", {"team_name": "ops"})
    with pytest.raises(AppConflict, match="teams.team_name already has the value 'OPS'"):
        await sql.create_with_members("Group", {"team_name": "OPS"}, [("User", member)])
    assert rows(hr_db, TEAMS) == [(int(taken), "ops")] and rows(hr_db, MEMBERS) == []


async def test_write_changes_fields_and_membership_together(sql: SqlConnector, hr_db: Path) -> None:
    u1, u2, u3 = [await sql.create("User", user(f"u{i}")) for i in range(3)]
    group = await sql.create_with_members("Group", {"team_name": "ops"}, [("User", u1), ("User", u2)])
    await sql.write("Group", group, {"team_name": "platform"}, [("User", u3), ("User", u2)], [("User", u1)])
    assert rows(hr_db, TEAMS) == [(int(group), "platform")]
    assert rows(hr_db, MEMBERS) == [(int(group), int(u2)), (int(group), int(u3))]
    # No field changes: membership alone, the row checked.
    await sql.write("Group", group, {}, [("User", u1)], [("User", u3)])
    assert rows(hr_db, TEAMS) == [(int(group), "platform")]
    assert rows(hr_db, MEMBERS) == [(int(group), int(u1)), (int(group), int(u2))]


@pytest.mark.parametrize("missing", ["4242", "abc"])
async def test_write_with_a_missing_member_changes_nothing(sql: SqlConnector, hr_db: Path, missing: str) -> None:
    u1, u2 = await sql.create("User", user("a")), await sql.create("User", user("b"))
    group = await sql.create_with_members("Group", {"team_name": "ops"}, [("User", u1)])
    with pytest.raises(AppInvalid, match=f"employees has no row with emp_no '{missing}'"):
        await sql.write("Group", group, {"team_name": "renamed"}, [("User", u2), ("User", missing)], [("User", u1)])
    assert rows(hr_db, TEAMS) == [(int(group), "ops")]  # the rename rolled back
    assert rows(hr_db, MEMBERS) == [(int(group), int(u1))]  # nobody added, nobody removed


async def test_write_that_breaks_a_constraint_changes_no_membership(sql: SqlConnector, hr_db: Path) -> None:
    u1, u2 = await sql.create("User", user("a")), await sql.create("User", user("b"))
    await sql.create("Group", {"team_name": "dev"})
    group = await sql.create_with_members("Group", {"team_name": "ops"}, [("User", u1)])
    with pytest.raises(AppConflict, match="teams.team_name already has the value 'DEV'"):
        await sql.write("Group", group, {"team_name": "DEV"}, [("User", u2)], [("User", u1)])
    assert rows(hr_db, MEMBERS) == [(int(group), int(u1))]


@pytest.mark.parametrize("changes", [{}, {"team_name": "renamed"}])
async def test_write_to_a_missing_group_is_not_found_and_writes_nothing(sql: SqlConnector, hr_db: Path, changes: Record) -> None:
    member = [("User", await sql.create("User", user("m")))]
    for group in ("4242", "abc"):
        for add, remove in ((member, member), (member, []), ([], member), ([], [])):
            with pytest.raises(AppNotFound):
                await sql.write("Group", group, changes, add, remove)
    assert rows(hr_db, TEAMS) == [] and rows(hr_db, MEMBERS) == []


async def test_write_refuses_a_member_of_another_kind_before_writing(sql: SqlConnector, hr_db: Path) -> None:
    group = await sql.create("Group", {"team_name": "ops"})
    other = await sql.create("Group", {"team_name": "dev"})
    with pytest.raises(AppInvalid, match="holds members of kind User, not Group"):
        await sql.write("Group", group, {"team_name": "renamed"}, [("Group", other)], [])
    assert rows(hr_db, TEAMS) == [(int(group), "ops"), (int(other), "dev")]


async def test_a_member_added_concurrently_reruns_the_whole_write_once(
    sql: SqlConnector, hr_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import scim_gateway_plugins.sql.connector as module

    u1, u2 = await sql.create("User", user("a")), await sql.create("User", user("b"))
    group = await sql.create_with_members("Group", {"team_name": "ops"}, [("User", u1)])
    real_present = module._present
    stale = {"looks": 0, "left": 1}

    async def present(conn: Any, column: Any, keys: Any, *where: Any) -> set[Any]:
        if where:  # "which are members already?"
            stale["looks"] += 1
            if stale["left"]:
                stale["left"] -= 1
                return set()  # as if u1 were added by another writer right after this look
        return await real_present(conn, column, keys, *where)

    monkeypatch.setattr(module, "_present", present)
    await sql.write("Group", group, {"team_name": "platform"}, [("User", u1), ("User", u2)], [])
    assert stale["looks"] == 2  # the duplicate insert rolled back, the whole write ran again
    assert rows(hr_db, TEAMS) == [(int(group), "platform")]
    assert rows(hr_db, MEMBERS) == [(int(group), int(u1)), (int(group), int(u2))]

    # Losing the race twice gives up: a plain AppConflict, and the second run's rename rolled back too.
    stale.update(looks=0, left=2)
    with pytest.raises(AppConflict) as caught:
        await sql.write("Group", group, {"team_name": "infra"}, [("User", u1)], [])
    assert type(caught.value) is AppConflict and caught.value.__cause__ is not None
    assert stale["looks"] == 2
    assert rows(hr_db, TEAMS) == [(int(group), "platform")]
    assert rows(hr_db, MEMBERS) == [(int(group), int(u1)), (int(group), int(u2))]


async def test_a_conflict_on_the_record_is_not_rerun(sql: SqlConnector, monkeypatch: pytest.MonkeyPatch) -> None:
    import scim_gateway_plugins.sql.connector as module

    member = await sql.create("User", user("m"))
    await sql.create("Group", {"team_name": "dev"})
    group = await sql.create("Group", {"team_name": "ops"})
    runs = 0
    real_update_in = SqlConnector._update_in

    async def update_in(self: SqlConnector, *args: Any) -> None:
        nonlocal runs
        runs += 1
        await real_update_in(self, *args)

    monkeypatch.setattr(module.SqlConnector, "_update_in", update_in)
    with pytest.raises(AppConflict):
        await sql.write("Group", group, {"team_name": "dev"}, [("User", member)], [])
    assert runs == 1


NO_FK_SCHEMA = """
CREATE TABLE people (id INTEGER PRIMARY KEY, login TEXT NOT NULL UNIQUE);
CREATE TABLE crews (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE crew_people (crew INTEGER NOT NULL, person INTEGER NOT NULL, PRIMARY KEY (crew, person));
"""
NO_FK_TABLES = {
    "User": {"table": "people", "key": "id"},
    "Group": {
        "table": "crews",
        "key": "id",
        "members": {"table": "crew_people", "group_column": "crew", "member_column": "person", "member_kind": "User"},
    },
}


async def test_delete_removes_memberships_without_foreign_keys(tmp_path: Path) -> None:
    run_script(tmp_path / "hr.db", NO_FK_SCHEMA)
    connector = await opened(tmp_path, config(tables=NO_FK_TABLES))
    try:
        alice = await connector.create("User", {"login": "alice"})
        bob = await connector.create("User", {"login": "bob"})
        crew = await connector.create("Group", {"name": "a"})
        await connector.add_members("Group", crew, [("User", alice), ("User", bob)])
        await connector.delete("User", alice)
        assert await connector.list_members("Group", crew) == [("User", bob)]
        await connector.delete("Group", crew)
    finally:
        await connector.close()
    with closing(sqlite3.connect(tmp_path / "hr.db")) as db:
        assert db.execute("SELECT count(*) FROM crew_people").fetchone() == (0,)


async def test_uuid_keys(tmp_path: Path) -> None:
    run_script(tmp_path / "hr.db", "CREATE TABLE accounts (uid TEXT PRIMARY KEY, login TEXT NOT NULL UNIQUE);")
    cfg = config(tables={"User": {"table": "accounts", "key": "uid", "key_strategy": "uuid"}})
    connector = await opened(tmp_path, cfg)
    try:
        native_id = await connector.create("User", {"login": "u"})
        assert len(native_id) == 36 and native_id.count("-") == 4
        assert await connector.get("User", native_id) == {"uid": native_id, "login": "u"}
        assert [fid for fid, _ in await connector.find("User", "login", "U")] == [native_id]
    finally:
        await connector.close()


# ---------------------------------------------------------------- an app that is down


async def test_locked_database_is_unavailable(tmp_path: Path, hr_db: Path) -> None:
    connector = await opened(tmp_path, config(timeout=0.2))
    try:
        native_id = await connector.create("User", user("before"))
        with closing(sqlite3.connect(hr_db, isolation_level=None)) as other:
            other.execute("BEGIN EXCLUSIVE")
            for attempt in (
                connector.create("User", user("locked")),
                connector.update("User", native_id, {"dept": "x"}),
                connector.get("User", native_id),
            ):
                with pytest.raises(AppUnavailable) as caught:
                    await attempt
                assert caught.value.retry_after == 5
                assert "locked" in caught.value.detail
            other.execute("ROLLBACK")
        assert await connector.get("User", native_id) is not None  # the app is back
    finally:
        await connector.close()


async def test_a_file_that_is_not_a_database_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "hr.db").write_bytes(b"this is no database file, " * 100)
    connector = SqlConnector(config(), AppContext(name="hr", data_dir=tmp_path))
    with pytest.raises(AppUnavailable, match="not a database"):
        await connector.open()


async def test_a_database_replaced_under_an_open_connector_is_unavailable(tmp_path: Path, hr_db: Path) -> None:
    connector = await opened(tmp_path)
    try:
        hr_db.unlink()
        (tmp_path / "hr.db").mkdir()  # the path no longer opens as a file
        with pytest.raises(AppUnavailable):
            await connector.create("User", user("nowhere"))
    finally:
        await connector.close()


# ---------------------------------------------------------------- open: the config against the database


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ({"User": {"table": "employes", "key": "emp_no"}}, "tables.User.table: the database has no table 'employes'"),
        (
            {"User": {"table": "employees", "key": "empno"}},
            "tables.User.key: table 'employees' has no column 'empno' (did you mean emp_no?)",
        ),
        (
            {
                "User": {"table": "employees", "key": "emp_no"},
                "Group": {
                    "table": "teams",
                    "key": "team_id",
                    "members": {
                        "table": "team_members",
                        "group_column": "team",
                        "member_column": "emp_no",
                        "member_kind": "User",
                    },
                },
            },
            "tables.Group.members.group_column: table 'team_members' has no column 'team'",
        ),
        ({"User": {"table": "team_members", "key": "emp_no"}}, "tables.User.key: 'emp_no' must be the primary key"),
    ],
)
async def test_open_names_what_the_database_lacks(
    tmp_path: Path, hr_db: Path, monkeypatch: pytest.MonkeyPatch, tables: dict[str, Any], message: str
) -> None:
    if "primary key" in message:  # checked only where INSERT ... RETURNING is missing (MySQL)
        monkeypatch.setattr(SQLiteDialect, "insert_returning", False)
    connector = SqlConnector(config(tables=tables), AppContext(name="hr", data_dir=tmp_path))
    with pytest.raises(SqlSetupError) as caught:
        await connector.open()
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        ("sqlite:///:memory:", "in-memory SQLite"),
        ("sqlite://", "in-memory SQLite"),
        ("firebird://scott@db.example/hr", "no asyncio driver known for 'firebird'"),
        ("sqlite:///{data_dir}/missing.db", "there is no SQLite database file at .*/missing.db"),
        ("postgresql+nosuchdriver://scott@db.example/hr", "the driver 'postgresql\\+nosuchdriver' is not installed"),
        ({"env": "SCIM_GATEWAY_TEST_UNSET_DSN"}, "dsn: environment variable SCIM_GATEWAY_TEST_UNSET_DSN is not set"),
        ({"file": "/nonexistent/dsn.txt"}, "dsn: cannot read file /nonexistent/dsn.txt"),
    ],
)
async def test_open_refuses_an_unusable_dsn(tmp_path: Path, dsn: Any, message: str) -> None:
    connector = SqlConnector(config(dsn=dsn), AppContext(name="hr", data_dir=tmp_path))
    with pytest.raises(SqlSetupError, match=message):
        await connector.open()


async def test_dsn_by_reference(tmp_path: Path, hr_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HR_DSN", f"sqlite:///{hr_db}")
    (tmp_path / "dsn.txt").write_text("sqlite:///{data_dir}/hr.db\n")
    for dsn in ({"env": "HR_DSN"}, {"file": str(tmp_path / "dsn.txt")}):
        connector = await opened(tmp_path, config(dsn=dsn))
        try:
            native_id = await connector.create("User", user("byref"))
            assert await connector.get("User", native_id) is not None
            await connector.delete("User", native_id)
        finally:
            await connector.close()


async def test_not_open_and_unknown_kind(tmp_path: Path, hr_db: Path) -> None:
    connector = SqlConnector(config(), AppContext(name="hr", data_dir=tmp_path))
    with pytest.raises(RuntimeError, match="not open"):
        await connector.get("User", "1")
    await connector.open()
    try:
        with pytest.raises(RuntimeError, match="already open"):
            await connector.open()
        with pytest.raises(LookupError, match=r"no table for kind 'Device' \(valid: Group, User\)"):
            await connector.get("Device", "1")
    finally:
        await connector.close()
        await connector.close()  # closing twice is harmless


# ---------------------------------------------------------------- the config model


def test_config_json_schema_exports() -> None:
    schema = SqlConnectorConfig.model_json_schema()
    assert set(schema["properties"]) == {
        "type",
        "dsn",
        "pool_size",
        "timeout",
        "statement_timeout",
        "sqlite_synchronous",
        "tables",
    }


def test_config_is_frozen_and_defaults() -> None:
    cfg = config()
    assert (cfg.pool_size, cfg.timeout, cfg.tables["User"].key_strategy) == (5, 5.0, "autoincrement")
    with pytest.raises(ValidationError):
        cfg.pool_size = 9  # type: ignore[misc]


BAD_MEMBERS = {"table": "tm", "group_column": "g", "member_column": "m", "member_kind": "Usr"}


@pytest.mark.parametrize(
    ("change", "loc", "message"),
    [
        ({"pool": 5}, ("pool",), "Extra inputs are not permitted"),
        ({"type": "rest"}, ("type",), "Input should be 'sql'"),
        ({"tables": {}}, ("tables",), "name the table of at least one kind"),
        ({"tables": {"User": {"table": "employees", "key": "emp_no", "pk": 1}}}, ("tables", "User", "pk"), "Extra inputs"),
        (
            {"tables": {"User": {"table": "employees", "key": "emp_no", "key_strategy": "serial"}}},
            ("tables", "User", "key_strategy"),
            "'autoincrement', 'sequence', 'uuid' or 'template'",
        ),
        ({"pool_size": 0}, ("pool_size",), "greater than or equal to 1"),
        ({"dsn": {"env": "A", "file": "b"}}, ("dsn", "ref"), "give exactly one of env or file"),
        ({"dsn": {}}, ("dsn", "ref"), "give exactly one of env or file"),
        ({"dsn": {"env": "A", "value": "x"}}, ("dsn", "ref", "value"), "Extra inputs"),
        ({"dsn": "not a url"}, ("dsn",), "not a database URL"),
        (
            {"tables": {"Group": {"table": "teams", "key": "team_id", "members": BAD_MEMBERS}}},
            ("tables",),
            "Group.members.member_kind: unknown kind 'Usr' (valid: Group)",
        ),
    ],
)  # fmt: skip
def test_config_errors(change: dict[str, Any], loc: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        config(**change)
    errors = caught.value.errors()
    assert any(e["loc"] == loc and message in e["msg"] for e in errors), errors


def test_an_inline_password_is_refused_and_never_shown() -> None:
    with pytest.raises(ValidationError) as caught:
        config(dsn="postgresql+asyncpg://hr:hunter2@db.example/hr")
    assert "give the whole DSN by reference" in str(caught.value)
    # str() hides the input (hide_input_in_errors); errors() keeps it unless asked not to.
    assert "hunter2" not in str(caught.value)
    assert "hunter2" not in repr(caught.value.errors(include_input=False, include_context=False))


def test_a_secret_reference_never_shows_its_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HR_DSN", "postgresql+asyncpg://hr:hunter2@db.example/hr")
    cfg = config(dsn={"env": "HR_DSN"})
    assert isinstance(cfg.dsn, SecretRef)
    secret = cfg.dsn.resolve()
    assert secret.get_secret_value().endswith("/hr")
    for shown in (repr(cfg), str(cfg), cfg.model_dump_json(), repr(secret), str(secret)):
        assert "hunter2" not in shown
    (tmp_path / "dsn").write_text("  postgresql+asyncpg://hr:hunter2@db.example/hr\n")
    assert "hunter2" not in repr(SecretRef(file=tmp_path / "dsn").resolve())
    assert SecretRef(file=tmp_path / "dsn").resolve().get_secret_value().startswith("postgresql")


def test_validation_never_mutates_its_input() -> None:
    source = copy.deepcopy(CONFIG)
    SqlConnectorConfig.model_validate(source)
    assert source == CONFIG
