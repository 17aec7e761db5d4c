"""Syslog over UDP (RFC 5426: one message per datagram), on asyncio-dgram; what waits in the
socket after each datagram it delivers is read directly (DRAIN_UP_TO)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter

import asyncio_dgram
from asyncio_dgram.aio import DatagramServer

from .intake import Admit, Dropped, Intake
from .syslog import parse_syslog

TRANSPORT = "udp"
DRAIN_UP_TO = 256
"""Datagrams read straight from the socket after each one the transport delivers (asyncio's
transport reads one per pass of the event loop and hands it over through a queue: at 60,000
datagrams/s offered, 46,000/s were taken that way and 50,000/s with this, journal on)."""
_LARGEST_DATAGRAM = 65536  # as large a buffer costs no more per read than a small one
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux; the stdlib does not name it


def _set_receive_buffer(sock: socket.socket, size: int) -> None:
    try:  # bursts overflow the kernel's default ~200 KiB buffer; FORCE needs root
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def _datagram_socket(host: str, port: int, receive_buffer: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        _set_receive_buffer(sock, receive_buffer)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class UdpListener:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        admit: Admit,
        intake: Intake,
        max_message_size: int,
        receive_buffer: int,
    ) -> None:
        self.host, self.port = host, port
        self.transport_name = TRANSPORT
        self._admit, self._intake = admit, intake
        self.max_message_size = max_message_size
        self.receive_buffer = receive_buffer
        self._sock: socket.socket | None = None
        self._stream: DatagramServer | None = None
        self._task: asyncio.Task[None] | None = None
        self.received: Counter[str] = Counter()
        """Messages delivered per sender address since the metrics last took them
        (`take_received`): they name the sender, so they are folded away, not kept."""

    @property
    def address(self) -> tuple[str, int]:
        assert self._stream is not None
        return self._stream.sockname[:2]

    async def start(self) -> None:
        """Bind and serve (again, after stop(): a reload that is undone re-opens it)."""
        sock = _datagram_socket(self.host, self.port, self.receive_buffer)
        stream = await asyncio_dgram.from_socket(sock)
        assert isinstance(stream, DatagramServer)  # a bound, unconnected socket
        self._sock, self._stream = sock, stream
        self._task = asyncio.get_running_loop().create_task(self._serve())

    def reconfigure(self, *, max_message_size: int, receive_buffer: int) -> None:
        """A reload's settings, at once."""
        self.max_message_size = max_message_size
        if receive_buffer != self.receive_buffer and self._sock is not None:
            _set_receive_buffer(self._sock, receive_buffer)
        self.receive_buffer = receive_buffer

    async def _serve(self) -> None:
        assert self._stream is not None and self._sock is not None
        recv, sock = self._stream.recv, self._sock
        while True:
            try:
                data, addr = await recv()
            except asyncio_dgram.TransportClosed:
                return
            self._take(data, addr[0])  # type: ignore[index]  # (host, port, ...) for IP
            # what else waits in the socket, read here (DRAIN_UP_TO); datagrams are not
            # ordered anyway, and the transport reads again once this task waits
            for _ in range(DRAIN_UP_TO):
                try:
                    data, addr = sock.recvfrom(_LARGEST_DATAGRAM)  # an oversized one whole
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break  # the transport sees it too, and reports it
                self._take(data, addr[0])

    def _take(self, data: bytes, source: str) -> None:
        intake = self._intake
        peer = self._admit(source)
        if peer is None:
            intake.on_drop(Dropped("sender_not_allowed", source, TRANSPORT, len(data)))
        elif len(data) > self.max_message_size:
            intake.on_drop(Dropped("oversized", peer, TRANSPORT, len(data)))
        else:
            self.received[peer] += 1
            intake.on_message(parse_syslog(data, peer=peer, received_at=time.time()), TRANSPORT)

    def take_received(self) -> Counter[str]:
        """The per-sender counts since the last call, and start again from zero."""
        taken = self.received.copy()
        self.received.clear()
        return taken

    async def stop(self) -> None:
        """Close the socket (datagrams the kernel still holds for it are lost with it)."""
        if self._stream is not None:
            self._stream.close()
            self._stream = self._sock = None
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
