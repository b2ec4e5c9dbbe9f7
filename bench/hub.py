"""The hub scenario (issue 14): one SCIM target for three apps, the demo SQLite app and two hr REST fakes.

- `hub_post_one_down`: POST /hub/scim/v2/Users (unique bodies) while the second hr fake is stopped (SIGSTOP: its
  connections hang, as an app that stopped answering). The hub answers from its directory and outbox: its rate
  and latency should not depend on the app being down. Rated against the baseline like every rate.
- `hub_catch_up`: the stopped app resumed; the time until the hub's outbox holds nothing pending for any app
  (read from /metrics, `scim_gateway_hub_outbox_entries`), and the deliveries that took.
- `hub_delivery`: with every app up, `--hub-users` users Bulk-created into the hub; from the first write until
  every app has them: deliveries (one per user and app) per second to the three apps.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .load import ROOT
from .processes import Server, free_port, gateway_cmd, start

if TYPE_CHECKING:
    from .run import Bench

HUB = "/hub/scim/v2"
USER_URN = "urn:ietf:params:scim:schemas:core:2.0:User"


def _pending(gateway: Server) -> dict[str, int]:
    """Each app's pending hub deliveries, from the gateway's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(gateway.url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "scim_gateway_hub_outbox_entries" and sample.labels.get("state") == "pending":
                out[sample.labels["app"]] = int(sample.value)
    return out


def _drained(gateway: Server, timeout: float) -> float:
    """Seconds until no app has a pending hub delivery (raises after `timeout`)."""
    started = time.monotonic()
    while True:
        pending = _pending(gateway)
        if pending and not any(pending.values()):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"the hub's outbox did not drain in {timeout:g} s: {pending}")
        time.sleep(0.2)


def _mappings(root: Path, connections: int) -> Path:
    """demo as shipped; hr and hr2 from the shipped hr mapping, without their own IdP token (the hub feeds them) and
    without its polite 20 calls/s limit (the scenario measures the gateway, not the limiter)."""
    folder = root / "hub-mappings"
    folder.mkdir(exist_ok=True)
    (folder / "demo.yaml").write_text((ROOT / "mappings" / "demo.yaml").read_text())
    hr = yaml.safe_load((ROOT / "mappings" / "hr_rest.yaml").read_text())
    hr.pop("auth", None)
    hr["connector"].pop("rate_limit", None)
    hr["connector"]["max_connections"] = connections
    for name, env in (("hr", "HR_API_URL"), ("hr2", "HR2_API_URL")):
        doc = dict(hr, app=name, connector=dict(hr["connector"], base_url={"env": env}))
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder


HUB_FILE = {
    "auth": {"bearer": [{"env": "HUB_SCIM_TOKEN"}]},
    "delivery": {"concurrency": 8, "max_attempts": 1000, "backoff": 0.2, "max_backoff": 2.0, "poll_interval": 0.2},
    "apps": {name: {"users": {"everyone": True}, "groups": "none", "leave": "deactivate"} for name in ("demo", "hr", "hr2")},
}


def run_hub(runner: Bench) -> None:
    from gateway.demo import ensure_demo_database
    from tests.fakes.serve import HR_API_KEY

    from .run import TOKEN

    a = runner.args
    fakes: list[Server] = []
    gateway: Server | None = None
    try:
        for name in ("hr-fake-1", "hr-fake-2"):
            port = free_port()
            fake = start(
                name,
                [sys.executable, "-m", "tests.fakes.serve", "hr", str(port)],
                port=port,
                log=runner.workdir / f"{name}.log",
                cpus=runner.load_cpus,
            )
            fakes.append(fake)
            fake.wait_ready("/api/users", {"X-API-Key": HR_API_KEY})
        hub_file = runner.workdir / "hub.yaml"
        hub_file.write_text(yaml.safe_dump(HUB_FILE, sort_keys=False))
        port = free_port()
        data = runner.workdir / "hub-data"
        ensure_demo_database(data)  # --config names the demo mapping: its database is not made by `serve` then
        cmd = gateway_cmd(port=port, data_dir=data, token=None, config=_mappings(runner.workdir, a.connections))
        env = {
            "HR_API_URL": f"{fakes[0].url}/api",
            "HR2_API_URL": f"{fakes[1].url}/api",
            "HR_API_KEY": HR_API_KEY,
            "HUB_SCIM_TOKEN": TOKEN,
        }
        gateway = start(
            "gateway-hub",
            [*cmd, "--hub", str(hub_file)],
            port=port,
            log=runner.workdir / "gateway-hub.log",
            cpus=runner.server_cpus,
            env=runner.store_env | env,
        )
        gateway.wait_ready(f"{HUB}/ServiceProviderConfig", runner.headers())

        runner.say("hub: POST /hub/scim/v2/Users with the second hr app stopped ...")
        os.kill(fakes[1].pid, signal.SIGSTOP)
        try:
            body = {
                "schemas": [USER_URN],
                "userName": "hub.post.{n}",
                "name": {"givenName": "Hub", "familyName": "Bench {n}"},
                "emails": [{"type": "work", "value": "hub.post.{n}@example.org"}],
                "title": "Engineer",
                "active": True,
            }
            figures = runner.drive("hub_post_one_down", gateway, runner.spec("POST", HUB + "/Users", body), scenario="hub")
            waiting = _pending(gateway)
            figures["pending_at_end"] = waiting
            runner.record("hub_post_one_down", figures)
        finally:
            os.kill(fakes[1].pid, signal.SIGCONT)
        seconds = _drained(gateway, timeout=max(120.0, 10 * a.duration))
        backlog = waiting.get("hr2", 0)
        runner.record(
            "hub_catch_up",
            {
                "seconds": round(seconds, 2),
                "backlog": backlog,
                "deliveries_per_s": round(backlog / seconds, 1) if seconds else None,
            },
        )

        runner.say(f"hub: {a.hub_users} users Bulk-created into the hub, delivered to three apps ...")
        seed = runner.workdir / "hub-seed"
        seed.mkdir(exist_ok=True)
        started = time.monotonic()
        seeded = runner.client(
            "bulk",
            "--url",
            gateway.url + HUB,
            "--token",
            TOKEN,
            "--users",
            str(a.hub_users),
            "--batch",
            str(min(a.bulk_batch, a.hub_users)),
            "--concurrency",
            "2",
            "--seed",
            "7",
            "--out",
            str(seed),
        )
        written = time.monotonic() - started
        drained = _drained(gateway, timeout=max(300.0, a.hub_users / 5))
        total = written + drained
        deliveries = 3 * int(seeded.get("created", a.hub_users))
        result: dict[str, Any] = {
            "users": a.hub_users,
            "created": seeded.get("created"),
            "write_s": round(written, 2),
            "wall_s": round(total, 2),
            "deliveries": deliveries,
            "deliveries_per_s": round(deliveries / total, 1) if total else None,
        }
        runner.record("hub_delivery", result)
    finally:
        if gateway is not None:
            gateway.stop()
        for fake in fakes:
            try:
                os.kill(fake.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            fake.stop()


__all__ = ["run_hub"]
