"""Every key of the gateway's aiohttp application and requests, in one place (typed, no string keys)."""

from __future__ import annotations

from aiohttp import web

from ..audit import AuditLog
from ..connectors.registry import ConnectorRegistry
from ..hub.runtime import Hub
from ..runtime import AppRuntime
from ..settings import GatewaySettings
from ..store import Store
from .audit import AuditNote

SETTINGS = web.AppKey("settings", GatewaySettings)
REGISTRY = web.AppKey("registry", ConnectorRegistry)
STORE = web.AppKey("store", Store)
APPS = web.AppKey("apps", dict[str, AppRuntime])
AUDIT = web.AppKey("audit", AuditLog)
HUB = web.AppKey("hub", Hub)  # only when a hub file is served (docs/hub.md)

AUDIT_NOTE = web.RequestKey("audit_note", AuditNote)
RUNTIME = web.RequestKey("runtime", AppRuntime)

__all__ = ["APPS", "AUDIT", "AUDIT_NOTE", "HUB", "REGISTRY", "RUNTIME", "SETTINGS", "STORE"]
