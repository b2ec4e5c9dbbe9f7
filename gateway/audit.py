"""The audit log: one JSON object per line for every provisioning operation and every refused authentication.

Append-only: the file is opened O_APPEND (never truncated or rewritten by the gateway) and each record is one
os.write of one whole line, so several gateway processes (`serve --workers N`) share one file without their
lines interleaving. A record names who did what to which resource and how it ended; it never holds a request
body, a token, a password or any attribute value.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Values that come from the request (ids, bulkIds) are cut to this many characters: a record stays well
# under PIPE_BUF (4 KiB), so even a pipe (--audit-log /dev/stdout) keeps each line whole.
MAX_VALUE_CHARS = 128
_ROTATION_CHECK_SECONDS = 1.0
_ERROR_LOG_SECONDS = 60.0


def clip(value: Any) -> Any:
    """A request-supplied value as recorded: strings and other JSON values cut to MAX_VALUE_CHARS."""
    if value is None or isinstance(value, bool | int):
        return value
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditLog:
    """An append-only JSON-lines file; `path` None: auditing is off and `write` does nothing."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._fd: int | None = None
        self._inode: tuple[int, int] | None = None
        self._checked_at = 0.0
        self._dropped = 0
        self._error_logged_at = 0.0

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def open(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # 0o600: who did what is for the operator only. No O_TRUNC, ever: existing lines are kept.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        stat = os.fstat(fd)
        self._fd, self._inode, self._checked_at = fd, (stat.st_dev, stat.st_ino), time.monotonic()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (ts first). A failure to write is logged, and never fails the request."""
        if self.path is None:
            return
        line = json.dumps({"ts": utc_now(), **record}, ensure_ascii=True, separators=(",", ":"), default=str) + "\n"
        data = line.encode("ascii")
        try:
            self._reopen_if_rotated()
            if self._fd is None:
                self.open()
            assert self._fd is not None
            written = os.write(self._fd, data)
            while written < len(data):  # only on a full disk or a signal: finish the line rather than leave half of it
                written += os.write(self._fd, data[written:])
        except OSError as exc:
            self._dropped += 1
            now = time.monotonic()
            if now - self._error_logged_at >= _ERROR_LOG_SECONDS:
                self._error_logged_at = now
                log.error(
                    "audit log %s: cannot write (%s); %d record(s) lost so far", self.path, exc.strerror or exc, self._dropped
                )

    def _reopen_if_rotated(self) -> None:
        """Follow a log rotation that renamed or removed the file: write on to a new file at the path."""
        now = time.monotonic()
        if self._fd is None or now - self._checked_at < _ROTATION_CHECK_SECONDS:
            return
        self._checked_at = now
        assert self.path is not None
        try:
            stat = os.stat(self.path)
            same = (stat.st_dev, stat.st_ino) == self._inode
        except FileNotFoundError:
            same = False
        if not same:
            self.close()
            self.open()


__all__ = ["AuditLog", "clip", "utc_now"]
