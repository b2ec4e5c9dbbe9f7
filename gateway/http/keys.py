"""Every key of the gateway's aiohttp application and requests, in one place (typed, no string keys)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import jinja2
from aiohttp import web
from prometheus_client import Metric

from ..admin_auth import AdminAuth
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
# Gauges computed at each /metrics scrape (gateway/http/metrics.py): async functions of the application.
MetricSource = Callable[[web.Application], Awaitable[list[Metric]]]
METRIC_SOURCES = web.AppKey("metric_sources", list[MetricSource])
ADMIN_AUTH = web.AppKey("admin_auth", AdminAuth)  # set only when the admin page is on
ADMIN_TEMPLATES = web.AppKey("admin_templates", jinja2.Environment)
HUB = web.AppKey("hub", Hub)  # only when a hub file is served (docs/hub.md)

AUDIT_NOTE = web.RequestKey("audit_note", AuditNote)
RUNTIME = web.RequestKey("runtime", AppRuntime)
ADMIN_USER = web.RequestKey("admin_user", str)  # the admin page's credential (its name)

__all__ = [
    "ADMIN_AUTH",
    "ADMIN_TEMPLATES",
    "ADMIN_USER",
    "APPS",
    "AUDIT",
    "AUDIT_NOTE",
    "HUB",
    "METRIC_SOURCES",
    "MetricSource",
    "REGISTRY",
    "RUNTIME",
    "SETTINGS",
    "STORE",
]
