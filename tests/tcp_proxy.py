"""A TCP proxy a test controls, to take a real broker away and bring it back without touching it."""

from __future__ import annotations

import asyncio
import contextlib
import struct


class CuttableProxy:
    """Forwards 127.0.0.1:<port> to host:port. `cut()` aborts every connection through it;
    `stop()` also stops listening (the broker looks down); `start()` listens again on the same port.
    `hold()` stops passing bytes on while connections stay open (a broker that stopped answering);
    `release()` passes on what waited meanwhile."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.held = 0  # chunks that waited in hold(): a request the broker has not seen yet
        self.port = 0

    def hold(self) -> None:
        self._flowing.clear()

    def release(self) -> None:
        self._flowing.set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers += [writer, up_writer]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter, from_broker: bool) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await self._read(source, from_broker):
                    if not self._flowing.is_set():
                        self.held += 1
                        await self._flowing.wait()
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))

    async def _read(self, source: asyncio.StreamReader, from_broker: bool) -> bytes:
        return await source.read(65536)

    def cut(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self.cut()
            await self._server.wait_closed()
            self._server = None


class KafkaProxy(CuttableProxy):
    """A Kafka client connects to the broker addresses a Metadata (or FindCoordinator) response names,
    not to its bootstrap address: the broker's advertised port is rewritten to the proxy's in every
    response, so all of the client's connections go through the proxy and `cut()` reaches them all.

    Responses are framed (a 4-byte size, then the payload); the rewrite keeps every length the same.
    """

    async def _read(self, source: asyncio.StreamReader, from_broker: bool) -> bytes:
        if not from_broker:
            return await source.read(65536)
        header = await source.readexactly(4)
        payload = await source.readexactly(int.from_bytes(header, "big"))
        host = self._target[0].encode()
        advertised = host + struct.pack(">i", self._target[1])
        return header + payload.replace(advertised, host + struct.pack(">i", self.port))
