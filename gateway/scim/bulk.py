"""Bulk (RFC 7644 §3.7): operations in dependency order, bulkId references, failOnErrors."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import ScimError, invalid_syntax, invalid_value
from .schema import BULK_REQUEST, BULK_RESPONSE

_BULK_REF = re.compile(r"^bulkId:(.+)$")


@dataclass(slots=True)
class BulkResult:
    status: int
    location: str | None = None
    version: str | None = None
    resource_id: str | None = None


class BulkExecutor(Protocol):
    async def bulk_operation(self, method: str, path: str, data: Any, if_match: str | None) -> BulkResult: ...

    async def bulk_create_many(self, path: str, datas: list[dict[str, Any]]) -> list[BulkResult | ScimError]:
        """POST each of `datas` to `path`, in order, as bulk_operation would one by one (an import, at once)."""
        ...


BATCH_SIZE = 1000  # creates handed to the executor at once (a whole Bulk request at the default maxOperations)


def _op_references(op: dict[str, Any]) -> set[str]:
    """The bulkIds an operation needs resolved first: in its data and in its path (/Users/bulkId:x)."""
    refs = _references(op.get("data"))
    path = op.get("path")
    if isinstance(path, str):
        refs |= set(re.findall(r"bulkId:([^/]+)", path))
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


def _error(status: int, detail: str, scim_type: str | None = None) -> dict[str, Any]:
    return ScimError(status, detail, scim_type).to_json()


async def run_bulk(executor: BulkExecutor, body: Any, *, max_operations: int) -> dict[str, Any]:
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
    if fail_on_errors is not None and (isinstance(fail_on_errors, bool) or not isinstance(fail_on_errors, int) or fail_on_errors < 1):
        raise invalid_value("failOnErrors must be a positive integer")
    for i, op in enumerate(operations):
        if not isinstance(op, dict):
            raise invalid_syntax(f"Operations[{i}] must be an object")
    bulk_ids = [op.get("bulkId") for op in operations if op.get("bulkId") is not None]
    if len(bulk_ids) != len(set(map(str, bulk_ids))):
        raise invalid_value("bulkId values must be unique within a request")

    results: list[dict[str, Any] | None] = [None] * len(operations)
    ids: dict[str, str] = {}
    failed_ids: set[str] = set()
    errors = 0
    needs = [_op_references(op) for op in operations]
    remaining = list(range(len(operations)))
    while remaining:
        # Request order, except that an operation waits for the bulkIds it refers to
        # (RFC 7644 §3.7: the result must be as if processed in order).
        known = set(ids) | failed_ids
        i = next((i for i in remaining if needs[i] <= known), None)
        if i is None:
            # What is left refers in a circle or to bulkIds that never appear.
            for j in remaining:
                missing = sorted(needs[j] - set(ids))
                results[j] = _result(operations[j], _error(409, f"unresolved bulkId reference {missing[0]!r}", "invalidValue"))
            break
        if fail_on_errors is None:
            # A run of creates that depend on nothing (an import) goes at once; with failOnErrors each must be
            # counted before the next runs, so they go one by one.
            run = _create_run(operations, needs, remaining, i)
            if len(run) > 1:
                for j in run:
                    remaining.remove(j)
                outcomes = await executor.bulk_create_many(operations[i]["path"], [operations[j]["data"] for j in run])
                for j, outcome in zip(run, outcomes, strict=True):
                    op = operations[j]
                    if isinstance(outcome, ScimError):
                        results[j] = _result(op, outcome.to_json())
                        errors += 1
                        _mark_failed(op, failed_ids)
                    else:
                        results[j] = _result(op, result=outcome)
                        if outcome.resource_id is not None:
                            ids[str(op["bulkId"])] = outcome.resource_id
                continue
        remaining.remove(i)
        op = operations[i]
        if needs[i] & failed_ids:
            bad = sorted(needs[i] & failed_ids)[0]
            results[i] = _result(op, _error(409, f"bulkId {bad!r} failed, so this operation cannot run", "invalidValue"))
            errors += 1
            _mark_failed(op, failed_ids)
        else:
            outcome = await _one(executor, op, ids)
            results[i] = outcome
            if int(outcome["status"]) >= 400:
                errors += 1
                _mark_failed(op, failed_ids)
        if fail_on_errors is not None and errors >= fail_on_errors:
            break
    return {"schemas": [BULK_RESPONSE], "Operations": [r for r in results if r is not None]}


def _create_run(operations: list[dict[str, Any]], needs: list[set[str]], remaining: list[int], first: int) -> list[int]:
    """`first` and the operations after it in `remaining` that POST to the same path and refer to no bulkId."""
    path = operations[first].get("path")
    run: list[int] = []
    for j in remaining[remaining.index(first) :]:
        op = operations[j]
        method = op.get("method")
        if (
            needs[j] or not isinstance(method, str) or method.upper() != "POST" or op.get("path") != path
            or not isinstance(path, str) or op.get("bulkId") is None or not isinstance(op.get("data"), dict)
            or len(run) == BATCH_SIZE
        ):
            break
        run.append(j)
    return run


def _mark_failed(op: dict[str, Any], failed: set[str]) -> None:
    if op.get("bulkId") is not None:
        failed.add(str(op["bulkId"]))


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


async def _one(executor: BulkExecutor, op: dict[str, Any], ids: dict[str, str]) -> dict[str, Any]:
    method = op.get("method")
    path = op.get("path")
    if not isinstance(method, str) or method.upper() not in ("POST", "PUT", "PATCH", "DELETE"):
        return _result(op, _error(400, f"method must be POST, PUT, PATCH or DELETE, got {method!r}", "invalidValue"))
    method = method.upper()
    if not isinstance(path, str) or not path.startswith("/"):
        return _result(op, _error(400, f"path must be a resource path such as /Users, got {path!r}", "invalidPath"))
    if method == "POST" and op.get("bulkId") is None:
        return _result(op, _error(400, "a POST operation needs a bulkId", "invalidValue"))
    for ref in re.findall(r"bulkId:([^/]+)", path):
        if ref in ids:
            path = path.replace(f"bulkId:{ref}", ids[ref])
    data = _substitute(op.get("data"), ids)
    if method != "DELETE" and data is None:
        return _result(op, _error(400, f"a {method} operation needs data", "invalidSyntax"))
    try:
        outcome = await executor.bulk_operation(method, path, data, op.get("version"))
    except ScimError as exc:
        return _result(op, exc.to_json())
    if method == "POST" and outcome.resource_id is not None:
        ids[str(op["bulkId"])] = outcome.resource_id
    return _result(op, result=outcome)
