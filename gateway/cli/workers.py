"""`serve --workers N`: N serving processes on one port (SO_REUSEPORT), started, watched and stopped together."""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger("scim_gateway")


def serve_workers(args: argparse.Namespace, worker: Callable[[argparse.Namespace], None]) -> int:
    """Start `args.workers` processes running `worker` (a module-level function: each process imports it), forward
    SIGTERM / SIGINT to them, wait for them all."""
    import multiprocessing
    import multiprocessing.connection
    import signal

    from ..metrics import process_exited

    context = multiprocessing.get_context("spawn")  # a fresh interpreter each: no inherited loop, sockets or locks
    procs: dict[int, multiprocessing.process.BaseProcess] = {}
    told: set[int] = set()  # the workers sent a stop signal
    stopping = threading.Event()  # set by a signal handler, or when a worker fails
    failed = False

    def stop_all(signum: int) -> None:
        stopping.set()
        for proc in procs.values():
            if proc.is_alive() and proc.pid is not None:
                told.add(proc.pid)
                os.kill(proc.pid, signum)

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s: stopping the workers", signal.Signals(signum).name)
        stop_all(signal.SIGTERM)

    # The handlers before the first worker starts: a signal meanwhile stops the workers started, and no more start.
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for index in range(1, args.workers + 1):
            if stopping.is_set():
                break
            child_args = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "func"})
            child_args.workers, child_args.worker_index = 1, index
            proc: multiprocessing.process.BaseProcess = context.Process(
                target=worker, args=(child_args,), name=f"scim-gateway-worker-{index}"
            )
            proc.start()
            procs[index] = proc
            if stopping.is_set() and proc.pid not in told and proc.pid is not None:
                told.add(proc.pid)  # the signal came while this one started: tell it too, once
                os.kill(proc.pid, signal.SIGTERM)
        log.info("serving with %d worker processes: %s", len(procs), ", ".join(str(p.pid) for p in procs.values()))
        running = dict(procs)
        deadline: float | None = None
        while running:
            multiprocessing.connection.wait([p.sentinel for p in running.values()], timeout=1.0)
            for index, running_proc in list(running.items()):
                if running_proc.exitcode is None:
                    continue
                del running[index]
                if running_proc.pid is not None:
                    process_exited(running_proc.pid)  # its breaker states leave the live processes' gauges
                # A worker still starting when told to stop has no handler yet: the signal ends it, cleanly (it served nothing).
                stopped = running_proc.exitcode == 0 or running_proc.exitcode == -signal.SIGTERM
                if not (stopping.is_set() and stopped):
                    failed = True
                    log.error(
                        "worker %d (pid %s) exited with code %s%s",
                        index,
                        running_proc.pid,
                        running_proc.exitcode,
                        "" if stopping.is_set() else ": stopping the others",
                    )
                if not stopping.is_set():
                    stop_all(signal.SIGTERM)
            if stopping.is_set() and deadline is None:
                deadline = time.monotonic() + 40  # run_app's shutdown_timeout is 30 s
            if deadline is not None and time.monotonic() > deadline:
                for late in running.values():
                    log.error("worker (pid %s) did not stop in time: killing it", late.pid)
                    late.kill()
                deadline = time.monotonic() + 5
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 1 if failed else 0


__all__ = ["serve_workers"]
