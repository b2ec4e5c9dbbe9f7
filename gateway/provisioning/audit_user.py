"""A person as the audit log knows them: the SCIM ids of their accounts in every app (the log holds ids, never names)."""

from __future__ import annotations

from ..store import Store
from .review import footprint


async def audit_ids(store: Store, who: str) -> set[str]:
    """`who` itself (the id of a resource since deleted is in the log only) and every account id a userName,
    externalId or SCIM id finds in the store."""
    who = who.strip()
    found = await footprint(store, who, writes=0)
    ids = {who} if who else set()
    if found.person is not None:
        ids |= {account.scim_id for account in found.person.accounts}
    return ids


__all__ = ["audit_ids"]
