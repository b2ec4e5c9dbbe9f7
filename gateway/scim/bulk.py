"""Bulk (RFC 7644 §3.7): operations in dependency order, bulkId references, failOnErrors.

`run_bulk` validates the BulkRequest and decides what runs when; an executor (service.py) runs each
operation against the app. Each operation's fate is also kept as a `BulkEntry`, for the audit log, in
request order: written as it starts, completed as it ends, so a request that fails as a whole midway still
says what ran.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

from ..schema import BULK_REQUEST, BULK_RESPONSE
from .errors import ScimError, invalid_path, invalid_syntax, invalid_value

_BULK_REF = re.compile(r"^bulkId:(.+)$")
_PATH_REFS = re.compile(r"bulkId:([^/]+)")
BATCH_SIZE = 1000  # creates handed to the executor at once (a whole Bulk request at the default maxOperations)


@dataclass(slots=True)
class BulkResult:
    status: int
    location: str | None = None
    version: str | None = None
    resource_id: str | None = None


@dataclass(slots=True)
class BulkEntry:
    """One operation as the audit log records it; `status` None: it started and never finished."""

    method: Any
    resource_type: str | None
    resource_id: str | None
    bulk_id: Any
    status: int | None = None
    scim_type: str | None = None


def path_segments(path: str) -> list[str]:
    """`/Users/2819c223` -> ["Users", "2819c223"]."""
    return [p for p in path.split("/") if p]


class BulkExecutor(Protocol):
    def target(self, path: str) -> tuple[str | None, str | None]:
        """The resource type (its name) and id an operation's path names, as far as it names them."""
        ...

    async def operation(self, method: str, path: str, data: Any, version: str | None) -> BulkResult:
        """Run one operation; raises ScimError as the same request alone would be answered."""
        ...

    async def create_many(self, path: str, datas: list[dict[str, Any]]) -> list[BulkResult | ScimError]:
        """POST each of `datas` to `path`, in order, as `operation` would one by one (an import, at once)."""
        ...


def _op_references(op: dict[str, Any]) -> set[str]:
    """The bulkIds an operation needs resolved first: in its data and in its path (/Users/bulkId:x)."""
    refs = _references(op.get("data"))
    path = op.get("path")
    if isinstance(path, str):
        refs |= set(_PATH_REFS.findall(path))
    return refs


def _references(value: Any) -> set[str]:
    """Every bulkId a piece of data refers to ("bulkId:x" anywhere in a string value)."""
    found: set[str] = set()
    stack = [value]
    while stack:  # one pass, no set per level: an import's 100,000 operations are each scanned
        item = stack.pop()
        if isinstance(item, str):
            if item.startswith("bulkId:") and (match := _BULK_REF.match(item)):
                found.add(match.group(1))
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _substitute(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        match = _BULK_REF.match(value)
        return ids.get(match.group(1), value) if match else value
    if isinstance(value, dict):
        return {k: _substitute(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, ids) for v in value]
    return value


def _resolved_path(path: str, ids: dict[str, str]) -> str:
    return _PATH_REFS.sub(lambda m: ids.get(m.group(1), m.group(0)), path)


def _check_request(body: Any, max_operations: int) -> tuple[list[dict[str, Any]], int | None]:
    """The operations and failOnErrors of a valid BulkRequest; the request refused as a whole otherwise."""
    if not isinstance(body, dict):
        raise invalid_syntax("a BulkRequest must be a JSON object")
    schemas = body.get("schemas")
    if not isinstance(schemas, list) or BULK_REQUEST not in schemas:
        raise invalid_syntax(f"a BulkRequest must list {BULK_REQUEST} in schemas")
    operations = body.get("Operations")
    if not isinstance(operations, list):
        raise invalid_syntax("a BulkRequest needs an Operations list")
    if len(operations) > max_operations:
        # RFC 7644 §3.7.4: 413 with a detail; it defines no scimType for it.
        raise ScimError(413, f"{len(operations)} operations exceed maxOperations {max_operations}")
    fail_on_errors = body.get("failOnErrors")
    if fail_on_errors is not None and (
        isinstance(fail_on_errors, bool) or not isinstance(fail_on_errors, int) or fail_on_errors < 1
    ):
        raise invalid_value("failOnErrors must be a positive integer")
    for i, op in enumerate(operations):
        if not isinstance(op, dict):
            raise invalid_syntax(f"Operations[{i}] must be an object")
    bulk_ids = [op.get("bulkId") for op in operations if op.get("bulkId") is not None]
    if len(bulk_ids) != len(set(map(str, bulk_ids))):
        raise invalid_value("bulkId values must be unique within a request")
    return operations, fail_on_errors


class _Run:
    """One BulkRequest being run: its results and audit entries by operation, the bulkIds created so far."""

    def __init__(self, executor: BulkExecutor, operations: list[dict[str, Any]], entries: list[BulkEntry | None]) -> None:
        self.executor = executor
        self.operations = operations
        self.results: list[dict[str, Any] | None] = [None] * len(operations)
        self.entries = entries
        entries[:] = [None] * len(operations)
        self.ids: dict[str, str] = {}
        self.failed_ids: set[str] = set()
        self.errors = 0

    def start(self, i: int) -> None:
        op = self.operations[i]
        path = op.get("path")
        rtype, rid = self.executor.target(_resolved_path(path, self.ids)) if isinstance(path, str) else (None, None)
        self.entries[i] = BulkEntry(op.get("method"), rtype, rid, op.get("bulkId"))

    def finish(self, i: int, result: BulkResult | ScimError) -> None:
        op = self.operations[i]
        if self.entries[i] is None:
            self.start(i)
        entry = self.entries[i]
        assert entry is not None
        if isinstance(result, ScimError):
            self.results[i] = _result(op, result.to_json())
            entry.status, entry.scim_type = result.status, result.scim_type
            self.errors += 1
            if op.get("bulkId") is not None:
                self.failed_ids.add(str(op["bulkId"]))
            return
        self.results[i] = _result(op, result=result)
        entry.status = result.status
        if result.resource_id is not None:
            entry.resource_id = result.resource_id
            if _is_post(op):
                self.ids[str(op["bulkId"])] = result.resource_id

    async def one(self, i: int) -> None:
        op = self.operations[i]
        method, path = op.get("method"), op.get("path")
        if not isinstance(method, str) or method.upper() not in ("POST", "PUT", "PATCH", "DELETE"):
            return self.finish(i, invalid_value(f"method must be POST, PUT, PATCH or DELETE, got {method!r}"))
        method = method.upper()
        if not isinstance(path, str) or not path.startswith("/"):
            return self.finish(i, invalid_path(f"path must be a resource path such as /Users, got {path!r}"))
        if method == "POST" and op.get("bulkId") is None:
            return self.finish(i, invalid_value("a POST operation needs a bulkId"))
        data = _substitute(op.get("data"), self.ids)
        if method != "DELETE" and data is None:
            return self.finish(i, invalid_syntax(f"a {method} operation needs data"))
        self.start(i)
        try:
            outcome: BulkResult | ScimError = await self.executor.operation(
                method, _resolved_path(path, self.ids), data, op.get("version")
            )
        except ScimError as exc:
            outcome = exc
        self.finish(i, outcome)

    async def many(self, batch: list[int]) -> None:
        for j in batch:
            self.start(j)
        first = self.operations[batch[0]]
        outcomes = await self.executor.create_many(first["path"], [self.operations[j]["data"] for j in batch])
        for j, outcome in zip(batch, outcomes, strict=True):
            self.finish(j, outcome)


async def run_bulk(executor: BulkExecutor, body: Any, *, max_operations: int, entries: list[BulkEntry | None]) -> dict[str, Any]:
    """The BulkResponse; `entries` (filled in place, by operation) say what ran, also when this raises."""
    operations, fail_on_errors = _check_request(body, max_operations)
    run = _Run(executor, operations, entries)
    needs = [_op_references(op) for op in operations]
    remaining = list(range(len(operations)))
    while remaining:
        # Request order, except that an operation waits for the bulkIds it refers to
        # (RFC 7644 §3.7: the result must be as if processed in order).
        known = set(run.ids) | run.failed_ids
        i = next((i for i in remaining if needs[i] <= known), None)
        if i is None:
            # What is left refers in a circle or to bulkIds that never appear.
            for j in remaining:
                missing = sorted(needs[j] - set(run.ids))
                run.finish(j, ScimError(409, f"unresolved bulkId reference {missing[0]!r}", "invalidValue"))
            break
        if fail_on_errors is None:
            # A run of creates that depend on nothing (an import) goes at once; with failOnErrors each must be
            # counted before the next runs, so they go one by one.
            batch = _independent_posts(operations, needs, remaining, i)
            if len(batch) > 1:
                for j in batch:
                    remaining.remove(j)
                await run.many(batch)
                continue
        remaining.remove(i)
        if needs[i] & run.failed_ids:
            bad = sorted(needs[i] & run.failed_ids)[0]
            run.finish(i, ScimError(409, f"bulkId {bad!r} failed, so this operation cannot run", "invalidValue"))
        else:
            await run.one(i)
        if fail_on_errors is not None and run.errors >= fail_on_errors:
            break
    return {"schemas": [BULK_RESPONSE], "Operations": [r for r in run.results if r is not None]}


def _independent_posts(operations: list[dict[str, Any]], needs: list[set[str]], remaining: list[int], first: int) -> list[int]:
    """`first` and the operations after it in `remaining` that POST to the same path and refer to no bulkId."""
    path = operations[first].get("path")
    batch: list[int] = []
    for j in remaining[remaining.index(first) :]:
        op = operations[j]
        if (
            needs[j]
            or not _is_post(op)
            or op.get("path") != path
            or not isinstance(path, str)
            or op.get("bulkId") is None
            or not isinstance(op.get("data"), dict)
            or len(batch) == BATCH_SIZE
        ):
            break
        batch.append(j)
    return batch


def _is_post(op: dict[str, Any]) -> bool:
    return isinstance(op.get("method"), str) and op["method"].upper() == "POST"


def _result(op: dict[str, Any], response: dict[str, Any] | None = None, result: BulkResult | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"method": op.get("method")}
    if op.get("bulkId") is not None:
        out["bulkId"] = op["bulkId"]
    if result is not None:
        if result.location:
            out["location"] = result.location
        if result.version:
            out["version"] = result.version
        out["status"] = str(result.status)
    else:
        assert response is not None
        out["status"] = response["status"]
        out["response"] = response
    return out


__all__ = ["BATCH_SIZE", "BulkEntry", "BulkExecutor", "BulkResult", "path_segments", "run_bulk"]
