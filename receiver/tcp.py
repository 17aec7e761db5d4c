"""Syslog over TCP (RFC 6587, both framings), a thin asyncio adapter around Rfc6587Framer."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections import Counter
from collections.abc import Sequence
from typing import cast

from .framing import CLOSED, NEED_DATA, FrameDropped, Rfc6587Framer, SyslogFrame
from .intake import Admit, Dropped, Intake
from .syslog import parse_syslog
from .tls import name_allowed


class StreamListener:
    """A TCP (or TLS) server whose connections are admitted, capped and timed out alike; what
    a connection does with its bytes is the `stream` class's business."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        admit: Admit,
        intake: Intake,
        max_message_size: int,
        max_connections: int,
        max_connections_per_sender: int,
        idle_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
        allowed_names: Sequence[str] = (),
        transport_name: str = "tcp",
    ) -> None:
        self.host, self.port = host, port
        self.allowed_names = tuple(allowed_names)
        self.admit, self.intake = admit, intake
        self.max_message_size = max_message_size
        self.max_connections = max_connections
        self.max_per_sender = max_connections_per_sender
        self.idle_timeout = idle_timeout
        self.transport_name = transport_name
        self._ssl = ssl_context
        self.connections: Counter[str] = Counter()
        self._open: set[AdmittedStream] = set()
        self._server: asyncio.Server | None = None

    stream: type[AdmittedStream]

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[:2]

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._server = await asyncio.get_running_loop().create_server(
            lambda: self.stream(self), self.host, self.port, family=family,
            reuse_address=True, ssl=self._ssl, backlog=256,
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for stream in list(self._open):
            stream.shutdown()
        if self._server is not None:
            await self._server.wait_closed()

    def drop(self, reason: str, peer: str, size: int = 0, detail: str = "") -> None:
        self.intake.on_drop(Dropped(reason, peer, self.transport_name, size, detail))


class AdmittedStream(asyncio.Protocol):
    """Admission, caps and the idle timer; subclasses implement `received` and `ended`."""

    def __init__(self, listener: StreamListener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.peer: str | None = None
        self.last_activity = 0.0
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio subclasses
        lst = self.listener
        address = transport.get_extra_info("peername")[0]
        peer = lst.admit(address)
        if peer is None:
            reason = "sender_not_allowed"
        elif sum(lst.connections.values()) >= lst.max_connections:
            reason = "too_many_connections"
        elif lst.connections[peer] >= lst.max_per_sender:
            reason = "too_many_connections_from_sender"
        elif not name_allowed(transport.get_extra_info("peercert"), lst.allowed_names):
            reason = "tls_peer_not_allowed"
        else:
            reason = None
        if reason is not None:
            lst.drop(reason, peer or address)
            transport.abort()
            return
        assert peer is not None
        self.transport, self.peer = transport, peer
        lst.connections[peer] += 1
        lst._open.add(self)
        loop = asyncio.get_running_loop()
        self.last_activity = loop.time()
        self.timer = loop.call_later(lst.idle_timeout, self._check_idle)

    def _check_idle(self) -> None:
        loop = asyncio.get_running_loop()
        left = self.last_activity + self.listener.idle_timeout - loop.time()
        if left > 0:
            self.timer = loop.call_later(left, self._check_idle)
            return
        assert self.peer is not None
        self.listener.drop("idle_timeout", self.peer)
        self.close()

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            return
        self.last_activity = asyncio.get_running_loop().time()
        self.received(data)

    def eof_received(self) -> bool:
        if self.peer is not None:
            self.ended()
        return False

    def received(self, data: bytes) -> None:
        raise NotImplementedError

    def ended(self) -> None:
        raise NotImplementedError

    def shutdown(self) -> None:
        """The daemon is stopping (RELP says goodbye first)."""
        self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.peer is not None and self in self.listener._open:
            self.listener._open.discard(self)
            self.listener.connections[self.peer] -= 1
            if not self.listener.connections[self.peer]:
                del self.listener.connections[self.peer]


class _SyslogStream(AdmittedStream):
    def __init__(self, listener: StreamListener) -> None:
        super().__init__(listener)
        self.framer = Rfc6587Framer(max_frame_size=listener.max_message_size)

    def received(self, data: bytes) -> None:
        self.framer.receive_data(data)
        self._drain()

    def ended(self) -> None:
        self.framer.receive_data(b"")
        self._drain()

    def _drain(self) -> None:
        framer, lst, peer = self.framer, self.listener, self.peer
        assert peer is not None
        received_at = time.time()
        name = lst.transport_name
        on_message = lst.intake.on_message
        while True:
            event = framer.next_event()
            if type(event) is SyslogFrame:
                on_message(parse_syslog(event.data, peer=peer, received_at=received_at), name)
            elif type(event) is FrameDropped:
                lst.drop(event.reason, peer, event.size)
            elif event is NEED_DATA or event is CLOSED:
                return


class TcpListener(StreamListener):
    """Syslog over TCP (RFC 6587 framing), or over TLS (RFC 5425) with an ssl_context."""

    stream = _SyslogStream
