"""The fallback load generator, for machines without wrk: `python -m bench.pyload URL SPEC.json --connections 32 --duration 10`.

Runs in its own process (the harness starts it, pinned away from the server), keeps `--connections` requests in
flight on one aiohttp session, and prints one JSON line shaped like bench.load.LoadResult. It spends far more CPU
per request than wrk, so on a fast server it measures itself: say so next to any figure it produced.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

_PLACEHOLDER = re.compile(r"\{(n|\d+)\}")


def _fill(template: str, fields: list[str], token: str) -> str:
    return _PLACEHOLDER.sub(lambda m: token if m.group(1) == "n" else fields[int(m.group(1)) - 1], template)


def _percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


async def run(url: str, spec: dict[str, Any], connections: int, duration: float) -> dict[str, Any]:
    items: list[list[str]] = []
    if spec.get("items"):
        items = [line.split("\t") for line in Path(spec["items"]).read_text().splitlines() if line]
    rng = random.Random(spec.get("seed", 1))
    unique = spec.get("pick") == "unique"
    state = {"next": 0, "counter": 0, "ok": 0, "bad": 0, "errors": 0, "timeouts": 0, "exhausted": False, "first_bad": ""}
    latencies: list[float] = []
    headers = dict(spec.get("headers") or {})
    body_template = spec.get("body")
    if body_template is not None:
        headers.setdefault("Content-Type", "application/scim+json")

    async def worker(session: aiohttp.ClientSession, stop_at: float) -> None:
        while time.perf_counter() < stop_at:
            fields: list[str] = []
            if items:
                if unique:
                    if state["next"] >= len(items):
                        state["exhausted"] = True
                        return
                    fields = items[state["next"]]
                    state["next"] += 1
                else:
                    fields = items[rng.randrange(len(items))]
            state["counter"] += 1
            token = f"{spec['nonce']}-1-{state['counter']}"
            path = _fill(spec["path"], fields, token)
            data = _fill(body_template, fields, token).encode() if body_template is not None else None
            started = time.perf_counter()
            try:
                async with session.request(spec["method"], url + path, data=data, headers=headers) as resp:
                    text = await resp.read()
                    if resp.status < 400:
                        state["ok"] += 1
                    else:
                        state["bad"] += 1
                        if not state["first_bad"]:
                            state["first_bad"] = f"{resp.status} {text[:300].decode('utf-8', 'replace')}"
            except TimeoutError:
                state["timeouts"] += 1
                continue
            except aiohttp.ClientError:
                state["errors"] += 1
                continue
            latencies.append(time.perf_counter() - started)

    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections), timeout=timeout) as session:
        started = time.perf_counter()
        stop_at = started + duration
        await asyncio.gather(*(worker(session, stop_at) for _ in range(connections)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    ms = [v * 1000 for v in latencies]
    return {
        "requests": len(latencies),
        "duration_s": elapsed,
        "ok": state["ok"],
        "bad": state["bad"],
        "socket_errors": state["errors"],
        "timeouts": state["timeouts"],
        "p50_ms": _percentile(ms, 50),
        "p90_ms": _percentile(ms, 90),
        "p99_ms": _percentile(ms, 99),
        "max_ms": ms[-1] if ms else 0.0,
        "mean_ms": sum(ms) / len(ms) if ms else 0.0,
        "exhausted": state["exhausted"],
        "first_bad": state["first_bad"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pyload", description=__doc__)
    parser.add_argument("url", help="the server's root, e.g. http://127.0.0.1:8080")
    parser.add_argument("spec", help="a LoadSpec as JSON (bench/load.py writes it)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args(argv)
    spec = json.loads(Path(args.spec).read_text())
    result = asyncio.run(run(args.url.rstrip("/"), spec, args.connections, args.duration))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
