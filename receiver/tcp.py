"""Syslog over TCP (RFC 6587, both framings), a thin asyncio adapter around Rfc6587Framer."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections import Counter
from collections.abc import Coroutine, Sequence
from typing import Any, cast

from .framing import CLOSED, NEED_DATA, FrameDropped, Rfc6587Framer, SyslogFrame
from .intake import Admit, Dropped, Intake
from .syslog import parse_syslog
from .tls import name_allowed

# A connection's unsent replies above this stop its reading until they drain below a quarter
# (asyncio's pause_writing/resume_writing), so a client that never reads cannot grow our memory.
WRITE_BUFFER_HIGH = 64 * 1024
HANDSHAKE_TIMEOUT = 10.0
# Frames a connection handles per pass of the event loop. One read can hold thousands, and a
# busy sender is read again at once: handled in one go, they would hold back the loop's timers
# (the nft commit a ban waits for) and the other connections. Past the budget, reading pauses
# and the rest is handled in later passes (~256 x 10 us: a few ms at a time).
FRAME_BUDGET = 256
# How long the connections of a listener a reload removed have to end well (RELP: its replies
# written, then `serverclose`; TCP: the client's own close after ours) before they are closed.
RETIRE_GRACE = 10.0


class StreamListener:
    """A TCP (or TLS) server whose connections are admitted, capped and timed out alike; what
    a connection does with its bytes is the `stream` class's business.

    TLS is started only after admission, on the accepted TCP connection (`loop.start_tls`): a
    sender that is not allowed or over a cap is reset before any handshake, and a pending
    handshake counts toward the caps and lasts at most `handshake_timeout` (or idle_timeout)."""

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
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        self.host, self.port = host, port
        self.admit, self.intake = admit, intake
        self._handshake_limit = handshake_timeout
        self.reconfigure(max_message_size=max_message_size, max_connections=max_connections,
                         max_connections_per_sender=max_connections_per_sender,
                         idle_timeout=idle_timeout, ssl_context=ssl_context,
                         allowed_names=allowed_names)
        self.transport_name = transport_name
        self.connections: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        """Messages delivered per sender address since the metrics last took them
        (`take_received`), added once per pass over a connection's frames."""
        self._open: set[AdmittedStream] = set()
        self._server: asyncio.Server | None = None
        self._emptied: asyncio.Future[None] | None = None  # retire() waits on it
        self.stopped = False
        """The daemon is stopping: frames still buffered are not handled any more."""

    stream: type[AdmittedStream]

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[:2]

    async def start(self) -> None:
        """Listen (again, after stop_accepting(): a reload that is undone re-opens it)."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._server = await asyncio.get_running_loop().create_server(
            lambda: self.stream(self), self.host, self.port, family=family,
            reuse_address=True, backlog=256,
        )

    def reconfigure(self, *, max_message_size: int, max_connections: int,
                    max_connections_per_sender: int, idle_timeout: float,
                    ssl_context: ssl.SSLContext | None, allowed_names: Sequence[str]) -> None:
        """A reload's settings. The caps and idle_timeout hold at once (an open connection over
        a lowered cap stays; one quiet past a shorter idle_timeout is closed at its next check);
        the message size, the TLS context (a certificate read again) and the names checked hold
        for the connections accepted from now on: open ones keep what they started with."""
        self.max_message_size = max_message_size
        self.max_connections = max_connections
        self.max_per_sender = max_connections_per_sender
        self.idle_timeout = idle_timeout
        self.handshake_timeout = min(idle_timeout, self._handshake_limit)
        self.ssl_context = ssl_context
        self.allowed_names = tuple(allowed_names)

    def stop_accepting(self) -> None:
        """Close the listening socket (its address is free once the loop has run a pass);
        open connections go on."""
        if self._server is not None:
            self._server.close()
            self._server = None

    async def retire(self, grace: float = RETIRE_GRACE) -> None:
        """A reload removed this listener: stop accepting now and let each open connection end
        well (AdmittedStream.retire); those still open after `grace` seconds end as in stop()."""
        self.stop_accepting()
        for stream in list(self._open):
            stream.retire()
        if self._open:
            self._emptied = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._emptied), grace)
            except TimeoutError:
                pass
        await self.stop()

    async def stop(self) -> None:
        self.stopped = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for stream in list(self._open):
            stream.shutdown()
        if server is not None:
            await server.wait_closed()

    def take_received(self) -> Counter[str]:
        """The per-sender counts since the last call, and start again from zero."""
        taken = self.received.copy()
        self.received.clear()
        return taken

    def drop(self, reason: str, peer: str, size: int = 0, detail: str = "") -> None:
        self.intake.on_drop(Dropped(reason, peer, self.transport_name, size, detail))

    def readmit(self) -> int:
        """Close the connections whose sender the admission check no longer allows (after a
        reload narrowed the senders); return how many."""
        gone = [s for s in self._open if s.peer is not None and self.admit(s.peer) is None]
        for stream in gone:
            assert stream.peer is not None
            self.drop("sender_not_allowed", stream.peer, detail="no longer a sender")
            stream.close()
        return len(gone)

    def refusal(self, peer: str | None) -> str | None:
        """Why a new connection from `peer` (None: not a sender) is refused, or None."""
        if peer is None:
            return "sender_not_allowed"
        if len(self._open) >= self.max_connections:
            return "too_many_connections"
        if self.connections[peer] >= self.max_per_sender:
            return "too_many_connections_from_sender"
        return None


class AdmittedStream(asyncio.Protocol):
    """Admission, caps, the TLS handshake, write backpressure, the idle timer and the frame
    budget; subclasses implement `received` (buffer bytes; b"" is EOF) and `drain` (handle
    buffered frames), and may override `gone`.

    A connection handles at most FRAME_BUDGET frames per pass of the event loop: past it,
    reading pauses ("backlog") and the rest is handled from `loop.call_soon`, reading resumes
    once no complete frame is left. Frames buffered when the peer ends the connection are all
    handled, in order, before `gone`."""

    def __init__(self, listener: StreamListener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        """Where the stream's bytes go: set once admitted (and, for TLS, its peer accepted)."""
        self.peer: str | None = None
        self.last_activity = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.pauses: set[str] = set()
        """Why reading is paused ("writing": replies are not being read, ...); empty: reading."""
        self._tcp: asyncio.Transport | None = None
        self._handshake: Coroutine[Any, Any, asyncio.BaseTransport | None] | None = None
        self._early: list[bytes] = []  # TLS bytes decrypted before the peer's names are checked
        self._backlog = False  # frames left over the budget: reading paused, a pass scheduled
        self._eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio subclasses
        lst = self.listener
        address = transport.get_extra_info("peername")[0]
        peer = lst.admit(address)
        reason = lst.refusal(peer)
        if reason is not None:
            lst.drop(reason, peer or address)
            transport.abort()
            return
        assert peer is not None
        self.peer = peer
        lst.connections[peer] += 1
        lst._open.add(self)
        loop = asyncio.get_running_loop()
        self.last_activity = loop.time()
        self.timer = loop.call_later(lst.idle_timeout, self._check_idle)
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        if lst.ssl_context is None:
            self.transport = transport
            return
        self._tcp = transport
        self._start_tls(lst.ssl_context)

    def _start_tls(self, context: ssl.SSLContext) -> None:
        """Hand the connection to the TLS protocol now. start_tls swaps the transport's protocol
        before its first await, and that must happen before the loop reads the ClientHello:
        both asyncio and uvloop start reading right after connection_made (whatever it paused),
        and a task would only start after that read. So the coroutine is stepped from here."""
        assert self._tcp is not None
        self._handshake = asyncio.get_running_loop().start_tls(
            self._tcp, self, context, server_side=True,
            ssl_handshake_timeout=self.listener.handshake_timeout)
        self._step_tls()

    def _step_tls(self) -> None:
        lst, peer, handshake = self.listener, self.peer, self._handshake
        assert peer is not None and handshake is not None
        try:
            waiting = handshake.send(None)
        except StopIteration as done:
            self._handshake = None
            tls = done.value  # None when the connection was closed meanwhile
        except OSError as exc:  # ssl.SSLError, a reset, or the handshake timeout
            self._handshake = None
            lst.drop("tls_handshake_failed", peer, detail=str(exc) or type(exc).__name__)
            self._release(exc)
            return
        else:
            waiting.add_done_callback(lambda _: self._step_tls())
            return
        if tls is None or tls.is_closing():
            self._release(None)
        elif not name_allowed(tls.get_extra_info("peercert"), lst.allowed_names):
            lst.drop("tls_peer_not_allowed", peer)
            tls.abort()
            self._release(None)
        else:
            self._accepted(tls)

    def _accepted(self, tls: asyncio.Transport) -> None:
        tls.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        self.transport = tls
        self.last_activity = asyncio.get_running_loop().time()
        early, self._early = self._early, []
        for data in early:
            if data:
                self.data_received(data)
            elif not self.eof_received():
                self.close()

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
        if self.transport is None:  # TLS: between the handshake and the check of its names
            if self._handshake is not None:
                self._early.append(data)
            return
        self.last_activity = asyncio.get_running_loop().time()
        self.received(data)
        if not self._backlog:  # else the scheduled pass handles it, in order
            self._handle()

    def eof_received(self) -> bool:
        if self.transport is None:
            if self._handshake is not None:
                self._early.append(b"")
                return True
            return False
        self._eof = True
        self.received(b"")
        if not self._backlog:
            self._handle()
        # frames left: keep the transport until they are handled, then close it (TLS cannot
        # keep it: connection_lost handles them)
        return self._backlog and self._tcp is None

    def received(self, data: bytes) -> None:
        """Buffer `data` (b"": EOF) without handling it."""
        raise NotImplementedError

    def drain(self, budget: int) -> bool:
        """Handle at most `budget` buffered frames; True when the budget ran out (frames may
        be left), False when no complete frame is left."""
        raise NotImplementedError

    # -- the frame budget ---------------------------------------------------------------------

    def _handle(self) -> None:
        if self.listener.stopped:
            return
        if self.drain(FRAME_BUDGET):
            if not self._backlog:
                self._backlog = True
                self.pause("backlog")
            asyncio.get_running_loop().call_soon(self._next_pass)
        elif self._backlog:
            self._backlog = False
            if self._eof:  # everything read before the EOF is handled
                self.pauses.discard("backlog")
                self.close()
            else:
                self.resume("backlog")

    def _next_pass(self) -> None:
        if not self._backlog:  # the connection was lost meanwhile (and its frames handled)
            return
        try:
            self._handle()
        except BaseException:  # as a failing data_received does: the connection ends
            self._backlog = False
            if self.transport is not None:
                self.transport.abort()
            raise

    # -- reading is paused while replies pile up ---------------------------------------------

    def pause(self, reason: str) -> None:
        if not self.pauses and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self.pauses.add(reason)

    def resume(self, reason: str) -> None:
        if reason not in self.pauses:
            return
        self.pauses.discard(reason)
        if not self.pauses and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.pause("writing")

    def resume_writing(self) -> None:
        self.resume("writing")

    # -- the end -----------------------------------------------------------------------------

    def shutdown(self) -> None:
        """The daemon is stopping (RELP says goodbye first)."""
        self.close()

    def retire(self) -> None:
        """The listener is going away (a reload removed it): end without losing what the client
        sent. Plain TCP: a FIN now (rsyslog's omfwd checks for it before each send and
        reconnects) while reading on until the client closes too; TLS cannot half-close and
        reads on until the client closes or the listener's grace ends; a pending handshake
        ends at once."""
        transport = self.transport
        if transport is None:
            self.close()
        elif not transport.is_closing() and transport.can_write_eof():
            transport.write_eof()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        elif self._handshake is not None and self._tcp is not None:
            self._tcp.abort()  # the handshake ends (see _step_tls)
            self._release(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._backlog:
            self._backlog = False
            if not self.listener.stopped:  # what was read before the end, all of it, in order
                while self.drain(FRAME_BUDGET):
                    pass
        self._release(exc)

    def _release(self, exc: Exception | None) -> None:
        """The connection is gone (or refused after admission): free its place, once."""
        if self.timer is not None:
            self.timer.cancel()
        lst = self.listener
        if self.peer is None or self not in lst._open:
            return
        lst._open.discard(self)
        lst.connections[self.peer] -= 1
        if not lst.connections[self.peer]:
            del lst.connections[self.peer]
        if not lst._open and lst._emptied is not None and not lst._emptied.done():
            lst._emptied.set_result(None)
        self.gone(exc)

    def gone(self, exc: Exception | None) -> None:
        """Called once when an admitted connection has ended, however it ended."""


class _SyslogStream(AdmittedStream):
    def __init__(self, listener: StreamListener) -> None:
        super().__init__(listener)
        self.framer = Rfc6587Framer(max_frame_size=listener.max_message_size)

    def received(self, data: bytes) -> None:
        self.framer.receive_data(data)

    def drain(self, budget: int) -> bool:
        framer, lst, peer = self.framer, self.listener, self.peer
        assert peer is not None
        received_at = time.time()
        name = lst.transport_name
        on_message = lst.intake.on_message
        delivered = 0
        try:
            for _ in range(budget):
                event = framer.next_event()
                if type(event) is SyslogFrame:
                    delivered += 1
                    on_message(parse_syslog(event.data, peer=peer, received_at=received_at), name)
                elif type(event) is FrameDropped:
                    lst.drop(event.reason, peer, event.size)
                elif event is NEED_DATA or event is CLOSED:
                    return False
            return True
        finally:
            if delivered:
                lst.received[peer] += delivered


class TcpListener(StreamListener):
    """Syslog over TCP (RFC 6587 framing), or over TLS (RFC 5425) with an ssl_context."""

    stream = _SyslogStream
