"""What the audit log records of one request to an app: who (credential, client), what (operation on which
resource), how it ended (status, scimType). Filled in as the request goes; written by the audit middleware."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from ..audit import clip
from ..scim.bulk import BulkEntry

WRITE_OPS = {"POST": "create", "PUT": "replace", "PATCH": "patch", "DELETE": "delete"}


@dataclass(slots=True)
class AuditNote:
    app: str
    client: str | None
    method: str
    started: float = field(default_factory=time.monotonic)
    # 32 hex digits of randomness, as uuid4().hex gave (whose UUID object costs more than the id is worth).
    request_id: str = field(default_factory=lambda: os.urandom(16).hex())
    credential: str | None = None
    op: str | None = None  # None: not recorded (a read)
    reads: str = "read"  # what the request is when it records no op: read, search or discovery (its view's)
    resource_type: str | None = None
    resource_id: str | None = None
    scim_type: str | None = None
    reason: str | None = None
    operations: int | None = None  # Bulk: how many operation records precede the request's own
    notices: list[str] = field(default_factory=list)  # what provisioning did that the answer does not say

    @property
    def operation(self) -> str:
        """The request's operation as its log line and the metrics name it: the audited op, else its kind of read."""
        return self.op or self.reads

    def record(
        self,
        op: str | None,
        resource_type: str | None,
        resource_id: Any,
        status: int | None,
        scim_type: str | None,
        method: str | None = None,
        duration_ms: float | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """One audit line: who (credential, client), what (op on resource_type/id), how it ended (status, scim_type)."""
        out: dict[str, Any] = {
            "app": self.app,
            "credential": self.credential,
            "client": self.client,
            "method": method or self.method,
            "op": op,
            "resource_type": resource_type,
            "id": clip(resource_id),
            "status": status,
        }
        if scim_type:
            out["scim_type"] = scim_type
        out.update({k: v for k, v in extra.items() if v is not None})
        out["request_id"] = self.request_id
        if duration_ms is not None:
            out["duration_ms"] = duration_ms
        out["pid"] = os.getpid()  # which process of `serve --workers N`
        return out

    def bulk_records(self, entries: list[BulkEntry | None]) -> list[dict[str, Any]]:
        """One line per operation of a Bulk request that ran or was answered, in request order."""
        out = []
        for entry in entries:
            if entry is None:
                continue
            method = entry.method
            op = WRITE_OPS.get(method.upper()) if isinstance(method, str) else None
            out.append(
                self.record(
                    op,
                    entry.resource_type,
                    entry.resource_id,
                    entry.status,
                    entry.scim_type,
                    method=clip(method),
                    bulk_id=clip(entry.bulk_id),
                )
            )
        self.operations = len(out)
        return out

    def final(self, status: int | None) -> dict[str, Any]:
        """The request's own line."""
        duration = round((time.monotonic() - self.started) * 1000, 1)
        return self.record(
            self.op,
            self.resource_type,
            self.resource_id,
            status,
            self.scim_type,
            reason=self.reason,
            operations=self.operations,
            notices=[clip(n) for n in self.notices] or None,
            duration_ms=duration,
        )


__all__ = ["WRITE_OPS", "AuditNote"]
