"""`scim-gateway check --connect`: the shipped legacy examples against their real databases, and what a typo looks like."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from gateway.cli import main
from tests.integration.test_sql_legacy import ROOT, load_ddl
from tests.services import mariadb_database, mariadb_url, pg_database, pg_url

__all__ = ["mariadb_database", "pg_database"]  # fixtures


async def check(*args: str) -> int:
    """`scim-gateway check ARGS` from an async test: the command runs its own event loop, so in a thread."""
    return await asyncio.to_thread(main, ["check", *args])


def line_of(path: Path, text: str) -> int:
    """The 1-based line of the first line of `path` containing `text`."""
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


async def test_the_pg_example_fits_its_database(
    pg_database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    await load_ddl("legacy_pg", pg_database)
    monkeypatch.setenv("LEGACY_PG_DSN", pg_url(pg_database, "postgresql+asyncpg"))
    assert await check("--connect", str(ROOT / "mappings" / "legacy_pg.yaml")) == 0
    assert "ok (app legacy_pg: User, Group; the live app fits)" in capsys.readouterr().out


async def test_misspelt_names_are_reported_at_their_lines(
    pg_database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    await load_ddl("legacy_pg", pg_database)
    monkeypatch.setenv("LEGACY_PG_DSN", pg_url(pg_database, "postgresql+asyncpg"))
    text = (ROOT / "mappings" / "legacy_pg.yaml").read_text()
    for right, wrong in [
        ("table: hr_org_unit", "table: hr_org_units"),
        ("member_column: person_id", "member_column: persn_id"),
        ("where: {email_type: HOME}", "where: {email_typ: HOME}"),
        ("sequence: hr_person_seq", "sequence: hr_persons_seq"),
        ("field: surname", "field: surnam"),
        ("column: deleted_at", "column: deleted_on"),
    ]:
        assert right in text
        text = text.replace(right, wrong, 1)
    bad = tmp_path / "typos.yaml"
    bad.write_text(text)
    assert await check("--connect", str(bad)) == 1
    out = capsys.readouterr().out.strip().splitlines()
    expected = [
        (line_of(bad, "sequence: hr_persons_seq"), "connector.tables.User.sequence: "
         "the database has no sequence 'hr_persons_seq' (did you mean hr_person_seq?)"),
        (line_of(bad, "email_typ: HOME"), "connector.tables.User.children[1].where.email_typ: "
         "table 'hr_person_email' has no column 'email_typ' (did you mean email_type?)"),
        (line_of(bad, "column: deleted_on"), "connector.tables.User.soft_delete.column: "
         "table 'hr_person' has no column 'deleted_on' (did you mean deleted_at?)"),
        (line_of(bad, "table: hr_org_units"), "connector.tables.Group.table: "
         "the database has no table 'hr_org_units' (did you mean hr_org_unit?)"),
        (line_of(bad, "member_column: persn_id"), "connector.tables.Group.members.member_column: "
         "table 'hr_unit_member' has no column 'persn_id' (did you mean person_id?)"),
        (line_of(bad, "field: surnam"), "resources.User.attributes[2].field: the app's User records have no field 'surnam' (did you mean surname?)"),
    ]  # fmt: skip
    assert len(out) == len(expected), out
    for line, (number, message) in zip(out, expected, strict=True):
        match = re.match(rf"^{re.escape(str(bad))}:(\d+):(\d+): (.*)$", line)
        assert match, line
        assert (int(match.group(1)), match.group(3)) == (number, message)


async def test_the_mariadb_example_and_a_missing_field(
    mariadb_database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    await load_ddl("legacy_mariadb", mariadb_database)
    monkeypatch.setenv("LEGACY_MARIADB_DSN", mariadb_url(mariadb_database))
    good = ROOT / "mappings" / "legacy_mariadb.yaml"
    bad = tmp_path / "typo.yaml"
    bad.write_text(good.read_text().replace("field: usr_phone", "field: usr_phon"))
    assert await check("--connect", str(good), str(bad)) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [
        f"{good}: ok (app legacy_mariadb: User, Group; the live app fits)",
        f"{bad}:{line_of(bad, 'usr_phon')}:16: resources.User.attributes[5].field: the app's User records have no field 'usr_phon' (did you mean usr_phone?)",
    ]


def test_an_unreachable_database_is_one_problem(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import free_port

    monkeypatch.setenv("LEGACY_MARIADB_DSN", f"mysql://nobody@127.0.0.1:{free_port()}/intranet")
    path = ROOT / "mappings" / "legacy_mariadb.yaml"
    assert main(["check", "--connect", str(path)]) == 1
    (line,) = capsys.readouterr().out.strip().splitlines()
    # The mark of the `connector:` block is its first key, on the next line.
    assert line.startswith(f"{path}:{line_of(path, 'connector:') + 1}:3: connector: cannot connect: the database failed")


def test_without_connect_nothing_is_opened(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("LEGACY_PG_DSN", raising=False)
    assert main(["check", str(ROOT / "mappings" / "legacy_pg.yaml")]) == 0
    assert capsys.readouterr().out.strip().endswith("ok (app legacy_pg: User, Group)")


# ---------------------------------------------------------------- a REST app with records: the mapping's paths against them

HR_MISFITS = [
    # (what the integrator wrote instead, the text on the line it is on, the message)
    (("      id: id\n", "      id: uid\n", 1), "id: uid",
     "connector.resources.User.id: the app's User records have no id at 'uid' (did you mean id?) (their keys: "),
    (("field: first_name", "field: frist_name", 1), "frist_name",
     "resources.User.attributes[1].field: the app's User records have no field 'frist_name' (did you mean first_name?)"),
    (("      get: {method: GET, path: \"/users/{id}\"}\n", "      get: {method: GET, path: \"/users/{id}\"}\n      record: user\n", 1),
     "record: user", "connector.resources.User.record: GET /users/{id} answers no record at 'user' (their keys: "),
    (("member_id: user_id", "member_id: userid", 1), "member_id: userid",
     "connector.resources.Group.members.list.member_id: the app's member list items have no id at 'userid' (did you mean user_id?)"),
    (("member_id: user_id", "member_id: null", 1), "member_id: null",
     "connector.resources.Group.members.list.member_id: the app's member list holds objects (keys: login, user_id): name the id's path"),
]  # fmt: skip


@pytest.mark.parametrize(("edit", "marker", "message"), HR_MISFITS, ids=["id", "field", "record", "member_id", "bare-ids"])
async def test_rest_misfits_are_found_against_live_records(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    edit: tuple[str, str, int],
    marker: str,
    message: str,
) -> None:
    import aiohttp

    from tests.fakes.hr_app import create_hr_app, serve

    async with serve(create_hr_app(api_key="k-check")) as url:
        async with aiohttp.ClientSession(headers={"X-API-Key": "k-check"}) as http:
            async with http.post(f"{url}/users", json={"login": "ann", "first_name": "Ann"}) as resp:
                user = await resp.json()
            async with http.post(f"{url}/groups", json={"name": "staff"}) as resp:
                group = await resp.json()
            async with http.post(f"{url}/groups/{group['id']}/members", json={"user_id": user["id"]}) as resp:
                assert resp.status < 300
        monkeypatch.setenv("HR_API_URL", url)
        monkeypatch.setenv("HR_API_KEY", "k-check")
        monkeypatch.setenv("HR_SCIM_TOKEN", "t-check-0123456789")
        good = ROOT / "mappings" / "hr_rest.yaml"
        assert await check("--connect", str(good)) == 0, capsys.readouterr().out
        capsys.readouterr()
        old, new, count = edit
        text = good.read_text()
        assert old in text, old
        bad = tmp_path / "hr.yaml"
        bad.write_text(text.replace(old, new, count))
        assert await check("--connect", str(bad)) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith(f"{bad}:{line_of(bad, marker)}:") and message in line for line in out), out
