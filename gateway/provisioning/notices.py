"""What a request's provisioning did that its answer does not say: a member id the app has no resource for, a
reference that waits for its resource's app record. Collected per request (a context variable) for the audit
log line the HTTP layer writes; outside a request they are only logged."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

log = logging.getLogger(__name__)

MAX_NOTICES = 20  # per request: a Bulk of thousands must not grow its audit line without bound

_notices: ContextVar[list[str] | None] = ContextVar("provisioning_notices", default=None)


def notice(app: str, text: str) -> None:
    """Record one notice for the current request's audit line (and the log)."""
    found = _notices.get()
    if found is not None and text in found:
        return  # said once per request
    log.info("%s: %s", app, text)
    if found is not None and len(found) < MAX_NOTICES:
        found.append(text)


@contextmanager
def collecting() -> Iterator[list[str]]:
    """The notices of what runs inside, in order."""
    found: list[str] = []
    token = _notices.set(found)
    try:
        yield found
    finally:
        _notices.reset(token)


__all__ = ["MAX_NOTICES", "collecting", "notice"]
