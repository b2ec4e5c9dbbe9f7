"""Versions on the wire: `meta.version` and the ETag (`W/"3"`), and If-Match / If-None-Match read back."""

from __future__ import annotations

import re

# Versions the gateway issues fit 64 bits: a longer number is an ETag it never issued (and no store takes it).
_ETAG = re.compile(r'^(?:W/)?"(\d{1,18})"$')
NO_SUCH_VERSION = -1  # what an ETag the gateway never issued reads as: it matches no version


def etag(version: int) -> str:
    return f'W/"{version}"'


def parse_etag(header: str | None) -> int | None:
    """The version an If-Match / If-None-Match names; None for none or `*` (any)."""
    if header is None or header.strip() == "*":
        return None
    match = _ETAG.match(header.strip())
    return NO_SUCH_VERSION if match is None else int(match.group(1))


__all__ = ["NO_SUCH_VERSION", "etag", "parse_etag"]
