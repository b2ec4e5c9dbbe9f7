"""Load generators: wrk with bench/request.lua when wrk is installed, else bench/pyload.py in its own process.

Both read the same `LoadSpec` and report the same `LoadResult`, so a scenario is written once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
LUA_SCRIPT = BENCH / "request.lua"


@dataclass(frozen=True)
class LoadSpec:
    """One request shape: {n} in path or body is unique per request, {1}, {2}... the fields of a picked item."""

    method: str
    path: str
    body: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    items: Path | None = None  # one item a line, fields tab-separated
    pick: str = "random"  # random | unique (each item once; the run stops when they run out)
    nonce: str = "0"
    seed: int = 1


@dataclass
class LoadResult:
    requests: int
    duration_s: float
    ok: int
    bad: int  # HTTP status >= 400
    socket_errors: int
    timeouts: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    exhausted: bool = False
    first_bad: str = ""

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    def to_json(self) -> dict[str, object]:
        return asdict(self) | {"rps": round(self.rps, 1)}


class Generator:
    name: str

    def run(
        self, url: str, spec: LoadSpec, *, connections: int, duration: float, workdir: Path, cpus: set[int] | None
    ) -> LoadResult:
        raise NotImplementedError


def _pin(cpus: set[int] | None):  # type: ignore[no-untyped-def]
    return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None


class Wrk(Generator):
    """wrk 4 (C, epoll): one thread holds 32 connections; the Lua script makes every request."""

    def __init__(self, path: str, threads: int = 1) -> None:
        self.path = path
        self.threads = threads
        version = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
        self.name = (
            f"wrk ({(version.stdout or version.stderr).split(' [')[0].strip()}, -t{threads}, Lua script bench/request.lua)"
        )

    def run(
        self, url: str, spec: LoadSpec, *, connections: int, duration: float, workdir: Path, cpus: set[int] | None
    ) -> LoadResult:
        spec_file = workdir / f"wrk-spec-{spec.nonce}.tsv"
        lines = [
            f"method\t{spec.method}",
            f"path\t{spec.path}",
            f"pick\t{spec.pick}",
            f"threads\t{self.threads}",
            f"nonce\t{spec.nonce}",
            f"seed\t{spec.seed}",
        ]
        if spec.body is not None:
            lines.append(f"body\t{spec.body}")
        if spec.items is not None:
            lines.append(f"items\t{spec.items}")
        lines += [f"header\t{name}: {value}" for name, value in spec.headers.items()]
        assert not any("\n" in line for line in lines), "spec values are one line each"
        spec_file.write_text("\n".join(lines) + "\n")
        cmd = [
            self.path,
            f"-t{self.threads}",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            "10s",
            "-s",
            str(LUA_SCRIPT),
            url,
            "--",
            str(spec_file),
        ]
        proc = subprocess.run(cmd, capture_output=True, check=False, preexec_fn=_pin(cpus))
        out = proc.stdout.decode("utf-8", "replace")
        line = next((ln for ln in out.splitlines() if ln.startswith("BENCH_JSON ")), None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed ({proc.returncode}): {out[-2000:]} {proc.stderr.decode('utf-8', 'replace')[-2000:]}")
        data = json.loads(line.removeprefix("BENCH_JSON "))
        return LoadResult(
            requests=data["requests"],
            duration_s=data["duration_us"] / 1e6,
            ok=data["ok"],
            bad=data["bad"],
            socket_errors=data["socket_errors"],
            timeouts=data["timeouts"],
            p50_ms=data["p50_us"] / 1000,
            p90_ms=data["p90_us"] / 1000,
            p99_ms=data["p99_us"] / 1000,
            max_ms=data["max_us"] / 1000,
            mean_ms=data["mean_us"] / 1000,
            exhausted=bool(data["exhausted"]),
            first_bad=data["first_bad"],
        )


class PythonLoad(Generator):
    """bench/pyload.py (aiohttp client) in its own process: far slower than wrk, so it caps what it can show."""

    name = "Python aiohttp load generator (bench/pyload.py, one process): caps the baseline far below wrk, so ratios flatter the gateway"

    def run(
        self, url: str, spec: LoadSpec, *, connections: int, duration: float, workdir: Path, cpus: set[int] | None
    ) -> LoadResult:
        spec_file = workdir / f"py-spec-{spec.nonce}.json"
        spec_file.write_text(json.dumps(asdict(spec), default=str))
        cmd = [
            sys.executable,
            "-m",
            "bench.pyload",
            url,
            str(spec_file),
            "--connections",
            str(connections),
            "--duration",
            str(duration),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT, preexec_fn=_pin(cpus))
        if proc.returncode != 0:
            raise RuntimeError(f"pyload failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return LoadResult(**json.loads(proc.stdout.strip().splitlines()[-1]))


def pick_generator(choice: str) -> Generator:
    """`auto`: wrk if installed, else the Python generator."""
    wrk = shutil.which("wrk") or ("/usr/bin/wrk" if os.path.exists("/usr/bin/wrk") else None)
    if choice == "wrk" or (choice == "auto" and wrk):
        if not wrk:
            raise SystemExit("--generator wrk: wrk is not installed (Debian: apt-get install wrk)")
        return Wrk(wrk)
    return PythonLoad()
