"""`scim-gateway status`: a running gateway's apps, health, breakers and backlog, asked over HTTP.

It reads what any process of the gateway answers, `/readyz` (the store, each app open or why not) and
`/metrics` (each app's breaker over every process, the journal's pending entries from the store), so it works
for either store and any number of workers. Exit status: 0 ready, 1 not ready, 2 the gateway cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

from .common import DEFAULT_HOST, DEFAULT_PORT, METRICS_TOKEN_ENV

DEFAULT_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"  # where `serve` listens by default
BREAKER_RANKS = {"closed": 0, "half_open": 1, "open": 2}  # scim_gateway_breaker_state's values


class Unreachable(Exception):
    """No gateway answers at the URL (nothing listens, a timeout, or something else answers)."""


def _get(url: str, timeout: float, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:  # 503 from /readyz is an answer
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Unreachable(f"cannot reach the gateway at {url}: {reason}") from None


def read_status(url: str, timeout: float, token: str | None) -> dict[str, Any]:
    """The gateway's state as `status --json` prints it. Raises Unreachable."""
    root = url.rstrip("/")
    code, body = _get(f"{root}/readyz", timeout)
    try:
        ready = json.loads(body)
        apps_ready: dict[str, Any] = ready["apps"]
    except (ValueError, KeyError, TypeError):
        raise Unreachable(f"{root}/readyz answered HTTP {code}, not a scim-gateway's readiness (is --url right?)") from None
    out: dict[str, Any] = {"url": root, "store": ready.get("store"), "metrics": "ok", "apps": {}}
    breakers: dict[str, int] = {}
    backlog: dict[str, int] = {}
    opened: dict[str, int] = {}
    hub: dict[str, dict[str, float]] = {}  # app -> pending, dead, lag (apps the hub feeds)
    code, text = _get(f"{root}/metrics", timeout, token)
    if code == 200:
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(text.decode("utf-8", "replace")):
            for sample in family.samples:
                labelled = sample.labels.get("app")
                if labelled is None:
                    continue
                if sample.name == "scim_gateway_breaker_state":
                    breakers[labelled] = int(sample.value)
                elif sample.name == "scim_gateway_journal_pending":
                    backlog[labelled] = int(sample.value)
                elif sample.name == "scim_gateway_breaker_opened_total":
                    opened[labelled] = int(sample.value)
                elif sample.name == "scim_gateway_hub_outbox_entries":
                    hub.setdefault(labelled, {})[sample.labels.get("state", "?")] = int(sample.value)
                elif sample.name == "scim_gateway_hub_delivery_lag_seconds":
                    hub.setdefault(labelled, {})["lag"] = float(sample.value)
    elif code == 401:
        out["metrics"] = f"refused: /metrics needs its bearer token (set {METRICS_TOKEN_ENV})"
    else:
        out["metrics"] = f"HTTP {code}"
    for name, state in sorted(apps_ready.items()):
        # /readyz speaks for the one process that answered; the metrics for every process (the worst breaker).
        breaker = state.get("breaker", "none")
        worst = breakers.get(name, -1)
        if worst > BREAKER_RANKS.get(breaker, -1):
            breaker = next((k for k, v in BREAKER_RANKS.items() if v == worst), str(worst))
        app: dict[str, Any] = {
            "open": bool(state.get("open")),
            "breaker": breaker,
            "backlog": backlog.get(name),
            "breaker_opened": opened.get(name),
        }
        if name in hub:
            app["hub"] = {
                "pending": hub[name].get("pending", 0),
                "dead": hub[name].get("dead", 0),
                "lag": hub[name].get("lag", 0),
            }
        if state.get("reason"):
            app["reason"] = state["reason"]
        elif breaker != state.get("breaker", "none"):
            app["reason"] = f"circuit {breaker} in another worker"  # the one that answered /readyz has it closed
        out["apps"][name] = app
    ok = ready.get("status") == "ready" and all(a["open"] and a["breaker"] != "open" for a in out["apps"].values())
    out["status"] = "ready" if ok else "not ready"
    return out


def render(status: dict[str, Any]) -> str:
    """A table for a terminal."""
    lines = [f"Gateway {status['url']}: {status['status']} (store: {status['store']})"]
    if status["metrics"] != "ok":
        lines.append(f"Metrics: {status['metrics']}; backlog and breakers of other processes unknown")
    header = ("APP", "OPEN", "BREAKER", "BACKLOG", "OPENED", "HUB", "REASON")
    rows = [
        (
            name,
            "yes" if app["open"] else "no",
            app["breaker"],
            "?" if app["backlog"] is None else str(app["backlog"]),
            "?" if app["breaker_opened"] is None else str(app["breaker_opened"]),
            _hub_cell(app.get("hub")),
            app.get("reason", ""),
        )
        for name, app in status["apps"].items()
    ]
    if not rows:
        lines.append("No apps.")
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines.append("")
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    lines.append("")
    lines.append("BACKLOG: journal entries not settled yet; OPENED: times the circuit opened since the gateway started.")
    if any("hub" in app for app in status["apps"].values()):
        lines.append("HUB: deliveries from the hub pending and failed (dead letters), and the lag of the oldest pending.")
    return "\n".join(lines)


def _hub_cell(hub: dict[str, Any] | None) -> str:
    if hub is None:
        return "-"
    return f"{hub['pending']} pending, {hub['dead']} failed, lag {hub['lag']:g} s"


def cmd_status(args: argparse.Namespace) -> int:
    token = os.environ.get(METRICS_TOKEN_ENV) or None
    try:
        status = read_status(args.url, args.timeout, token)
    except Unreachable as exc:
        print(f"{exc} (is it running? give its address with --url)", file=sys.stderr)
        return 2
    print(json.dumps(status, indent=2) if args.json else render(status))
    return 0 if status["status"] == "ready" else 1


def add_status_parser(sub: Any) -> None:
    status = sub.add_parser("status", help="a running gateway's apps, health, breakers and backlog (exit 1: not ready)")
    status.add_argument("--url", default=DEFAULT_URL, help=f"the gateway's address (default {DEFAULT_URL})")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="per request (default 5)")
    status.set_defaults(func=cmd_status)


__all__ = ["DEFAULT_URL", "add_status_parser", "cmd_status", "read_status", "render"]
