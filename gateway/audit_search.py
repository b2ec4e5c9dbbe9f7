"""Searching the audit log: the one reader behind `scim-gateway audit` and the admin page's audit views.

Records come newest first. The file is read backwards in blocks from its end, so the newest page of a large
log costs a few blocks, not the whole file; rotated siblings (`audit.log.1`, `audit.log.2`, ..., as logrotate
names them; `.gz` ones read whole, being compressed) follow, each older than the one before. A line that is
not a JSON object (a torn last line while a process writes, a line cut by a full disk) is skipped and counted.

Matching never needs the store: a user is matched by SCIM ids. Resolving a userName to ids is the caller's
business (the store knows them); `AuditQuery.ids` carries what it found.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BLOCK = 65_536
# Processes write their own clocks' times: lines may be out of order by a little. A backwards scan stops this
# far past `since`, not at the first older line.
SINCE_SLACK = timedelta(seconds=60)
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


class BadTime(ValueError):
    """A --since / --until that is neither an ISO time nor a relative one like 1h."""


def parse_when(text: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (no zone: UTC; a date alone: its midnight) or a duration ago: `90s`, `15m`, `1h`, `2d`, `1w`."""
    now = now or datetime.now(UTC)
    relative = _RELATIVE.match(text)
    try:
        if relative:
            return now - timedelta(seconds=float(relative.group(1)) * _UNITS[relative.group(2).lower()])
        when = datetime.fromisoformat(text.strip())
    except (ValueError, OverflowError):  # not a time, or one before year 1
        raise BadTime(
            f"{text!r} is not a time: give an ISO time (2026-05-04T09:00Z, 2026-05-04) or one ago (30m, 1h, 2d)"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def record_time(record: dict[str, Any]) -> datetime | None:
    ts = record.get("ts")
    if not isinstance(ts, str):
        return None
    try:
        when = datetime.fromisoformat(ts)
    except ValueError:
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def failed(record: dict[str, Any]) -> bool:
    """The operation did not succeed: an error status, none (cut short), or a reconcile fix's `failed` outcome."""
    status = record.get("status")
    if status is None and isinstance(record.get("outcome"), str):
        return record["outcome"] == "failed"
    return not isinstance(status, int) or status >= 400


@dataclass(slots=True)
class AuditQuery:
    """What to look for; every part given must match (an empty set: any)."""

    apps: set[str] = field(default_factory=set)
    ids: set[str] = field(default_factory=set)  # SCIM ids (a user's accounts across apps)
    user_given: bool = False  # a user was asked for: no id matching it means no record matches
    ops: set[str] = field(default_factory=set)
    statuses: set[int] = field(default_factory=set)
    only_failed: bool = False
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, record: dict[str, Any]) -> bool:
        if self.apps and record.get("app") not in self.apps:
            return False
        if self.user_given and record.get("id") not in self.ids:
            return False
        if self.ops and record.get("op") not in self.ops:
            return False
        if self.statuses and record.get("status") not in self.statuses:
            return False
        if self.only_failed and not failed(record):
            return False
        if self.since is not None or self.until is not None:
            when = record_time(record)
            if when is None:
                return False
            if self.since is not None and when < self.since:
                return False
            if self.until is not None and when > self.until:
                return False
        return True

    def past(self, record: dict[str, Any]) -> bool:
        """Reading backwards, this record is so far before `since` that nothing older can match."""
        if self.since is None:
            return False
        when = record_time(record)
        return when is not None and when < self.since - SINCE_SLACK


@dataclass(slots=True)
class Page:
    records: list[dict[str, Any]]
    more: bool  # another page follows
    skipped: int  # lines read that were not records


def log_files(path: Path) -> list[Path]:
    """The log and its rotated siblings, newest first: PATH, PATH.1, PATH.2(.gz), ..."""
    found = [path] if path.exists() else []
    n = 1
    while True:
        plain, packed = path.with_name(f"{path.name}.{n}"), path.with_name(f"{path.name}.{n}.gz")
        if plain.exists():
            found.append(plain)
        elif packed.exists():
            found.append(packed)
        else:
            return found
        n += 1


def _lines_backwards(path: Path) -> Iterator[bytes]:
    """The file's lines, last first, read in blocks from the end."""
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as packed:
            yield from reversed(packed.read().splitlines())
        return
    with open(path, "rb") as file:
        end = file.seek(0, os.SEEK_END)
        tail = b""
        while end > 0:
            start = max(0, end - BLOCK)
            file.seek(start)
            chunk = file.read(end - start) + tail
            end = start
            parts = chunk.split(b"\n")
            tail = parts[0]  # may be the end of a line that began in the block before
            yield from reversed(parts[1:])
        yield tail


class Reader:
    """Records of an audit log, newest first, matching a query."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.skipped = 0

    def records(self, query: AuditQuery) -> Iterator[dict[str, Any]]:
        for file in log_files(self.path):
            for line in _lines_backwards(file):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:  # a torn line (a writer mid-line, a full disk) or not a record at all
                    self.skipped += 1
                    continue
                if not isinstance(record, dict):
                    self.skipped += 1
                    continue
                if query.past(record):
                    return
                if query.matches(record):
                    yield record

    def page(self, query: AuditQuery, offset: int = 0, limit: int = 50) -> Page:
        """The `limit` matching records after the newest `offset`, newest first, and whether more follow."""
        out: list[dict[str, Any]] = []
        more = False
        for index, record in enumerate(self.records(query)):
            if index < offset:
                continue
            if len(out) == limit:
                more = True
                break
            out.append(record)
        return Page(out, more, self.skipped)


def search(path: Path, query: AuditQuery, offset: int = 0, limit: int = 50) -> Page:
    return Reader(path).page(query, offset, limit)


__all__ = ["AuditQuery", "BadTime", "Page", "Reader", "failed", "log_files", "parse_when", "record_time", "search"]
