"""One app's circuit shared by the processes of one gateway (`serve --workers N`): a small memory-mapped file.

Why not the store: the breaker's admission runs before every app call, and while the circuit is closed it must
cost no store round trip. Here it costs one 8-byte read of a generation counter from shared memory, compared
with the one this process last loaded. Changes are rare (a failure counted, the circuit opened, a probe taken or
answered, a 429's pause): each takes an exclusive fcntl lock on the file, loads the state, changes it, writes it
and bumps the generation, so two processes never lose one another's change. A reader that sees a new generation
loads the state under a shared lock.

Times are CLOCK_MONOTONIC (`time.monotonic`), which every process of one host reads alike. The directory is
private to one `serve --workers` run, made before the workers start and removed when they have stopped, so no
state outlives the gateway (nor a reboot, which restarts that clock).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Set by `serve --workers N` for its workers (they inherit the environment), like the metrics directory.
CIRCUITS_DIR_ENV = "SCIM_GATEWAY_CIRCUITS_DIR"

_SIZE = 4096
_GENERATION = struct.Struct("=Q")  # offset 0: 0 until the first write
# state, probing, failures, probe_pid, cooldown, probe_at, paused_until, len(last), len(paused_for)
_FIELDS = struct.Struct("<BBIidddHH")
_FIELDS_AT = 8
_LAST_AT, _LAST_MAX = 64, 2048
_PAUSED_AT, _PAUSED_MAX = _LAST_AT + _LAST_MAX, 1024
_STATES = ("closed", "half_open", "open")


@dataclass(slots=True)
class CircuitState:
    """What the processes share of one app's breaker (its credentials warning stays each process's own)."""

    state: str = "closed"
    probing: bool = False
    probe_pid: int = 0  # the process whose probe call is in flight
    failures: int = 0
    cooldown: float = 0.0
    probe_at: float = 0.0
    paused_until: float = 0.0
    last: str = ""
    paused_for: str = ""


def _clip(text: str, limit: int) -> bytes:
    return text.encode()[:limit].decode(errors="ignore").encode()  # never half a character


class SharedCircuit:
    """The file of one app's circuit, mapped into this process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                if os.fstat(self._fd).st_size < _SIZE:
                    os.ftruncate(self._fd, _SIZE)  # zeros: generation 0, nothing written yet
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._map = mmap.mmap(self._fd, _SIZE)
        except BaseException:
            os.close(self._fd)
            raise
        self.generation = memoryview(self._map)[:8].cast("Q")  # [0]: the hot path's one read (native order)
        self.seen = 0  # the generation this process last loaded

    def changed(self) -> CircuitState | None:
        """The state, when another process changed it since this one last looked; None otherwise (the hot path)."""
        if self.generation[0] == self.seen:
            return None
        fcntl.flock(self._fd, fcntl.LOCK_SH)
        try:
            return self._load()
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    @contextmanager
    def changing(self) -> Iterator[tuple[CircuitState | None, list[CircuitState]]]:
        """Hold the file while the caller changes the state: yields the state as it is (None: never written) and a
        list to put the new state in, which is written on leaving, with a new generation."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            current = self._load() if _GENERATION.unpack_from(self._map, 0)[0] else None
            out: list[CircuitState] = []
            yield current, out
            if out:
                self._store(out[-1])
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _load(self) -> CircuitState:
        generation = _GENERATION.unpack_from(self._map, 0)[0]
        state, probing, failures, pid, cooldown, probe_at, paused_until, n_last, n_paused = _FIELDS.unpack_from(
            self._map, _FIELDS_AT
        )
        self.seen = generation
        return CircuitState(
            _STATES[state] if state < len(_STATES) else "closed",
            bool(probing),
            pid,
            failures,
            cooldown,
            probe_at,
            paused_until,
            self._map[_LAST_AT : _LAST_AT + min(n_last, _LAST_MAX)].decode(errors="replace"),
            self._map[_PAUSED_AT : _PAUSED_AT + min(n_paused, _PAUSED_MAX)].decode(errors="replace"),
        )

    def _store(self, new: CircuitState) -> None:
        last, paused = _clip(new.last, _LAST_MAX), _clip(new.paused_for, _PAUSED_MAX)
        self._map[_LAST_AT : _LAST_AT + len(last)] = last
        self._map[_PAUSED_AT : _PAUSED_AT + len(paused)] = paused
        _FIELDS.pack_into(
            self._map,
            _FIELDS_AT,
            _STATES.index(new.state),
            new.probing,
            min(new.failures, 0xFFFFFFFF),
            new.probe_pid,
            new.cooldown,
            new.probe_at,
            new.paused_until,
            len(last),
            len(paused),
        )
        # The generation last: a reader that sees it sees the fields (it loads them under the shared lock anyway).
        self.seen = _GENERATION.unpack_from(self._map, 0)[0] + 1
        _GENERATION.pack_into(self._map, 0, self.seen)

    def close(self) -> None:
        self.generation.release()
        self._map.close()
        os.close(self._fd)


def alive(pid: int) -> bool:
    """Whether a process of this host is alive (a probe's, taken over when it died with the probe in flight)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    return True


def shared_circuit(app: str) -> SharedCircuit | None:
    """This app's shared circuit when the process is one of `serve --workers N`; None for a single process."""
    directory = os.environ.get(CIRCUITS_DIR_ENV)
    return SharedCircuit(Path(directory) / f"{app}.circuit") if directory else None


@contextmanager
def circuits_shared_between_processes() -> Iterator[str]:
    """A fresh private directory for the circuits of the processes started inside (they inherit the environment);
    removed afterwards."""
    previous = os.environ.get(CIRCUITS_DIR_ENV)
    path = tempfile.mkdtemp(prefix="scim-gateway-circuits-")  # mode 0700, empty
    os.environ[CIRCUITS_DIR_ENV] = path
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop(CIRCUITS_DIR_ENV, None)
        else:
            os.environ[CIRCUITS_DIR_ENV] = previous
        shutil.rmtree(path, ignore_errors=True)


__all__ = ["CIRCUITS_DIR_ENV", "CircuitState", "SharedCircuit", "alive", "circuits_shared_between_processes", "shared_circuit"]
