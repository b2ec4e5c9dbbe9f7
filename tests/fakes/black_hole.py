"""A loopback listener that accepts connections and never answers: an app (or a database) that hangs.

    hole = BlackHole()                  # or BlackHole(port) to take over a port another listener left
    port = await hole.start()
    ...                                 # clients connect, send, and wait for an answer that never comes
    hole.accepted                       # connections accepted so far (the calls that reached it)
    await hole.answer(503)              # at last answer each held HTTP call, and close its connection
    await hole.cut()                    # or drop them, as a host that went away mid-call
    await hole.stop()

An HTTP client may repeat an idempotent request on a new connection when its connection drops; `answer`
ends held calls for good.
"""

from __future__ import annotations

import asyncio

from tests.conftest import free_port


class BlackHole:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.accepted = 0
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._hold, "127.0.0.1", self.port)
        return self.port

    async def wait_for(self, connections: int, timeout: float = 20.0) -> None:
        """Until `connections` have been accepted in all (a guard against a hang, not a timing assertion)."""
        async with asyncio.timeout(timeout):
            while self.accepted < connections:
                await asyncio.sleep(0.01)

    async def answer(self, status: int, body: bytes = b'{"error": "unavailable"}') -> None:
        """Answer every held connection with one HTTP response (after however long it was held), then close it."""
        head = f"HTTP/1.1 {status} Held\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        for writer in self.writers:
            writer.write(head.encode() + body)
            writer.close()
        self.writers.clear()

    async def cut(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.cut()
            await self.server.wait_closed()
            self.server = None

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.writers.append(writer)
        try:
            while await reader.read(65536):  # swallow what the client sends; answer nothing
                pass
        except (OSError, asyncio.CancelledError):
            pass
