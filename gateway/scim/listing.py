"""Query parameters of list and search requests (RFC 7644 §3.4.2, §3.4.3)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..provisioning.lookup import Lookup
from ..schema import SEARCH_REQUEST, ResourceType
from ..store.query import Query
from .errors import invalid_value
from .filter import parse_filter
from .projection import check_attribute_list_size
from .search import app_lookup, store_condition, store_sort

MAX_START_INDEX = 2**62


@dataclass(frozen=True, slots=True)
class ListRequest:
    """A list or search request, analysed: the store's query, what the app may be asked, and the projection."""

    query: Query
    lookup: Lookup | None
    attributes: str | None
    excluded: str | None

    def unpaged(self) -> Query:
        """Every match, in order (POST /.search pages across resource types itself)."""
        return replace(self.query, start_index=1, count=None)


_DIGITS = re.compile(r"([+-]?)(\d+)")


def _int(name: str, raw: Any) -> int | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool):
        raise invalid_value(f"{name} must be an integer, got {raw!r}")
    if isinstance(raw, int):
        return raw
    text = str(raw).strip()
    digits = _DIGITS.fullmatch(text)
    if digits is not None and len(digits.group(2)) > 18:
        # Past any page or index: as large as a count or an index can mean (clamped, or past the end).
        return -(10**18) if digits.group(1) == "-" else 10**18
    try:
        return int(text)
    except ValueError:
        shown = text if len(text) <= 40 else f"{text[:40]}... ({len(text)} characters)"
        raise invalid_value(f"{name} must be an integer, got {shown!r}") from None


def _names(raw: Any, name: str) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, list):
        if not all(isinstance(x, str) for x in raw):
            raise invalid_value(f"{name} must be a list of attribute names")
        return ",".join(raw)
    if not isinstance(raw, str):
        raise invalid_value(f"{name} must be a comma-separated string of attribute names")
    return raw


def parse_list_request(
    params: Mapping[str, Any], rtype: ResourceType, *, default_count: int, max_count: int, max_attributes: int | None = None
) -> ListRequest:
    """From query-string parameters or a SearchRequest body (same names); unknown parameters are ignored (Entra's aadOptscim062020)."""
    # Parameter names are case-insensitive in practice (Entra and Okta both send camelCase; some tools lower-case).
    lowered = {str(k).lower(): v for k, v in params.items()}
    text = lowered.get("filter")
    node = None
    if text not in (None, ""):
        if not isinstance(text, str):
            raise invalid_value("filter must be a string")
        node = parse_filter(text, rtype)
    sort_by = lowered.get("sortby")
    if sort_by not in (None, "") and (not isinstance(sort_by, str) or rtype.resolve_dotted(sort_by) is None):
        raise invalid_value(f"sortBy: {rtype.name} has no attribute {sort_by!r}")
    order = lowered.get("sortorder")
    if order not in (None, "") and (not isinstance(order, str) or order.lower() not in ("ascending", "descending")):
        raise invalid_value(f"sortOrder must be ascending or descending, got {order!r}")
    descending = isinstance(order, str) and order.lower() == "descending"
    start = _int("startIndex", lowered.get("startindex"))
    count = _int("count", lowered.get("count"))
    attributes = _names(lowered.get("attributes"), "attributes")
    excluded = _names(lowered.get("excludedattributes"), "excludedAttributes")
    if max_attributes is not None:
        check_attribute_list_size(attributes, "attributes", max_attributes)
        check_attribute_list_size(excluded, "excludedAttributes", max_attributes)
    query = Query(
        where=None if node is None else store_condition(node, rtype),
        sort=store_sort(sort_by, rtype, descending) if isinstance(sort_by, str) and sort_by else None,
        # Past the end is an empty page (RFC 7644 §3.4.2.4); the cap keeps the offset a 64-bit SQL integer.
        start_index=min(max(start, 1), MAX_START_INDEX) if start is not None else 1,
        count=default_count if count is None else min(max(count, 0), max_count),
    )
    return ListRequest(query, None if node is None else app_lookup(node, rtype), attributes, excluded)


def check_search_body(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid_value("a SearchRequest body must be a JSON object")
    schemas = body.get("schemas")
    if schemas is not None and (not isinstance(schemas, list) or SEARCH_REQUEST not in schemas):
        raise invalid_value(f"a SearchRequest must list {SEARCH_REQUEST} in schemas")
    return body
