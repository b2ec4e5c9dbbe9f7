"""The tests every connector must pass, built-in or third-party (docs/connectors/writing.md).

Test code only: this is the one gateway module that imports pytest, and nothing in the gateway imports it.
In a plugin's own tests, subclass `ConnectorConformance` in a `test_*.py` module as `Test...` and provide:

- fixture `connector`: an opened connector against an app holding no records,
  closed after the test; it must list in pages of the `page_size` fixture
  (default 3, so that a handful of records spans several pages);
- fixtures `user_kind` and `group_kind`: the kinds as the connector knows them
  (default User and Group);
- fixtures `unique_field` (a field the app keeps unique and compares
  case-insensitively; default `login`) and `text_field` (a free-text field);
- methods `sample_user(tag)` and `sample_group(tag)`: a fresh, valid record,
  distinct for each tag (the unique field carries the tag).

Tests that need a capability the connector does not declare are skipped.
"""

from __future__ import annotations

from typing import Any

import pytest

from .base import Connector, Record
from .errors import AppConflict, AppNotFound

# Values that break naive quoting, LIKE patterns or encodings: each must come back verbatim.
AWKWARD_VALUES = [
    "O'Brien",
    'say "hi"',
    "x'; DROP TABLE users; --",
    "100% sure",
    "under_score",
    "back\\slash",
    "Zoë Ñandú 日本語 🙂",
    "  padded  ",
]


class ConnectorConformance:
    """The connector contract, as tests. See the module docstring for what a subclass provides."""

    # Whether list_all yields in native-id order (SQL: key order); a connector that cannot promise it sets False.
    list_all_ordered = True

    @pytest.fixture
    def page_size(self) -> int:
        return 3

    # The usual names; a subclass overrides the ones its app names otherwise.
    @pytest.fixture
    def user_kind(self) -> str:
        return "User"

    @pytest.fixture
    def group_kind(self) -> str:
        return "Group"

    @pytest.fixture
    def unique_field(self) -> str:
        return "login"

    def sample_user(self, tag: str) -> Record:
        raise NotImplementedError("the subclass gives a fresh user record")

    def sample_group(self, tag: str) -> Record:
        raise NotImplementedError("the subclass gives a fresh group record")

    def id_order(self, native_id: str) -> Any:
        """How list_all orders native ids: numerically when they are numbers."""
        return (0, int(native_id), "") if native_id.lstrip("-").isdigit() else (1, 0, native_id)

    # ------------------------------------------------------------ records

    async def test_create_get_round_trip(self, connector: Connector, user_kind: str) -> None:
        record = self.sample_user("round")
        native_id = await connector.create(user_kind, record)
        assert isinstance(native_id, str) and native_id
        got = await connector.get(user_kind, native_id)
        assert got is not None
        assert {field: got.get(field) for field in record} == record

    async def test_create_gives_distinct_ids(self, connector: Connector, user_kind: str) -> None:
        ids = [await connector.create(user_kind, self.sample_user(f"distinct{i}")) for i in range(3)]
        assert len(set(ids)) == 3

    async def test_create_many_answers_each_record_in_order(
        self, connector: Connector, user_kind: str, unique_field: str
    ) -> None:
        records = [self.sample_user(f"many{i}") for i in range(4)]
        taken = await connector.create(user_kind, self.sample_user("manytaken"))
        clash = self.sample_user("manyclash") | {unique_field: self.sample_user("manytaken")[unique_field]}
        answers = await connector.create_many(user_kind, [records[0], records[1], clash, records[2], records[3]])
        assert isinstance(answers[2], AppConflict)  # refused alone: the others are created all the same
        others = [a for i, a in enumerate(answers) if i != 2]
        created = [a for a in others if isinstance(a, str)]
        assert created == others and len(set(created)) == 4 and taken not in created
        found = await connector.get_many(user_kind, [*created, "999999999"])
        assert set(found) == set(created)  # the unknown id is simply absent
        for native_id, record in zip(created, records, strict=True):
            assert {field: found[native_id].get(field) for field in record} == record

    @pytest.mark.parametrize("unknown", ["999999999", "no-such-id"])
    async def test_get_unknown_is_none(self, connector: Connector, user_kind: str, unknown: str) -> None:
        assert await connector.get(user_kind, unknown) is None

    async def test_update_round_trip(self, connector: Connector, user_kind: str, text_field: str) -> None:
        record = self.sample_user("upd")
        native_id = await connector.create(user_kind, record)
        await connector.update(user_kind, native_id, {text_field: "changed"})
        got = await connector.get(user_kind, native_id)
        assert got is not None
        assert got[text_field] == "changed"
        assert {f: got.get(f) for f in record if f != text_field} == {f: v for f, v in record.items() if f != text_field}

    async def test_update_to_none_clears(self, connector: Connector, user_kind: str, text_field: str) -> None:
        native_id = await connector.create(user_kind, self.sample_user("clear") | {text_field: "set"})
        await connector.update(user_kind, native_id, {text_field: None})
        got = await connector.get(user_kind, native_id)
        assert got is not None and got.get(text_field) in (None, "")

    @pytest.mark.parametrize("unknown", ["999999999", "no-such-id"])
    async def test_update_unknown_is_not_found(self, connector: Connector, user_kind: str, text_field: str, unknown: str) -> None:
        with pytest.raises(AppNotFound):
            await connector.update(user_kind, unknown, {text_field: "x"})

    async def test_delete_then_gone_and_again_no_error(self, connector: Connector, user_kind: str) -> None:
        native_id = await connector.create(user_kind, self.sample_user("del"))
        await connector.delete(user_kind, native_id)
        assert await connector.get(user_kind, native_id) is None
        await connector.delete(user_kind, native_id)  # already gone: not an error

    async def test_update_after_delete_is_not_found(self, connector: Connector, user_kind: str, text_field: str) -> None:
        native_id = await connector.create(user_kind, self.sample_user("gone"))
        await connector.delete(user_kind, native_id)
        with pytest.raises(AppNotFound):
            await connector.update(user_kind, native_id, {text_field: "x"})

    async def test_duplicate_unique_conflicts(self, connector: Connector, user_kind: str, unique_field: str) -> None:
        first = self.sample_user("dup")
        await connector.create(user_kind, first)
        second = self.sample_user("other") | {unique_field: first[unique_field]}
        with pytest.raises(AppConflict):
            await connector.create(user_kind, second)

    async def test_update_into_duplicate_conflicts(self, connector: Connector, user_kind: str, unique_field: str) -> None:
        taken = self.sample_user("taken")
        await connector.create(user_kind, taken)
        native_id = await connector.create(user_kind, self.sample_user("mover"))
        with pytest.raises(AppConflict):
            await connector.update(user_kind, native_id, {unique_field: taken[unique_field]})

    @pytest.mark.parametrize("value", AWKWARD_VALUES)
    async def test_values_stored_verbatim(self, connector: Connector, user_kind: str, text_field: str, value: str) -> None:
        native_id = await connector.create(user_kind, self.sample_user("verbatim") | {text_field: value})
        got = await connector.get(user_kind, native_id)
        assert got is not None and got[text_field] == value
        await connector.update(user_kind, native_id, {text_field: value + value})
        got = await connector.get(user_kind, native_id)
        assert got is not None and got[text_field] == value + value

    # ------------------------------------------------------------ search

    def _needs(self, connector: Connector, capability: str) -> None:
        if not getattr(connector.caps, capability):
            pytest.skip(f"the connector does not declare {capability}")

    async def test_find_is_case_insensitive(self, connector: Connector, user_kind: str, unique_field: str) -> None:
        self._needs(connector, "search")
        record = self.sample_user("Find.Me")
        native_id = await connector.create(user_kind, record)
        await connector.create(user_kind, self.sample_user("someone-else"))
        value = record[unique_field]
        for probe in (value, value.lower(), value.upper(), value.swapcase()):
            found = await connector.find(user_kind, unique_field, probe)
            assert [fid for fid, _ in found] == [native_id], probe
            assert found[0][1][unique_field] == value
        assert await connector.find(user_kind, unique_field, value + "x") == []

    @pytest.mark.parametrize("pattern", ["a%c", "a_c"])
    async def test_find_takes_no_wildcards(self, connector: Connector, user_kind: str, unique_field: str, pattern: str) -> None:
        self._needs(connector, "search")
        literal = self.sample_user("wild1") | {unique_field: f"wild-{pattern}"}
        native_id = await connector.create(user_kind, literal)
        await connector.create(user_kind, self.sample_user("wild2") | {unique_field: "wild-abc"})
        found = await connector.find(user_kind, unique_field, f"wild-{pattern}")
        assert [fid for fid, _ in found] == [native_id]

    @pytest.mark.parametrize("value", AWKWARD_VALUES)
    async def test_find_awkward_values(self, connector: Connector, user_kind: str, unique_field: str, value: str) -> None:
        self._needs(connector, "search")
        record = self.sample_user("awk") | {unique_field: f"awk {value}"}
        native_id = await connector.create(user_kind, record)
        found = await connector.find(user_kind, unique_field, f"awk {value}")
        assert [(fid, rec[unique_field]) for fid, rec in found] == [(native_id, f"awk {value}")]

    # ------------------------------------------------------------ list all

    async def test_list_all_spans_pages_completely(self, connector: Connector, user_kind: str, page_size: int) -> None:
        self._needs(connector, "list_all")
        created = {}
        for i in range(2 * page_size + 1):
            record = self.sample_user(f"list{i}")
            created[await connector.create(user_kind, record)] = record
        listed = [(native_id, record) async for native_id, record in connector.list_all(user_kind)]
        ids = [native_id for native_id, _ in listed]
        assert len(ids) == len(set(ids)), "a record was listed twice"
        assert set(ids) == set(created)
        if self.list_all_ordered:
            assert ids == sorted(ids, key=self.id_order)
        for native_id, record in listed:
            assert {f: record.get(f) for f in created[native_id]} == created[native_id]

    async def test_list_all_of_exact_pages(self, connector: Connector, user_kind: str, page_size: int) -> None:
        self._needs(connector, "list_all")
        ids = {await connector.create(user_kind, self.sample_user(f"exact{i}")) for i in range(2 * page_size)}
        assert {native_id async for native_id, _ in connector.list_all(user_kind)} == ids

    async def test_list_all_empty(self, connector: Connector, group_kind: str) -> None:
        self._needs(connector, "list_all")
        assert [item async for item in connector.list_all(group_kind)] == []

    # ------------------------------------------------------------ membership

    async def _group_and_users(self, connector: Connector, user_kind: str, group_kind: str, n: int) -> tuple[str, list[str]]:
        self._needs(connector, "membership")
        group = await connector.create(group_kind, self.sample_group("team"))
        users = [await connector.create(user_kind, self.sample_user(f"member{i}")) for i in range(n)]
        return group, users

    async def test_membership_add_list_remove(self, connector: Connector, user_kind: str, group_kind: str) -> None:
        group, (u1, u2, u3) = await self._group_and_users(connector, user_kind, group_kind, 3)
        assert await connector.list_members(group_kind, group) == []
        await connector.add_members(group_kind, group, [(user_kind, u1), (user_kind, u2)])
        assert sorted(await connector.list_members(group_kind, group)) == sorted([(user_kind, u1), (user_kind, u2)])
        await connector.remove_members(group_kind, group, [(user_kind, u1)])
        assert await connector.list_members(group_kind, group) == [(user_kind, u2)]
        await connector.add_members(group_kind, group, [(user_kind, u3)])
        assert sorted(await connector.list_members(group_kind, group)) == sorted([(user_kind, u2), (user_kind, u3)])

    async def test_membership_is_idempotent(self, connector: Connector, user_kind: str, group_kind: str) -> None:
        group, (u1, u2) = await self._group_and_users(connector, user_kind, group_kind, 2)
        await connector.add_members(group_kind, group, [(user_kind, u1)])
        await connector.add_members(group_kind, group, [(user_kind, u1), (user_kind, u2), (user_kind, u2)])
        assert sorted(await connector.list_members(group_kind, group)) == sorted([(user_kind, u1), (user_kind, u2)])
        await connector.remove_members(group_kind, group, [(user_kind, u1)])
        await connector.remove_members(group_kind, group, [(user_kind, u1)])  # absent: not an error
        await connector.remove_members(group_kind, group, [])
        await connector.add_members(group_kind, group, [])
        assert await connector.list_members(group_kind, group) == [(user_kind, u2)]

    async def test_deleting_a_user_leaves_no_membership(self, connector: Connector, user_kind: str, group_kind: str) -> None:
        group, (u1, u2) = await self._group_and_users(connector, user_kind, group_kind, 2)
        await connector.add_members(group_kind, group, [(user_kind, u1), (user_kind, u2)])
        await connector.delete(user_kind, u1)
        assert await connector.list_members(group_kind, group) == [(user_kind, u2)]

    async def test_deleting_a_group_keeps_its_members(self, connector: Connector, user_kind: str, group_kind: str) -> None:
        group, (u1,) = await self._group_and_users(connector, user_kind, group_kind, 1)
        await connector.add_members(group_kind, group, [(user_kind, u1)])
        await connector.delete(group_kind, group)
        assert await connector.get(group_kind, group) is None
        assert await connector.get(user_kind, u1) is not None

    # ------------------------------------------------------------ one SCIM write: record and membership together

    async def test_create_with_members(self, connector: Connector, user_kind: str, group_kind: str) -> None:
        self._needs(connector, "membership")
        u1, u2 = [await connector.create(user_kind, self.sample_user(f"cwm{i}")) for i in range(2)]
        record = self.sample_group("cwm")
        group = await connector.create_with_members(group_kind, record, [(user_kind, u1), (user_kind, u2)])
        got = await connector.get(group_kind, group)
        assert got is not None and {f: got.get(f) for f in record} == record
        assert sorted(await connector.list_members(group_kind, group)) == sorted([(user_kind, u1), (user_kind, u2)])
        bare = await connector.create_with_members(group_kind, self.sample_group("bare"), [])
        assert await connector.get(group_kind, bare) is not None
        assert await connector.list_members(group_kind, bare) == []

    async def test_write_changes_fields_and_membership(self, connector: Connector, user_kind: str, group_kind: str) -> None:
        group, (u1, u2, u3) = await self._group_and_users(connector, user_kind, group_kind, 3)
        await connector.add_members(group_kind, group, [(user_kind, u1), (user_kind, u2)])
        renamed = self.sample_group("renamed")
        await connector.write(group_kind, group, renamed, [(user_kind, u3)], [(user_kind, u1)])
        got = await connector.get(group_kind, group)
        assert got is not None and {f: got.get(f) for f in renamed} == renamed
        assert sorted(await connector.list_members(group_kind, group)) == sorted([(user_kind, u2), (user_kind, u3)])

    async def test_write_of_a_record_alone(self, connector: Connector, user_kind: str, text_field: str) -> None:
        native_id = await connector.create(user_kind, self.sample_user("writeonly"))
        await connector.write(user_kind, native_id, {text_field: "written"}, [], [])
        got = await connector.get(user_kind, native_id)
        assert got is not None and got[text_field] == "written"
        await connector.delete(user_kind, native_id)
        with pytest.raises(AppNotFound):
            await connector.write(user_kind, native_id, {text_field: "again"}, [], [])
