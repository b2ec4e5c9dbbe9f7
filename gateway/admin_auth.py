"""The admin page's own credentials: bearer tokens and HTTP Basic users, held as SHA-256 digests only.

Given by reference, never inline (`scim-gateway serve` reads them):

- `SCIM_GATEWAY_ADMIN_TOKEN`: a bearer token (the credential `admin-token-<8 hex>`);
- a credentials file (`--admin-credentials FILE` or `SCIM_GATEWAY_ADMIN_CREDENTIALS`), one per line:
  `bearer NAME SHA256` or `basic USER SHA256`, the SHA-256 in hex (`scim-gateway hash-token` prints it);
  `#` starts a comment. Only digests are kept: the file holds no secret a reader could replay.

A request passes with an `Authorization: Bearer` token or `Basic` user and password that match; the digests
are compared as the apps' static tokens are (`gateway.auth.match_token`, constant time over the list).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from pathlib import Path

from .auth import Refused, StaticToken, default_token_name, match_token, token_digest
from .settings import AdminCredential

ADMIN_TOKEN_ENV = "SCIM_GATEWAY_ADMIN_TOKEN"
ADMIN_CREDENTIALS_ENV = "SCIM_GATEWAY_ADMIN_CREDENTIALS"
BASIC_CHALLENGE = 'Basic realm="scim-gateway admin", charset="UTF-8"'
_LINE = re.compile(r"^(bearer|basic)\s+(\S+)\s+([0-9a-fA-F]{64})$")


class CredentialsFileError(ValueError):
    """The credentials file cannot be read or has a line that is no credential (the message names it)."""


def token_credential(token: str) -> AdminCredential:
    """The credential for a bearer token given by environment variable (its digest; the token is not kept)."""
    digest = token_digest(token)
    return AdminCredential(kind="bearer", name=default_token_name(digest, "admin-token"), sha256=digest.hex())


def read_credentials_file(path: Path) -> list[AdminCredential]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialsFileError(
            f"cannot read the admin credentials file {path}: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    found: list[AdminCredential] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _LINE.match(line)
        if match is None:
            # The line is not echoed: it may hold a secret written where a digest belongs.
            raise CredentialsFileError(
                f"{path}:{number}: expected `bearer NAME SHA256` or `basic USER SHA256` (the SHA-256 of the token or"
                " password in hex, as `scim-gateway hash-token` prints it)"
            )
        kind, name, digest = match.groups()
        if kind == "basic" and ":" in name:
            raise CredentialsFileError(f"{path}:{number}: a Basic user name cannot hold ':'")
        found.append(AdminCredential(kind=kind, name=name, sha256=digest.lower()))  # type: ignore[arg-type]
    if not found:
        raise CredentialsFileError(f"{path}: no credential in it (the admin page would be off)")
    return found


class AdminAuth:
    """Who may read the admin page."""

    def __init__(self, credentials: list[AdminCredential]) -> None:
        self.tokens = [StaticToken(bytes.fromhex(c.sha256), c.name) for c in credentials if c.kind == "bearer"]
        self.users = [StaticToken(bytes.fromhex(c.sha256), c.name) for c in credentials if c.kind == "basic"]

    def authenticate(self, header: str) -> str:
        """The credential's name (`basic:USER` for a Basic user); Refused with the code the audit log records."""
        scheme, _, value = header.partition(" ")
        value = value.strip()
        if not scheme or not value:
            raise Refused("no_credentials", "the admin page needs credentials", challenge=BASIC_CHALLENGE)
        if scheme.lower() == "bearer":
            name = match_token(self.tokens, value)
            if name is None:
                raise Refused("unknown_token", "the bearer token is not an admin credential", challenge=BASIC_CHALLENGE)
            return name
        if scheme.lower() == "basic":
            try:
                user, sep, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise Refused(
                    "malformed", "the Basic credentials are not base64 of user:password", challenge=BASIC_CHALLENGE
                ) from None
            # Every user's entry is looked at, so the time taken does not tell which users exist.
            candidates = [u for u in self.users if hmac.compare_digest(u.name.encode(), user.encode())]
            name = match_token(candidates, password) if sep else None
            if name is None:
                raise Refused("unknown_user", "the user name or password is wrong", challenge=BASIC_CHALLENGE)
            return f"basic:{name}"
        raise Refused("no_credentials", "the admin page accepts Bearer or Basic credentials", challenge=BASIC_CHALLENGE)


__all__ = [
    "ADMIN_CREDENTIALS_ENV",
    "ADMIN_TOKEN_ENV",
    "BASIC_CHALLENGE",
    "AdminAuth",
    "CredentialsFileError",
    "read_credentials_file",
    "token_credential",
]
