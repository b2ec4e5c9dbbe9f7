"""The processes under test: the gateway, the bare aiohttp baseline, the fake hr app; each pinned, watched, stopped.

Memory is read from /proc: VmRSS now, VmHWM the peak. Writing 5 to /proc/PID/clear_refs resets VmHWM to the
current RSS (Linux >= 4.0), so each scenario gets its own peak from a process that lives across scenarios.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .load import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """The process and every process below it (the `--workers` children and multiprocessing's helper)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                        inodes.add(cols[9])
        except FileNotFoundError:
            continue
    return inodes


def _listens(pid: int, inodes: set[str]) -> bool:
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                return True
    except OSError:
        pass
    return False


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    workers: int = 1
    _peak_polled: int = 0
    _hwm_reset: bool = False
    _poller: threading.Thread | None = field(default=None, repr=False)
    _polling: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        return descendants(self.pid)

    def rss_mib(self) -> float:
        return sum(_status_kib(p, "VmRSS") for p in self.pids()) / 1024

    def peak_mib(self) -> float:
        """Peak RSS since the last reset_peak: VmHWM summed over the processes (an upper bound with several
        workers, whose peaks need not coincide), or the polled maximum where the kernel's is not resettable."""
        hwm = sum(_status_kib(p, "VmHWM") for p in self.pids()) / 1024
        return max(hwm if self._hwm_reset else 0.0, self._peak_polled / 1024)

    def peak_by_process(self) -> list[dict[str, object]]:
        """Each process's own VmHWM, with a name: the parent, each worker, multiprocessing's tracker."""
        out = []
        for p in self.pids():
            try:
                args = open(f"/proc/{p}/cmdline", "rb").read().split(b"\0")
            except OSError:
                continue
            text = b" ".join(args).decode("utf-8", "replace")
            kind = (
                "worker"
                if "spawn_main" in text
                else "tracker"
                if "resource_tracker" in text
                else "parent"
                if p == self.pid
                else "child"
            )
            out.append({"pid": p, "kind": kind, "peak_rss_mib": round(_status_kib(p, "VmHWM") / 1024, 1)})
        return out

    def reset_peak(self) -> None:
        self._hwm_reset = True
        for p in self.pids():
            try:
                with open(f"/proc/{p}/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                self._hwm_reset = False
        self._peak_polled = 0
        if self._poller is None:
            self._polling = True
            self._poller = threading.Thread(target=self._poll, name=f"rss-{self.name}", daemon=True)
            self._poller.start()

    def _poll(self) -> None:
        while self._polling and self.proc.poll() is None:
            self._peak_polled = max(self._peak_polled, sum(_status_kib(p, "VmRSS") for p in self.pids()))
            time.sleep(0.2)

    def wait_ready(self, probe: str, headers: dict[str, str], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(urllib.request.Request(self.url + probe, headers=headers), timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (OSError, urllib.error.URLError) as exc:
                last = str(exc)
            time.sleep(0.1)
        else:
            raise RuntimeError(f"{self.name} did not answer {probe} in {timeout} s ({last}):\n{self.log.read_text()[-3000:]}")
        # With --workers, the kernel spreads connections only over the processes already listening: wait for all.
        while self.workers > 1 and time.monotonic() < deadline:
            inodes = _listening_inodes(self.port)
            if sum(_listens(p, inodes) for p in self.pids() if p != self.pid) >= self.workers:
                return
            time.sleep(0.1)

    def stop(self) -> None:
        self._polling = False
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=45)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start(
    name: str,
    cmd: list[str],
    *,
    port: int,
    log: Path,
    cpus: set[int] | None,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
    workers: int = 1,
) -> Server:
    pin: Callable[[], None] | None = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    full_env = {k: v for k, v in os.environ.items() if k not in ("SCIM_GATEWAY_TOKEN", "SCIM_GATEWAY_STORE")} | (env or {})
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=full_env, preexec_fn=pin)
    return Server(name, proc, port, log, workers)


def gateway_cmd(*, port: int, data_dir: Path, token: str | None, config: Path | None = None, workers: int = 1) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--log-level",
        "warning",
    ]
    if token:
        cmd += ["--token", token]
    if config is not None:
        cmd += ["--config", str(config)]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    return cmd
