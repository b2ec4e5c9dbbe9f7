"""The hub's directory as an app: a built-in mapping whose connector keeps nothing, so that the store's copy
is the directory and the hub is served by an ordinary Provisioner and ScimService (no second protocol layer).

The hub's resources are those of the reserved app name `hub`; no mapping may take that name.
"""

from __future__ import annotations

import uuid
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from ..connectors.base import Capabilities, Connector, NativeId, Record
from ..connectors.registry import ConnectorRegistry
from ..mapping.compile import CompiledMapping, compile_mapping
from ..mapping.loader import Document
from ..schema import ENTERPRISE_USER

HUB_APP = "hub"
HUB_BASE = "/hub/scim/v2"


class DirectoryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["hub-directory"] = "hub-directory"


class DirectoryConnector(Connector):
    """Records of the hub directory live in the store's copy alone: every call succeeds and keeps nothing.

    `search` is declared so that crash recovery can ask whether an unsettled create reached "the app": it
    never did (find answers nothing), so the unacknowledged create is rolled back and the IdP retries it.
    """

    Config: ClassVar[type[BaseModel]] = DirectoryConfig
    capabilities: ClassVar[Capabilities] = Capabilities(membership=True, search=True, read=False)

    async def create(self, kind: str, record: Record) -> NativeId:
        return uuid.uuid4().hex

    async def get(self, kind: str, native_id: NativeId) -> Record | None:
        return None

    async def update(self, kind: str, native_id: NativeId, changes: Record) -> None:
        return None

    async def delete(self, kind: str, native_id: NativeId) -> None:
        return None

    async def find(self, kind: str, field: str, value: Any, op: str = "eq") -> list[tuple[NativeId, Record]]:
        return []

    async def add_members(self, kind: str, group_id: NativeId, members: list[tuple[str, NativeId]]) -> None:
        return None

    async def remove_members(self, kind: str, group_id: NativeId, members: list[tuple[str, NativeId]]) -> None:
        return None

    async def list_members(self, kind: str, group_id: NativeId) -> list[tuple[str, NativeId]]:
        return []


def directory_mapping_data(auth: Any) -> dict[str, Any]:
    """The hub's mapping, with the hub file's `auth:` block."""
    return {
        "app": HUB_APP,
        "description": "the hub directory",
        "auth": auth if auth is not None else {},
        "connector": {"type": "hub-directory"},
        "resources": {
            "User": {
                "extensions": [ENTERPRISE_USER],
                "attributes": [
                    {"scim": "userName", "field": "userName"},
                    # A reference: deleting a manager drops it from the reports' copies (and they are delivered).
                    {"scim": f"{ENTERPRISE_USER}:manager.value", "field": "manager", "ref": "User"},
                ],
                "reads": "cached",
            },
            "Group": {
                "attributes": [{"scim": "displayName", "field": "displayName"}],
                "members": {"via": "connector"},
                "reads": "cached",
            },
        },
    }


def compile_directory(hub_doc: Document, *, require_secrets: bool = True) -> CompiledMapping:
    """The hub's compiled mapping; a problem of its `auth:` block is reported at the hub file's line."""
    data = directory_mapping_data(hub_doc.data.get("auth") if isinstance(hub_doc.data, dict) else None)
    registry = ConnectorRegistry({"hub-directory": DirectoryConnector})
    doc = Document(hub_doc.file, data, hub_doc.marks, hub_doc.key_marks)
    return compile_mapping(doc, registry, require_secrets=require_secrets)


__all__ = ["HUB_APP", "HUB_BASE", "DirectoryConnector", "compile_directory", "directory_mapping_data"]
