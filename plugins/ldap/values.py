"""Values between app records and LDAP: ids, escaping (RFC 4514 / 4515), text and binary values, AD's encodings."""

from __future__ import annotations

import base64
import secrets
import uuid
from typing import Any

from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn, parse_dn

ACCOUNTDISABLE = 0x2  # userAccountControl: the account is disabled
NORMAL_ACCOUNT = 0x200


def id_to_text(raw: bytes, directory: str) -> str:
    """An entry's stable id in its canonical string form: entryUUID as it is, objectGUID as a GUID string."""
    if directory == "active_directory":
        return str(uuid.UUID(bytes_le=raw))
    return raw.decode("ascii").lower()


def id_filter_value(native_id: str, directory: str) -> str | None:
    """The id as an LDAP filter value (escaped); None when it cannot be an id at all (then no entry has it)."""
    try:
        parsed = uuid.UUID(native_id)
    except (ValueError, AttributeError, TypeError):
        return None
    if directory == "active_directory":
        return "".join(f"\\{b:02x}" for b in parsed.bytes_le)
    return str(parsed)


def filter_value(value: str) -> str:
    """A value inside an LDAP filter, every special character escaped (RFC 4515): data, never syntax."""
    escaped: str = escape_filter_chars(value)
    return escaped


def rdn(attribute: str, value: str) -> str:
    """`attribute=value` with the value escaped for a DN (RFC 4514)."""
    return f"{attribute}={escape_rdn(value)}"


def rdn_of(dn: str) -> tuple[str, str]:
    """The (attribute, value) of a DN's first component."""
    attribute, value, _sep = parse_dn(dn, escape=False, strip=False)[0]
    return attribute, _unescape(value)


def dn_key(dn: str) -> str:
    """A DN compared as directories compare them: attribute types and values in any case, spacing ignored."""
    try:
        return ",".join(
            f"{a.strip().lower()}={_unescape(v.strip()).lower()}" for a, v, _s in parse_dn(dn, escape=False, strip=False)
        )
    except Exception:  # ldap3 raises its own types for a DN it cannot parse: compare it as text
        return dn.strip().lower()


def parent_of(dn: str) -> str:
    parts = parse_dn(dn, escape=False, strip=False)
    return ",".join(f"{a}={v}" for a, v, _s in parts[1:])


def _unescape(value: str) -> str:
    """An RFC 4514 escaped value as its text."""
    out, i = bytearray(), 0
    raw = value.encode("utf-8")
    while i < len(raw):
        c = raw[i]
        if c == 0x5C and i + 1 < len(raw):  # backslash
            nxt = raw[i + 1 : i + 3]
            try:
                out.append(int(nxt, 16))
                i += 3
                continue
            except ValueError:
                out.append(raw[i + 1])
                i += 2
                continue
        out.append(c)
        i += 1
    return out.decode("utf-8", "replace")


def from_ldap(values: list[bytes], *, binary: bool, multi: bool) -> Any:
    """An attribute's values as a record holds them: text (binary: base64), a list when the attribute is multi-valued."""
    texts = [base64.b64encode(v).decode("ascii") if binary else v.decode("utf-8", "replace") for v in values]
    if multi:
        return texts
    return texts[0] if texts else None


def to_ldap(value: Any, *, binary: bool) -> list[bytes | str]:
    """A record's value as the attribute's values ([] clears it): a list for several, text or base64 for binary."""
    if value is None or value == "" or value == []:
        return []
    items = value if isinstance(value, list) else [value]
    out: list[bytes | str] = []
    for item in items:
        if item is None:
            continue
        if binary:
            out.append(base64.b64decode(str(item), validate=True))
        elif isinstance(item, bool):
            out.append("TRUE" if item else "FALSE")  # LDAP's Boolean syntax (RFC 4517)
        else:
            out.append(str(item))
    return out


def ad_password(password: str) -> bytes:
    """A password as Active Directory takes it in unicodePwd: in double quotes, UTF-16LE."""
    return f'"{password}"'.encode("utf-16-le")


def with_enabled(flags: int, enabled: bool) -> int:
    """userAccountControl with the ACCOUNTDISABLE bit cleared (enabled) or set; every other bit kept."""
    return flags & ~ACCOUNTDISABLE if enabled else flags | ACCOUNTDISABLE


__all__ = [
    "ACCOUNTDISABLE",
    "NORMAL_ACCOUNT",
    "ad_password",
    "dn_key",
    "filter_value",
    "from_ldap",
    "id_filter_value",
    "id_to_text",
    "parent_of",
    "rdn",
    "rdn_of",
    "to_ldap",
    "with_enabled",
]


def random_password() -> str:
    """A password no one knows that meets AD's complexity rules (four kinds of character, 36 long)."""
    return secrets.token_urlsafe(24) + "Aa1!"
