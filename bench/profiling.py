"""`--profile SCENARIO`: py-spy attached to the gateway while the scenario runs, and a summary of its hot spots.

py-spy samples from outside the process (no code change, little overhead), so the profile covers exactly the
scenario's measured phase. Two recorders run side by side, non-blocking: a flame graph (SVG, to look at) and
raw collapsed stacks (to summarize: the functions most often on top of the stack, and most often on it at all).
Without py-spy, pyinstrument runs the whole gateway process instead (an HTML report written when it stops).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .load import BENCH, ROOT

PROFILES = BENCH / "profiles"
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    return shutil.which("py-spy") or (
        str(Path(sys.executable).parent / "py-spy") if (Path(sys.executable).parent / "py-spy").exists() else None
    )


def pyinstrument_available() -> bool:
    try:
        import pyinstrument  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class Recording:
    name: str
    svg: Path
    raw: Path
    procs: list[subprocess.Popen[bytes]]


def start_py_spy(exe: str, pid: int, name: str, stamp: str, *, subprocesses: bool, gil: bool = False) -> Recording:
    PROFILES.mkdir(parents=True, exist_ok=True)
    svg, raw = PROFILES / f"{name}-{stamp}.svg", PROFILES / f"{name}-{stamp}.txt"
    procs = []
    for fmt, out in (("flamegraph", svg), ("raw", raw)):
        cmd = [
            exe,
            "record",
            "--pid",
            str(pid),
            "--rate",
            "200",
            "--nonblocking",
            "--full-filenames",
            "--format",
            fmt,
            "-o",
            str(out),
        ]
        if subprocesses:
            cmd.append("--subprocesses")
        if gil:
            cmd.append("--gil")  # only samples holding the GIL: Python's own work, no thread waiting for its turn
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    return Recording(name, svg, raw, procs)


def stop_py_spy(recording: Recording) -> None:
    for proc in recording.procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
    for proc in recording.procs:
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if proc.returncode not in (0, -signal.SIGINT) and err:
            print(f"  py-spy: {err.decode('utf-8', 'replace').strip()[-500:]}", file=sys.stderr)


def _where(path: str) -> str:
    """A short home for a frame's file: gateway/store/sqlite.py, aiohttp/web_protocol.py, stdlib json/encoder.py."""
    path = path.replace(str(ROOT) + "/", "")
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1]
    match = re.search(r"lib/python3\.\d+/(.*)$", path)
    return f"stdlib {match.group(1)}" if match else path


def _area(where: str) -> str:
    """The package (or our layer) a file belongs to, for the breakdown by area."""
    if where.startswith(("gateway/", "plugins/")):
        parts = where.split("/")
        return "/".join(parts[:2]) if len(parts) > 2 else where
    if where.startswith("stdlib "):
        return "stdlib " + where[7:].split("/")[0].removesuffix(".py")
    return where.split("/")[0].removesuffix(".py")


# Frames every sample of a thread passes through (start-up, the event loop's own loop): no information.
_PLUMBING = ("<frozen runpy>", "gateway/cli/", "aiohttp/web.py", "stdlib threading.py")
# Our own pass-through layers: a sample is charged to the code that called them.
_WRAPPERS = ("gateway/inline_sqlite.py", "gateway/cli/")
_LOOP = {"BaseEventLoop.run_forever", "BaseEventLoop._run_once", "BaseEventLoop.run_until_complete", "Handle._run"}


def summarize(raw: Path, top: int = 12) -> dict[str, Any]:
    """Hot spots in py-spy's collapsed stacks, the event loop's thread apart from the others (aiosqlite's workers).

    Per thread group: self share per function (top of stack), the hottest lines, and for the event loop the
    inclusive share (on the stack at all), each as a share of that group's samples; and every sample charged to
    the innermost line of our own code on its stack, so a library's time (SQLAlchemy, SQLite, json) lands on the
    line of ours that asked for it. Code run inside SQLAlchemy's greenlets has no coroutine frames above it, so
    the inclusive shares of request handlers understate; the per-line view does not depend on them. A C function (sqlite3, json's encoder) has no
    frame of its own: its time is the self time of the Python line that called it. On a server pinned to one core,
    a thread that is runnable but waiting for the CPU or the GIL counts as busy: aiosqlite's worker waiting at its
    queue's get() shows so, and is the cost of handing each query to that thread and back.
    """
    groups: dict[str, dict[str, Counter[str]]] = {
        g: {"self": Counter(), "lines": Counter(), "ours": Counter(), "inclusive": Counter()}
        for g in ("event loop", "other threads")
    }
    areas: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        names = []
        for frame in stack.split(";"):
            match = _FRAME.match(frame)
            if match is not None:  # else a process / thread header frame
                where = _where(match["file"])
                names.append((f"{match['func']} ({where})", where, match["func"], match["line"]))
        if not names:
            continue
        total += count
        group = groups["other threads" if any(w == "stdlib threading.py" for _, w, _, _ in names) else "event loop"]
        leaf, leaf_where, leaf_func, leaf_line = names[-1]
        group["self"][leaf] += count
        group["lines"][f"{leaf_where}:{leaf_line} ({leaf_func})"] += count
        ours = next(
            (
                (f, w, ln)
                for _, w, f, ln in reversed(names)
                if w.startswith(("gateway/", "plugins/")) and not w.startswith(_WRAPPERS)
            ),
            None,
        )
        group["ours"][
            f"{ours[1]}:{ours[2]} ({ours[0]})"
            if ours
            else "(none of ours on the stack: event loop, aiohttp, SQLAlchemy inside its greenlets)"
        ] += count
        areas[_area(leaf_where)] += count
        for name in {n for n, where, func, _ in names if not where.startswith(_PLUMBING) and func not in _LOOP}:
            group["inclusive"][name] += count

    def shares(counter: Counter[str], n: int, of: int) -> list[tuple[str, float]]:
        return [(name, round(100 * k / of, 1)) for name, k in counter.most_common(n)] if of else []

    threads = {}
    for g, c in groups.items():
        n = sum(c["self"].values())
        threads[g] = {
            "samples": n,
            "share": round(100 * n / total, 1) if total else 0.0,
            "self": shares(c["self"], top, n),
            "lines": shares(c["lines"], 8, n),
            "ours": shares(c["ours"], top, n),
            "inclusive": shares(c["inclusive"], 25 if g == "event loop" else 0, n),
        }
    return {"samples": total, "threads": threads, "areas": shares(areas, top, total)}


def format_summary(name: str, summary: dict[str, Any]) -> str:
    out = [f"## {name}: {summary['samples']} samples of busy threads (py-spy, 200 Hz)"]
    for group, data in summary["threads"].items():
        out += [
            "",
            f"### {group}: {data['samples']} samples ({data['share']}% of all); shares below are of these",
            "",
            "Self (top of stack):",
        ]
        out += [f"  {pct:5.1f}%  {fn}" for fn, pct in data["self"]]
        out += ["", "Hottest lines (self):"]
        out += [f"  {pct:5.1f}%  {ln}" for ln, pct in data["lines"]]
        out += ["", "By our innermost line (gateway/, plugins/: its calls into libraries, SQLite included, count to it):"]
        out += [f"  {pct:5.1f}%  {ln}" for ln, pct in data["ours"]]
        if data["inclusive"]:
            out += ["", "Inclusive (on the stack; start-up and event-loop frames left out):"]
            out += [f"  {pct:5.1f}%  {fn}" for fn, pct in data["inclusive"]]
    out += ["", "### Self by area, all threads", ""]
    out += [f"  {pct:5.1f}%  {area}" for area, pct in summary["areas"]]
    return "\n".join(out) + "\n"


def pyinstrument_prefix(name: str, stamp: str) -> tuple[list[str], Path]:
    """The command prefix running `-m gateway.cli` under pyinstrument, and its report file."""
    PROFILES.mkdir(parents=True, exist_ok=True)
    out = PROFILES / f"{name}-{stamp}.html"
    return [sys.executable, "-m", "pyinstrument", "-r", "html", "-o", str(out)], out
