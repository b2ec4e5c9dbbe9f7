"""A TCP relay on loopback in front of a database: stopping it is the server going away, starting it again its return."""

from __future__ import annotations

import asyncio

from tests.conftest import free_port


class TcpProxy:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        """Listen (again) on the same port; returns it."""
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        return self.port

    async def stop(self) -> None:
        """Refuse new connections and cut the open ones, as a server that died."""
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()
        await self.server.wait_closed()
        self.writers.clear()

    @property
    def serving(self) -> bool:
        return self.server is not None and self.server.is_serving()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
