"""What a list request's filter may ask the app itself: the provisioner's view of a filter.

The protocol layer reduces a validated filter to this once (gateway/scim/search.py): string comparisons on
attributes, joined as the filter joins them; everything else in the filter is left out, since the store
answers the whole filter afterwards. The provisioner uses it to ask the app for current records (`pushdown`)
and to adopt an account an IdP looks up by its unique name.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..schema import Resolved


@dataclass(slots=True)
class Probe:
    """`attribute op "value"` (or `attribute pr`, its value ""): one question the app might answer."""

    attribute: Resolved
    op: str  # eq, ne, co, sw, ew, gt, ge, lt, le, pr
    value: str


@dataclass(slots=True)
class Both:
    """Every match satisfies all of `parts` (an `and`; the parts that are no probe left out)."""

    parts: tuple[Lookup, ...]


@dataclass(slots=True)
class Either:
    """Every match satisfies one of `options` (an `or` whose every term is a lookup)."""

    options: tuple[Lookup, ...]


Lookup = Probe | Both | Either


__all__ = ["Both", "Either", "Lookup", "Probe"]
