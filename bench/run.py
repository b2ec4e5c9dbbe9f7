"""The benchmark: `python -m bench` (or `make bench`); `--quick` for a short run, `--help` for the options.

Starts the gateway as its own process on the demo SQLite app (and on the hr REST app before its fake), seeds
it through its own Bulk endpoint, drives it from a separate load-generating process (wrk, else bench/pyload.py)
with 32 connections, compares every request rate with a bare aiohttp baseline run in the same way, and writes
bench/RESULTS.md (between its markers) and bench/results.json. The server is pinned to one core and the load
generator to another where the machine has two (as the baseline figure in NOTES.md was taken).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from . import profiling, report
from .load import BENCH, ROOT, Generator, LoadSpec, pick_generator
from .processes import Server, free_port, gateway_cmd, start

SCENARIOS = [
    "bulk",
    "baseline",
    "get",
    "filter",
    "paging",
    "post",
    "patch",
    "put",
    "members",
    "soak",
    "cached",
    "workers",
    "rest",
    "hub",
]
DEMO_SCENARIOS = set(SCENARIOS) - {"rest", "hub"}
RATE_SCENARIOS = {"get", "filter", "post", "patch", "put", "members", "soak", "cached", "workers", "rest", "hub"}
TOKEN = "bench-token-0123456789abcdef"
PATCH_URN = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
USER_URN = "urn:ietf:params:scim:schemas:core:2.0:User"
DEMO = "/apps/demo/scim/v2"
HR = "/apps/hr/scim/v2"

# The scenarios measured twice in a full run: first at SCALE_FIRST users, then at --users after importing the rest.
SCALE_SCENARIOS = ("get", "cached", "post", "patch", "put")

FULL = {
    "users": 100_000,
    "first_users": 10_000,
    "duration": 15.0,
    "warmup": 3.0,
    "soak_requests": 1_000_000,
    "soak_chunk": 60.0,
    "big_group": 10_000,
    "small_groups": 100,
    "hr_users": 1000,
    "hub_users": 5000,
    "page_count": 100,
}
QUICK = {
    "users": 10_000,
    "first_users": 0,
    "duration": 3.0,
    "warmup": 1.0,
    "soak_requests": 30_000,
    "soak_chunk": 5.0,
    "big_group": 1000,
    "small_groups": 20,
    "hr_users": 200,
    "hub_users": 500,
    "page_count": 100,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes and short runs, to check the harness (figures indicative only)"
    )
    parser.add_argument(
        "--scenarios",
        help=f"comma-separated subset of: {', '.join(SCENARIOS)} (default: all; bulk always runs"
        " when a demo scenario needs the directory)",
    )
    parser.add_argument(
        "--profile",
        metavar="SCENARIO[,SCENARIO]",
        help="run only these scenarios, with the gateway under"
        " py-spy (pyinstrument without it) during each; writes bench/profiles/, not RESULTS.md",
    )
    parser.add_argument("--profiler", choices=["auto", "py-spy", "pyinstrument"], default="auto")
    parser.add_argument(
        "--profile-gil", action="store_true", help="py-spy: keep only samples holding the GIL (Python's own work)"
    )
    parser.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto", help="auto: wrk if installed")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, help="seconds per measured rate run (full 15, quick 3)")
    parser.add_argument("--warmup", type=float, help="seconds of unmeasured load before each read scenario (full 3, quick 1)")
    parser.add_argument(
        "--users", type=int, help="users created by Bulk import, the directory the other scenarios use (full 100000, quick 10000)"
    )
    parser.add_argument(
        "--first-users",
        type=int,
        help=f"measure {', '.join(SCALE_SCENARIOS)} first at this many users, then import the rest up to --users and measure"
        " again (full 10000; quick 0: only at --users)",
    )
    parser.add_argument(
        "--bulk-batch", type=int, default=1000, help="operations per Bulk request (the gateway's maxOperations is 1000)"
    )
    parser.add_argument("--bulk-concurrency", type=int, default=4, help="Bulk requests in flight")
    parser.add_argument("--big-group", type=int, help="members of the big group (full 10000, quick 1000)")
    parser.add_argument(
        "--small-groups", type=int, help="how many 10-member groups the small-group adds rotate over (full 100, quick 20)"
    )
    parser.add_argument("--page-count", type=int, help="count per page when paging (default 100)")
    parser.add_argument("--soak-requests", type=int, help="GETs in the memory run (full 1000000, quick 30000)")
    parser.add_argument("--soak-chunk", type=float, help="seconds between memory samples in the memory run (full 60, quick 5)")
    parser.add_argument("--hr-users", type=int, help="users created in the hr REST app (full 1000, quick 200)")
    parser.add_argument(
        "--hub-users", type=int, help="users Bulk-created into the hub for its delivery rate (full 5000, quick 500)"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin the server and the load generator to separate cores")
    parser.add_argument(
        "--store",
        metavar="URL",
        help="run the gateways on this postgresql:// store (passed as SCIM_GATEWAY_STORE);"
        " it must be empty (default: SQLite in a fresh data dir)",
    )
    parser.add_argument(
        "--workdir",
        help="where data, logs and generated mappings go (default: a new temporary directory,"
        " removed after a run without failures)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory even when every scenario ran")
    parser.add_argument("--results", default=str(BENCH), help="folder for RESULTS.md and results.json (default bench/)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    for key, value in sizes.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    chosen = args.profile or args.scenarios
    args.selected = [s.strip() for s in chosen.split(",") if s.strip()] if chosen else list(SCENARIOS)
    unknown = [s for s in args.selected if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)} (valid: {', '.join(SCENARIOS)})")
    return args


class Bench:
    def __init__(self, args: argparse.Namespace, argv: list[str]) -> None:
        self.args = args
        self.argv = argv
        self.generator: Generator = pick_generator(args.generator)
        self.temporary = not args.workdir
        self.workdir = Path(args.workdir or tempfile.mkdtemp(prefix="scim-bench-")).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.results: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, str] = {}
        self.profiles: dict[str, dict[str, Any]] = {}
        cpus = sorted(os.sched_getaffinity(0))
        self.all_cpus = set(cpus)  # given explicitly to what runs unpinned: the harness itself is pinned
        pin = not args.no_pin and len(cpus) >= 2
        self.server_cpus: set[int] | None = {cpus[0]} if pin else None
        self.load_cpus: set[int] | None = {cpus[1]} if pin else None
        self.profiler = self._pick_profiler() if args.profile else None
        self.store_env = {"SCIM_GATEWAY_STORE": args.store} if args.store else {}
        self.nonce = 0
        self.directory = 0  # users imported so far
        self.phase = ""  # "_first": the figures of SCALE_SCENARIOS are taken at --first-users

    def _pick_profiler(self) -> str:
        choice = self.args.profiler
        if choice in ("auto", "py-spy") and profiling.py_spy():
            return "py-spy"
        if choice == "py-spy":
            raise SystemExit("--profiler py-spy: py-spy is not installed (pip install -e '.[bench]')")
        if profiling.pyinstrument_available():
            return "pyinstrument"
        raise SystemExit("--profile needs py-spy or pyinstrument: pip install -e '.[bench]'")

    # ------------------------------------------------------------ plumbing

    def say(self, message: str) -> None:
        print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", flush=True)

    def wanted(self, name: str) -> bool:
        return name in self.args.selected

    def profiling(self, name: str) -> bool:
        return self.profiler is not None and name in self.args.selected

    def headers(self, body: bool = False) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"} | ({"Content-Type": "application/scim+json"} if body else {})

    def spec(
        self,
        method: str,
        path: str,
        body: Any = None,
        items: Path | None = None,
        pick: str = "random",
        headers: dict[str, str] | None = None,
    ) -> LoadSpec:
        self.nonce += 1
        text = json.dumps(body, separators=(",", ":")) if body is not None else None
        return LoadSpec(
            method,
            path,
            text,
            headers if headers is not None else self.headers(body is not None),
            items,
            pick,
            nonce=f"{self.stamp}-{self.nonce}",
            seed=self.nonce,
        )

    def start_gateway(
        self,
        name: str,
        data_dir: Path,
        *,
        config: Path | None = None,
        workers: int = 1,
        pinned: bool = True,
        env: dict[str, str] | None = None,
        token: str | None = TOKEN,
        app: str = "demo",
        profile_as: str | None = None,
    ) -> Server:
        port = free_port()
        cmd = gateway_cmd(port=port, data_dir=data_dir, token=token, config=config, workers=workers)
        if profile_as and self.profiler == "pyinstrument":
            prefix, out = profiling.pyinstrument_prefix(profile_as, self.stamp)
            cmd = [*prefix, "-m", *cmd[2:]]
            self.profiles[profile_as] = {"html": str(out.relative_to(ROOT))}
        server = start(
            name,
            cmd,
            port=port,
            log=self.workdir / f"{name}.log",
            cpus=self.server_cpus if pinned else self.all_cpus,
            env=self.store_env | (env or {}),
            workers=workers,
        )
        server.wait_ready(f"/apps/{app}/scim/v2/ServiceProviderConfig", self.headers())
        return server

    @contextmanager
    def profiled(self, name: str, server: Server, scenario: str | None = None) -> Iterator[None]:
        """py-spy on `server` for the block, when `scenario` (default `name`) is profiled; files named after `name`."""
        if not (self.profiling(scenario or name) and self.profiler == "py-spy"):
            yield
            return
        exe = profiling.py_spy()
        assert exe is not None
        recording = profiling.start_py_spy(
            exe, server.pid, name, self.stamp, subprocesses=server.workers > 1, gil=self.args.profile_gil
        )
        time.sleep(1.0)  # py-spy attaches before the load starts
        try:
            yield
        finally:
            profiling.stop_py_spy(recording)
            if recording.raw.exists():
                summary = profiling.summarize(recording.raw)
                self.profiles[name] = {
                    "svg": str(recording.svg.relative_to(ROOT)),
                    "raw": str(recording.raw.relative_to(ROOT)),
                    **summary,
                }
                text = profiling.format_summary(name, summary)
                recording.raw.with_suffix(".top.txt").write_text(text)
                print(text, flush=True)

    def drive(
        self,
        name: str,
        server: Server,
        spec: LoadSpec,
        *,
        warmup: float = 0.0,
        duration: float | None = None,
        cpus: set[int] | None | str = "load",
        scenario: str | None = None,
        connections: int | None = None,
    ) -> dict[str, Any]:
        """One measured rate run against `server`: figures, its peak RSS, and a warning for any failed request."""
        load_cpus = self.load_cpus if cpus == "load" else cpus or self.all_cpus
        run = self.generator.run
        kwargs = {"connections": connections or self.args.connections, "workdir": self.workdir, "cpus": load_cpus}
        if warmup:
            run(server.url, spec, duration=warmup, **kwargs)  # type: ignore[arg-type]
        server.reset_peak()
        with self.profiled(name, server, scenario):
            result = run(server.url, spec, duration=duration or self.args.duration, **kwargs)  # type: ignore[arg-type]
        figures = result.to_json() | {"peak_rss_mib": round(server.peak_mib(), 1), "rss_end_mib": round(server.rss_mib(), 1)}
        if server.workers > 1:
            figures["peak_rss_by_process"] = server.peak_by_process()
        self.check(name, figures)
        return figures

    def check(self, name: str, figures: dict[str, Any]) -> None:
        failed = figures.get("bad", 0) + figures.get("socket_errors", 0) + figures.get("timeouts", 0)
        if failed:
            self.say(
                f"  WARNING {name}: {failed} of {figures.get('requests')} requests failed; first: {figures.get('first_bad', '')[:300]}"
            )
        if figures.get("exhausted"):
            self.say(f"  WARNING {name}: the item pool ran out before the run ended; its rate is understated")

    def client(self, command: str, *args: str) -> dict[str, Any]:
        """bench/clients.py in its own process, pinned with the load generator."""
        pin = (lambda: os.sched_setaffinity(0, self.load_cpus)) if self.load_cpus else None
        proc = subprocess.run(
            [sys.executable, "-m", "bench.clients", command, *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            preexec_fn=pin,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"bench.clients {command} failed ({proc.returncode}): {proc.stderr[-3000:]} {proc.stdout[-1000:]}")
        return dict(json.loads(proc.stdout.strip().splitlines()[-1]))

    def record(self, name: str, figures: dict[str, Any]) -> None:
        name += self.phase if name in SCALE_SCENARIOS else ""
        if name.startswith(SCALE_SCENARIOS):
            figures = figures | {"directory": self.directory}
        self.results[name] = figures
        shown = {
            k: figures[k]
            for k in (
                "rps",
                "p50_ms",
                "p99_ms",
                "peak_rss_mib",
                "wall_s",
                "users_per_s",
                "pages_per_s",
                "growth_mib",
                "seed_big_s",
            )
            if k in figures
        }
        self.say(f"  {name}: " + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()))

    def attempt(self, name: str, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception as exc:  # one broken scenario must not lose the others' figures
            self.errors[name] = f"{type(exc).__name__}: {exc}"[:2000]
            self.say(f"  FAILED {name}: {self.errors[name][:1500]}")
            traceback.print_exc()

    # ------------------------------------------------------------ the run

    def run(self) -> int:
        a = self.args
        self.say(f"workdir {self.workdir}; generator: {self.generator.name}")
        self.say(
            f"server cores {self.server_cpus or 'any'}, load generator cores {self.load_cpus or 'any'}; "
            f"{'quick' if a.quick else 'full'} sizes: {a.users} users, {a.duration:g} s per run, {a.connections} connections"
        )
        if self.load_cpus:
            os.sched_setaffinity(0, self.load_cpus)  # the harness itself stays off the server's core
        self.load_before = _loadavg()
        started = time.monotonic()
        if DEMO_SCENARIOS & set(a.selected):
            self.attempt("demo", self.demo)  # a gateway that cannot start is reported, and the REST part still runs
        if self.wanted("rest"):
            self.attempt("rest", self.rest)
        if self.wanted("hub"):
            from .hub import run_hub

            self.attempt("hub", lambda: run_hub(self))
        self.elapsed = time.monotonic() - started
        self.load_after = _loadavg()
        if self.temporary and not self.errors and not a.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.say(f"done in {self.elapsed / 60:.1f} min")
        else:
            self.say(f"done in {self.elapsed / 60:.1f} min; data, logs and mappings kept in {self.workdir}")
        if a.profile:
            path = BENCH / "profiles" / f"summary-{self.stamp}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.profiles, indent=2))
            self.say(f"profiles: {', '.join(str(v.get('svg') or v.get('html')) for v in self.profiles.values())}")
            return 1 if self.errors else 0
        document = self.document()
        out = Path(a.results)
        (out / "results.json").write_text(json.dumps(document, indent=2) + "\n")
        report.write_markdown(out / "RESULTS.md", document)
        self.say(f"wrote {out / 'RESULTS.md'} and {out / 'results.json'}")
        return 1 if self.errors else 0

    def demo(self) -> None:
        """The demo app's scenarios. A full run measures SCALE_SCENARIOS first at --first-users, imports the rest of the
        directory, and measures everything at --users (so those figures can be compared across the two sizes)."""
        a = self.args
        data = self.workdir / "demo-data"
        seed = self.workdir / "demo-seed"
        seed.mkdir(exist_ok=True)
        first = a.first_users if 0 < a.first_users < a.users and not a.profile else 0
        scaled = [name for name in SCALE_SCENARIOS if self.wanted(name)] if first else []
        profile_as = next(
            (s for s in a.selected if s in ("bulk", "get", "filter", "paging", "post", "patch", "put", "members", "soak")), None
        )
        steps: dict[str, Callable[[Server, Path], None]] = {
            "get": self.get,
            "filter": self.filter,
            "paging": self.paging,
            "post": self.post,
            "patch": self.patch,
            "put": self.put,
            "members": self.members,
            "soak": self.soak,
        }
        gateway = self.start_gateway("gateway-demo", data, profile_as=profile_as)
        try:
            if scaled:
                self.attempt("bulk", lambda: self.bulk(gateway, seed, first, start=0))
                if not self._seeded(seed):
                    return
                self.attempt("baseline", lambda: self.baseline(gateway, seed))
                self.phase = "_first"
                for name in scaled:
                    if name in steps:
                        self.say(f"{name} at {first:,} users ...")
                        self.attempt(name + self.phase, lambda step=steps[name]: step(gateway, seed))  # type: ignore[misc]
                if "cached" in scaled:
                    gateway.stop()
                    self.attempt("cached" + self.phase, lambda: self.cached(data, seed))
                    gateway = self.start_gateway("gateway-demo-2", data)
                self.phase = ""
                self.attempt("bulk", lambda: self.bulk(gateway, seed, a.users - first, start=first))
            else:
                self.attempt("bulk", lambda: self.bulk(gateway, seed, a.users, start=0))
                if not self._seeded(seed):
                    return
                if self.wanted("baseline") or (RATE_SCENARIOS & set(a.selected) and not a.profile):
                    self.attempt("baseline", lambda: self.baseline(gateway, seed))
            for name, step in steps.items():
                if self.wanted(name):
                    self.say(f"{name} ...")
                    self.attempt(name, lambda step=step: step(gateway, seed))  # type: ignore[misc]
        finally:
            gateway.stop()
        if self.wanted("cached"):
            self.attempt("cached", lambda: self.cached(data, seed))
        if self.wanted("workers"):
            self.attempt("workers", lambda: self.workers(data, seed))

    def _seeded(self, seed: Path) -> bool:
        if not (seed / "ids.txt").exists() or not (seed / "ids.txt").read_text().strip():
            self.say("no users were created: the scenarios that need the directory cannot run")
            return False
        return True

    # ------------------------------------------------------------ demo scenarios

    def bulk(self, gateway: Server, seed: Path, users: int, *, start: int) -> None:
        """Import `users` users (numbered from `start`); a second part is recorded with the first as one import."""
        a = self.args
        self.say(
            f"bulk: importing {users:,} users (from #{start:,}) through {gateway.url}{DEMO}/Bulk ({a.bulk_batch} ops a request,"
            f" {a.bulk_concurrency} in flight) ..."
        )
        gateway.reset_peak()
        with self.profiled("bulk", gateway):
            figures = self.client(
                "bulk",
                "--url",
                gateway.url + DEMO,
                "--token",
                TOKEN,
                "--users",
                str(users),
                "--start",
                str(start),
                "--batch",
                str(a.bulk_batch),
                "--concurrency",
                str(a.bulk_concurrency),
                "--out",
                str(seed),
            )
        figures |= {"peak_rss_mib": round(gateway.peak_mib(), 1), "rss_end_mib": round(gateway.rss_mib(), 1)}
        if figures["failures"]:
            self.say(
                f"  WARNING bulk: {figures['users'] - figures['created']} users not created; first: {figures['failures'][0]}"
            )
        if start and "bulk" in self.results:
            # The directory in two parts with measurements between: one import of the whole, its times summed.
            one = self.results["bulk"]
            parts = [*one.get("parts", [dict(one)]), figures]
            wall = sum(p["wall_s"] for p in parts)
            created = sum(p["created"] for p in parts)
            figures = figures | {
                "users": sum(p["users"] for p in parts),
                "created": created,
                "wall_s": wall,
                "users_per_s": created / wall if wall else 0,
                "requests": sum(p["requests"] for p in parts),
                "request_max_s": max(p["request_max_s"] for p in parts),
                "peak_rss_mib": max(p["peak_rss_mib"] for p in parts),
                "failures": [f for p in parts for f in p["failures"]][:20],
                "parts": parts,
            }
        self.directory = figures["created"]
        self.record("bulk", figures)

    def baseline(self, gateway: Server, seed: Path) -> None:
        """The same GET against a bare aiohttp handler that answers this gateway's body for one of the users."""
        first = (seed / "ids.txt").read_text().split()[0]
        request = urllib.request.Request(f"{gateway.url}{DEMO}/Users/{first}", headers=self.headers())
        with urllib.request.urlopen(request, timeout=10) as resp:
            body = resp.read()
        body_file = self.workdir / "baseline-user.json"
        body_file.write_bytes(body)
        self.say(f"baseline: bare aiohttp handler, {len(body)}-byte SCIM User ...")
        port = free_port()
        server = start(
            "baseline",
            [sys.executable, "-m", "bench.baseline", str(port), TOKEN, str(body_file)],
            port=port,
            log=self.workdir / "baseline.log",
            cpus=self.server_cpus,
        )
        try:
            server.wait_ready(f"{DEMO}/ServiceProviderConfig", self.headers())
            figures = self.drive(
                "baseline", server, self.spec("GET", DEMO + "/Users/{1}", items=seed / "ids.txt"), warmup=self.args.warmup
            )
            figures["body_bytes"] = len(body)
            self.record("baseline", figures)
        finally:
            server.stop()

    def get(self, gateway: Server, seed: Path) -> None:
        self.record(
            "get",
            self.drive("get", gateway, self.spec("GET", DEMO + "/Users/{1}", items=seed / "ids.txt"), warmup=self.args.warmup),
        )

    def filter(self, gateway: Server, seed: Path) -> None:
        spec = self.spec("GET", DEMO + "/Users?filter={1}", items=seed / "filters.txt")
        figures = self.drive("filter", gateway, spec, warmup=self.args.warmup)
        self.record("filter", figures | {"directory": self.args.users})
        # With 32 connections kept busy, latency is mostly queueing (32 / req/s): one connection shows the service time.
        figures = self.drive("filter_1", gateway, spec, scenario="filter", connections=1)
        self.record("filter_1", figures | {"directory": self.args.users, "connections": 1})

    def paging(self, gateway: Server, seed: Path) -> None:
        gateway.reset_peak()
        with self.profiled("paging", gateway):
            figures = self.client("page", "--url", gateway.url + DEMO, "--token", TOKEN, "--count", str(self.args.page_count))
        self.record("paging", figures | {"peak_rss_mib": round(gateway.peak_mib(), 1)})

    def post(self, gateway: Server, seed: Path) -> None:
        body = {
            "schemas": [USER_URN],
            "userName": "bench.post.{n}",
            "name": {"givenName": "Post", "familyName": "Bench {n}"},
            "emails": [{"type": "work", "value": "bench.post.{n}@example.org"}],
            "title": "Engineer",
            "active": True,
        }
        self.record("post", self.drive("post", gateway, self.spec("POST", DEMO + "/Users", body)))

    def patch(self, gateway: Server, seed: Path) -> None:
        body = {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": "title", "value": "Title {n}"}]}
        self.record("patch", self.drive("patch", gateway, self.spec("PATCH", DEMO + "/Users/{1}", body, items=seed / "ids.txt")))

    def put(self, gateway: Server, seed: Path) -> None:
        """PUT /Users/{id}: the whole user again, its own userName, a new title each time."""
        body = {
            "schemas": [USER_URN],
            "userName": "{2}",
            "name": {"givenName": "Put", "familyName": "Bench"},
            "emails": [{"type": "work", "value": "{2}@example.org"}],
            "title": "Title {n}",
            "active": True,
        }
        self.record("put", self.drive("put", gateway, self.spec("PUT", DEMO + "/Users/{1}", body, items=seed / "people.txt")))

    def members(self, gateway: Server, seed: Path) -> None:
        a = self.args
        self.say(f"members: seeding a group of {a.big_group} and {a.small_groups} groups of 10 ...")
        groups = self.client(
            "groups",
            "--url",
            gateway.url + DEMO,
            "--token",
            TOKEN,
            "--ids",
            str(seed / "ids.txt"),
            "--big",
            str(a.big_group),
            "--small-groups",
            str(a.small_groups),
            "--small-size",
            "10",
            "--out",
            str(seed),
        )
        self.record("members_seed", groups)
        add = {"schemas": [PATCH_URN], "Operations": [{"op": "add", "path": "members", "value": [{"value": "{2}"}]}]}
        big_size = groups["big_size"]
        for pool in ("members-big.txt", "members-small.txt"):  # the 1-connection runs get users of their own
            lines = (seed / pool).read_text().splitlines(keepends=True)
            cut = len(lines) * 4 // 5
            (seed / pool).write_text("".join(lines[:cut]))
            (seed / pool.replace(".txt", "-1c.txt")).write_text("".join(lines[cut:]))
        # The cost of one add is compared at one connection (service time); with 32 connections every add to the one
        # big group waits for the one before it (writes to a resource are serialized), while the small-group adds
        # spread over many groups, so those two rows compare concurrency, not group size.
        for name, pool, query, connections in (
            ("members_big_1c", "members-big-1c.txt", "?excludedAttributes=members", 1),
            ("members_small_1c", "members-small-1c.txt", "?excludedAttributes=members", 1),
            ("members_big", "members-big.txt", "?excludedAttributes=members", None),
            ("members_small", "members-small.txt", "?excludedAttributes=members", None),
            ("members_big_full", "members-big-full.txt", "", None),
        ):
            spec = self.spec("PATCH", DEMO + "/Groups/{1}" + query, add, items=seed / pool, pick="unique")
            figures = self.drive(name, gateway, spec, scenario="members", connections=connections)
            if "big" in name:
                figures |= {"group_size_start": big_size, "group_size_end": big_size + figures["ok"]}
                big_size += figures["ok"]
            else:
                per_group = -(-figures["ok"] // groups["small_groups"])
                figures |= {"group_size_start": groups["small_size"], "group_size_end": groups["small_size"] + per_group}
            self.record(name, figures)

    def soak(self, gateway: Server, seed: Path) -> None:
        """Memory over a long run of live GETs: RSS after a warm-up, then after each chunk, until the request count is reached."""
        a = self.args
        spec = self.spec("GET", DEMO + "/Users/{1}", items=seed / "ids.txt")
        kwargs = {"connections": a.connections, "workdir": self.workdir, "cpus": self.load_cpus}
        warm = self.generator.run(gateway.url, spec, duration=max(a.soak_chunk, a.warmup), **kwargs)  # type: ignore[arg-type]
        rss_warm = gateway.rss_mib()
        samples = [{"requests": warm.requests, "rss_mib": round(rss_warm, 1)}]
        self.say(f"  soak: warmed up with {warm.requests} GETs, RSS {rss_warm:.1f} MiB; now {a.soak_requests} more")
        done, seconds, bad, p99s, p50s = 0, 0.0, 0, [], []
        gateway.reset_peak()
        with self.profiled("soak", gateway):
            while done < a.soak_requests:
                left = a.soak_requests - done
                rate = done / seconds if seconds else warm.rps
                chunk = min(a.soak_chunk, max(1.0, left / rate if rate else a.soak_chunk))
                result = self.generator.run(gateway.url, spec, duration=chunk, **kwargs)  # type: ignore[arg-type]
                if result.requests == 0:
                    raise RuntimeError(f"no request got through in the soak ({result.first_bad})")
                done += result.requests
                seconds += result.duration_s
                bad += result.bad + result.socket_errors + result.timeouts
                p99s.append(result.p99_ms)
                p50s.append(result.p50_ms)
                samples.append({"requests": warm.requests + done, "rss_mib": round(gateway.rss_mib(), 1)})
        rss_end = samples[-1]["rss_mib"]
        growth = rss_end - round(rss_warm, 1)
        figures = {
            "requests": done,
            "duration_s": seconds,
            "rps": round(done / seconds, 1),
            "bad": bad,
            "p50_ms": sorted(p50s)[len(p50s) // 2],
            "p99_ms": max(p99s),
            "rss_warm_mib": round(rss_warm, 1),
            "rss_end_mib": rss_end,
            "growth_mib": round(growth, 1),
            "growth_bytes_per_request": round(growth * 1048576 / done, 2),
            "peak_rss_mib": round(gateway.peak_mib(), 1),
            "samples": samples,
        }
        self.check("soak", figures)
        self.record("soak", figures)

    def cached(self, data: Path, seed: Path) -> None:
        """GET by id with `reads: cached` on User: the gateway's own copy, the app never read."""
        mapping = yaml.safe_load((ROOT / "mappings" / "demo.yaml").read_text())
        mapping["resources"]["User"]["reads"] = "cached"
        config = self.workdir / "demo-cached.yaml"
        config.write_text(yaml.safe_dump(mapping, sort_keys=False))
        self.say("cached: gateway restarted on the same data with reads: cached on User ...")
        gateway = self.start_gateway(
            "gateway-cached", data, config=config, profile_as="cached" if self.profiling("cached") else None
        )
        try:
            self.record(
                "cached",
                self.drive(
                    "cached", gateway, self.spec("GET", DEMO + "/Users/{1}", items=seed / "ids.txt"), warmup=self.args.warmup
                ),
            )
        finally:
            gateway.stop()

    def workers(self, data: Path, seed: Path) -> None:
        """Live GET by id, one worker then `--workers 2`, neither pinned (the load generator shares the cores)."""
        for count in (1, 2):
            self.say(f"workers: live GET with --workers {count}, no pinning ...")
            gateway = self.start_gateway(
                f"gateway-workers-{count}",
                data,
                workers=count,
                pinned=False,
                profile_as="workers" if count == 2 and self.profiling("workers") else None,
            )
            try:
                spec = self.spec("GET", DEMO + "/Users/{1}", items=seed / "ids.txt")
                figures = self.drive(
                    f"workers_{count}",
                    gateway,
                    spec,
                    warmup=self.args.warmup,
                    cpus=None,
                    scenario="workers" if count == 2 else "workers_1",
                )
                self.record(f"workers_{count}", figures | {"workers": count})
            finally:
                gateway.stop()

    # ------------------------------------------------------------ the REST app

    def rest(self) -> None:
        """GET by id through the hr REST mapping (live: each GET reads the app), against the fake's own GET."""
        from tests.fakes.serve import HR_API_KEY

        a = self.args
        fake_port = free_port()
        fake = start(
            "hr-fake",
            [sys.executable, "-m", "tests.fakes.serve", "hr", str(fake_port)],
            port=fake_port,
            log=self.workdir / "hr-fake.log",
            cpus=self.load_cpus,
        )
        gateway: Server | None = None
        try:
            fake.wait_ready("/api/users", {"X-API-Key": HR_API_KEY})
            mapping = yaml.safe_load((ROOT / "mappings" / "hr_rest.yaml").read_text())
            # The shipped example is polite to a real app (20 calls/s, 10 connections): measure the gateway, not that.
            mapping["connector"].pop("rate_limit", None)
            mapping["connector"]["max_connections"] = a.connections
            config = self.workdir / "hr-bench.yaml"
            config.write_text(yaml.safe_dump(mapping, sort_keys=False))
            env = {"HR_API_URL": f"{fake.url}/api", "HR_API_KEY": HR_API_KEY, "HR_SCIM_TOKEN": TOKEN}
            self.say(f"rest: hr gateway before the fake hr app, seeding {a.hr_users} users through Bulk ...")
            gateway = self.start_gateway(
                "gateway-hr",
                self.workdir / "hr-data",
                config=config,
                env=env,
                token=None,
                app="hr",
                profile_as="rest" if self.profiling("rest") else None,
            )
            seed = self.workdir / "hr-seed"
            seed.mkdir(exist_ok=True)
            seeded = self.client(
                "bulk",
                "--url",
                gateway.url + HR,
                "--token",
                TOKEN,
                "--users",
                str(a.hr_users),
                "--batch",
                str(min(a.bulk_batch, a.hr_users)),
                "--concurrency",
                "2",
                "--out",
                str(seed),
            )
            self.client("hr-ids", "--api", f"{fake.url}/api", "--key", HR_API_KEY, "--out", str(seed / "native-ids.txt"))
            self.record("rest_seed", seeded)
            spec = self.spec("GET", HR + "/Users/{1}", items=seed / "ids.txt")
            self.record("rest_gateway", self.drive("rest", gateway, spec, warmup=a.warmup))
            post = {
                "schemas": [USER_URN],
                "userName": "rest.post.{n}",
                "name": {"givenName": "Post", "familyName": "Bench {n}"},
                "emails": [{"type": "work", "value": "rest.post.{n}@example.org"}],
                "title": "Engineer",
                "active": True,
            }
            self.record(
                "rest_post_gateway",
                self._fake_users(
                    fake, lambda: self.drive("rest_post", gateway, self.spec("POST", HR + "/Users", post), scenario="rest")
                ),
            )
            # The fake alone, on the server's core (the idle gateway's), driven the same way.
            if self.server_cpus:
                os.sched_setaffinity(fake.pid, self.server_cpus)
            key = {"X-API-Key": HR_API_KEY}
            direct = self.spec("GET", "/api/users/{1}", items=seed / "native-ids.txt", headers=key)
            self.record("rest_direct", self.drive("rest_direct", fake, direct, warmup=a.warmup))
            # The fake's own POST of what the gateway sends it for the POST above (the fields the mapping writes).
            native = {
                "login": "rest.direct.{n}",
                "first_name": "Post",
                "last_name": "Bench {n}",
                "email": "rest.direct.{n}@example.org",
                "title": "Engineer",
                "status": "enabled",
            }
            spec = self.spec("POST", "/api/users", native, headers=key | {"Content-Type": "application/json"})
            self.record(
                "rest_post_direct", self._fake_users(fake, lambda: self.drive("rest_post_direct", fake, spec, scenario="rest"))
            )
        finally:
            if gateway is not None:
                gateway.stop()
            fake.stop()

    def _fake_users(self, fake: Server, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """A POST run's figures with the fake's user count before and after: its create checks the login against them all."""
        from tests.fakes.serve import HR_API_KEY

        def count() -> int:
            request = urllib.request.Request(f"{fake.url}/api/users?per_page=1", headers={"X-API-Key": HR_API_KEY})
            with urllib.request.urlopen(request, timeout=30) as resp:
                return int(json.loads(resp.read())["total"])

        before = count()
        figures = measure()
        return figures | {"app_users_start": before, "app_users_end": count()}

    # ------------------------------------------------------------ the record

    def document(self) -> dict[str, Any]:
        a = self.args
        return {
            "command": "python -m bench" + ("" if not self.argv else " " + " ".join(self.argv)),
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "mode": "quick" if a.quick else "full",
            "machine": machine(),
            "load_average_before": self.load_before,
            "load_average_after": self.load_after,
            "elapsed_min": round(self.elapsed / 60, 1),
            "generator": self.generator.name,
            "connections": a.connections,
            "duration_s": a.duration,
            "warmup_s": a.warmup,
            "pinning": f"server on core {sorted(self.server_cpus)[0]}, load generator and clients on core {sorted(self.load_cpus)[0]}"
            if self.server_cpus and self.load_cpus
            else "none",
            "store": "PostgreSQL (--store)" if a.store else "SQLite (fresh data dir)",
            "sizes": {k: getattr(a, k) for k in (*FULL, "bulk_batch", "bulk_concurrency")},
            "scenarios": self.results,
            "errors": self.errors,
            "targets": report.evaluate(self.results, a.users),
            "targets_17": report.evaluate_17(self.results, a.users),
        }


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        kib = int(next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")).split()[1])
        mem = f"{kib / 1048576:.1f} GiB"
    except (OSError, StopIteration):
        pass
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "memory": mem,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "aiohttp": _version("aiohttp"),
    }


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    return Bench(args, argv).run()
