"""The jsonfile connector: every record of an app in one JSON file, as small as a connector gets.

It stands in for an app: the file is its database, a unique field its unique constraint, a list of
fields its schema. Each change rewrites the file atomically (a temporary file, then a rename), in a worker
thread so that the event loop never waits for the disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from gateway.connectors import (
    AppConflict,
    AppContext,
    AppInvalid,
    AppNotFound,
    AppUnavailable,
    Capabilities,
    Connector,
    NativeId,
    Record,
)
from gateway.connectors.errors import ConnectorSetupError

from .config import JsonFileConnectorConfig, JsonFileKindConfig

SEARCH_OPS = frozenset({"eq", "co", "sw", "ew", "pr"})
Member = tuple[str, NativeId]


class JsonFileConnector(Connector):
    """Records of each kind are objects in the app's JSON file; a group's members are a list beside them."""

    Config: ClassVar[type[JsonFileConnectorConfig]] = JsonFileConnectorConfig
    # The most any configuration can do; what one can do is capabilities_for(config).
    capabilities: ClassVar[Capabilities] = Capabilities(membership=True, search=True, search_ops=SEARCH_OPS, list_all=True)

    config: JsonFileConnectorConfig

    def __init__(self, config: JsonFileConnectorConfig, context: AppContext) -> None:
        super().__init__(config, context)
        self.path = Path(config.path.format(data_dir=context.data_dir, app=context.name))
        self.page_size = 100  # list_all hands out this many records at a time
        self._key: bytes | None = None
        self._data: dict[str, Any] | None = None
        self._lock = asyncio.Lock()  # one change at a time: each rewrites the whole file

    @classmethod
    def capabilities_for(cls, config: BaseModel) -> Capabilities:
        assert isinstance(config, JsonFileConnectorConfig)
        return Capabilities(
            membership=any(k.member_kind is not None for k in config.kinds.values()),
            search=True,
            search_ops=SEARCH_OPS,
            list_all=True,
            actions=frozenset(name for k in config.kinds.values() for name in k.actions),
        )

    # ------------------------------------------------------------ lifetime

    async def open(self) -> None:
        if self.config.signing_key is not None:
            try:
                self._key = self.config.signing_key.resolve().get_secret_value().encode()
            except ValueError as exc:  # names the reference, never the value
                raise ConnectorSetupError(f"signing_key: {exc}") from None
        self._data = await asyncio.to_thread(self._load)

    async def close(self) -> None:
        self._data = None

    def _load(self) -> dict[str, Any]:
        try:
            text = self.path.read_text("utf-8")
        except FileNotFoundError:
            return {"next_id": 1, "records": {}, "members": {}}
        except OSError as exc:
            raise AppUnavailable(f"cannot read {self.path}: {exc.strerror}") from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConnectorSetupError(f"{self.path} is not JSON: {exc}") from None
        if not isinstance(data, dict) or not {"next_id", "records", "members"} <= set(data):
            raise ConnectorSetupError(f"{self.path} is not a jsonfile store (no next_id, records, members)")
        if self._key is not None and not hmac.compare_digest(str(data.get("hmac", "")), self._sign(data)):
            raise ConnectorSetupError(f"{self.path} was changed outside the gateway: its HMAC does not match")
        return data

    def _sign(self, data: dict[str, Any]) -> str:
        assert self._key is not None
        body = json.dumps({k: data[k] for k in ("next_id", "records", "members")}, sort_keys=True).encode()
        return hmac.new(self._key, body, hashlib.sha256).hexdigest()

    def _save(self, data: dict[str, Any]) -> None:
        if self._key is not None:
            data = data | {"hmac": self._sign(data)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps(data, ensure_ascii=False, indent=1), "utf-8")
        os.replace(temporary, self.path)  # a reader sees the old file or the new one, never half of one

    @property
    def data(self) -> dict[str, Any]:
        if self._data is None:
            raise AppUnavailable(f"the jsonfile connector of app {self.context.name!r} is not open")
        return self._data

    async def _commit(self, data: dict[str, Any]) -> None:
        """Write the changed copy; only once it is on disk does it become the connector's state."""
        try:
            await asyncio.to_thread(self._save, data)
        except OSError as exc:
            raise AppUnavailable(f"cannot write {self.path}: {exc.strerror}") from None
        self._data = data

    # ------------------------------------------------------------ records

    def _kind(self, kind: str) -> JsonFileKindConfig:
        return self.config.kinds.get(kind) or JsonFileKindConfig()

    def _records(self, data: dict[str, Any], kind: str) -> dict[str, Record]:
        records: dict[str, Record] = data["records"].setdefault(kind, {})
        return records

    def _check(self, data: dict[str, Any], kind: str, record: Record, native_id: NativeId | None = None) -> None:
        rules = self._kind(kind)
        if rules.fields is not None and (unknown := sorted(set(record) - set(rules.fields))):
            raise AppInvalid(f"{kind} records have no field {unknown[0]!r}")
        value = record.get(rules.unique) if rules.unique else None
        if rules.unique and isinstance(value, str):
            for other_id, other in self._records(data, kind).items():
                taken = other.get(rules.unique)
                if other_id != native_id and isinstance(taken, str) and taken.casefold() == value.casefold():
                    raise AppConflict(f"{rules.unique} {value!r} is taken")

    def _copy(self) -> dict[str, Any]:
        copied: dict[str, Any] = json.loads(json.dumps(self.data))
        return copied

    async def create(self, kind: str, record: Record) -> NativeId:
        async with self._lock:
            data = self._copy()
            self._check(data, kind, record)
            native_id = str(data["next_id"])
            data["next_id"] += 1
            self._records(data, kind)[native_id] = dict(record)
            await self._commit(data)
            return native_id

    async def get(self, kind: str, native_id: NativeId) -> Record | None:
        record = self.data["records"].get(kind, {}).get(native_id)
        return None if record is None else dict(record)

    async def update(self, kind: str, native_id: NativeId, changes: Record) -> None:
        async with self._lock:
            data = self._copy()
            records = self._records(data, kind)
            if native_id not in records:
                raise AppNotFound(f"no {kind} {native_id}")
            updated = records[native_id] | changes
            self._check(data, kind, updated, native_id)
            records[native_id] = updated
            await self._commit(data)

    async def delete(self, kind: str, native_id: NativeId) -> None:
        async with self._lock:
            if native_id not in self.data["records"].get(kind, {}):
                return  # already gone: not an error
            data = self._copy()
            del data["records"][kind][native_id]
            data["members"].pop(native_id, None)
            for group, members in data["members"].items():
                data["members"][group] = [m for m in members if m != [kind, native_id]]
            await self._commit(data)

    async def action(self, kind: str, native_id: NativeId, name: str) -> None:
        await self.update(kind, native_id, self._kind(kind).actions[name])

    # ------------------------------------------------------------ search

    async def find(self, kind: str, field: str, value: Any, op: str = "eq") -> list[tuple[NativeId, Record]]:
        wanted = str(value).casefold()

        def matches(stored: Any) -> bool:
            if op == "pr":
                return stored not in (None, "", [])
            if stored is None:
                return False
            have = str(stored).casefold()
            return {
                "eq": have == wanted,
                "co": wanted in have,
                "sw": have.startswith(wanted),
                "ew": have.endswith(wanted),
            }[op]

        records = self.data["records"].get(kind, {})
        return [(native_id, dict(r)) for native_id, r in sorted(records.items(), key=_by_id) if matches(r.get(field))]

    async def list_all(self, kind: str) -> AsyncIterator[tuple[NativeId, Record]]:
        # In pages, as an app's API answers: records created while listing may or may not be seen, none twice.
        after = 0
        while True:
            records = self.data["records"].get(kind, {})
            page = sorted((item for item in records.items() if int(item[0]) > after), key=_by_id)[: self.page_size]
            for native_id, record in page:
                yield native_id, dict(record)
            if len(page) < self.page_size:
                return
            after = int(page[-1][0])

    # ------------------------------------------------------------ membership

    def _group(self, data: dict[str, Any], kind: str, group_id: NativeId) -> list[list[str]]:
        if self._kind(kind).member_kind is None:
            raise AppInvalid(f"{kind} records have no members")
        if group_id not in data["records"].get(kind, {}):
            raise AppNotFound(f"no {kind} {group_id}")
        members: list[list[str]] = data["members"].setdefault(group_id, [])
        return members

    async def add_members(self, kind: str, group_id: NativeId, members: list[Member]) -> None:
        async with self._lock:
            data = self._copy()
            present = self._group(data, kind, group_id)
            for member_kind, member_id in members:
                if member_id not in data["records"].get(member_kind, {}):
                    raise AppInvalid(f"no {member_kind} {member_id} to add")
                if [member_kind, member_id] not in present:
                    present.append([member_kind, member_id])
            await self._commit(data)

    async def remove_members(self, kind: str, group_id: NativeId, members: list[Member]) -> None:
        async with self._lock:
            data = self._copy()
            present = self._group(data, kind, group_id)
            gone = set(members)
            present[:] = [m for m in present if (m[0], m[1]) not in gone]
            await self._commit(data)

    async def list_members(self, kind: str, group_id: NativeId) -> list[Member]:
        return [(m[0], m[1]) for m in self._group(self.data, kind, group_id)]

    # ------------------------------------------------------------ `scim-gateway check --connect` and `translate`

    async def check_schema(self) -> list[tuple[tuple[str | int, ...], str]]:
        """What keeps this app from working: the file's folder cannot be written (called after open, even a failed one)."""
        folder = self.path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent  # _save creates the missing folders below the first that exists
        if not os.access(folder, os.W_OK):
            return [(("path",), f"cannot write {self.path}: {folder} is not writable")]
        return []

    def fields(self, kind: str) -> set[str] | None:
        declared = self._kind(kind).fields
        return None if declared is None else set(declared)

    def plan(
        self,
        op: str,
        kind: str,
        native_id: NativeId | None = None,
        record: Record | None = None,
        members: list[Member] | None = None,
    ) -> list[dict[str, Any]]:
        call: dict[str, Any] = {"file": str(self.path), "operation": op, "kind": kind}
        if op in self._kind(kind).actions:
            call |= {"operation": "update", "action": op, "record": self._kind(kind).actions[op]}
        if native_id is not None:
            call["id"] = native_id
        if record is not None:
            call["record"] = record
        if members is not None:
            call["members"] = [list(m) for m in members]
        if self.config.signing_key is not None:
            call["signed_with"] = "***"  # the key is never shown, only that the write is signed
        return [call]


def _by_id(item: tuple[str, Any]) -> int:
    return int(item[0])
