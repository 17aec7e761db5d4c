"""RELP over TCP (or TLS from the first byte, as rsyslog's `tls="on"` speaks it): a thin asyncio
adapter around RelpSession. A syslog frame is answered only when the intake says it is durable."""

from __future__ import annotations

import asyncio
import itertools
import time
from functools import partial
from importlib import metadata

from .relp import (
    CLOSED,
    NEED_DATA,
    SERVERCLOSE,
    RelpClose,
    RelpOpen,
    RelpProtocolError,
    RelpRejected,
    RelpSession,
    RelpSyslog,
)
from .syslog import parse_syslog
from .tcp import AdmittedStream, StreamListener

# Unanswered frames per connection before reading pauses (omrelp's window is 128 by default).
MAX_UNANSWERED = 1024
_session_ids = itertools.count(1)


def _software() -> str:
    """The relp_software offer: name, version, URL (librelp's form)."""
    try:
        return f"bansink,{metadata.version('bansink')},-"
    except metadata.PackageNotFoundError:  # a plain checkout
        return "bansink,-,-"


SOFTWARE = _software()


class _RelpStream(AdmittedStream):
    def __init__(self, listener: StreamListener) -> None:
        super().__init__(listener)
        self.session = RelpSession(max_frame_size=listener.max_message_size, software=SOFTWARE)
        self.session_id = next(_session_ids)
        self.started = False  # the intake was told relp_session_started
        self.close_received = False
        self.all_replied = False  # closed by us once every reply was written
        self.flush_scheduled = False
        self.retiring = False  # retire(): the session ends with serverclose
        self.goodbye = False  # serverclose written (and our side shut, where TCP allows)

    def received(self, data: bytes) -> None:
        self.session.receive_data(data)

    def drain(self, budget: int) -> bool:
        lst, peer, session = self.listener, self.peer, self.session
        assert peer is not None
        received_at = time.time()
        more = True
        delivered = 0
        try:
            for _ in range(budget):
                event = session.next_event()
                if event is NEED_DATA or event is CLOSED:
                    more = False
                    break
                if type(event) is RelpSyslog:
                    delivered += 1
                    message = parse_syslog(event.message, peer=peer, received_at=received_at)
                    lst.intake.on_reliable_message(message, lst.transport_name,
                                                   partial(self._durable, event.txnr),
                                                   session=self.session_id)
                elif type(event) is RelpRejected:
                    lst.drop("relp_rejected", peer, detail=f"{event.command}: {event.reason}")
                elif type(event) is RelpOpen:
                    self.started = True
                    lst.intake.relp_session_started(self.session_id, peer)
                elif type(event) is RelpClose:
                    self.close_received = True
        except RelpProtocolError as exc:
            lst.drop("relp_framing_error", peer, detail=exc.reason)
            more = False
        finally:
            if delivered:
                lst.received[peer] += delivered
        self._flush()
        if session.unanswered > MAX_UNANSWERED:
            self.pause("unanswered")
        return more

    def _durable(self, txnr: int) -> None:
        self.session.ack(txnr)
        if not self.flush_scheduled:  # one write for all the acks of a journal commit
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_acks)

    def _flush_acks(self) -> None:
        self.flush_scheduled = False
        self._flush()
        if self.session.unanswered <= MAX_UNANSWERED // 2:
            self.resume("unanswered")

    def _flush(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        data = self.session.data_to_send()
        if data:
            transport.write(data)  # over WRITE_BUFFER_HIGH unsent, pause_writing stops reading
        if self.session.finished and self.session.unanswered == 0 and not self.goodbye:
            self.all_replied = True
            if self.retiring and transport.can_write_eof():
                # librelp closes on serverclose; until it does, what it sent is read and
                # dropped: closing with unread input would reset the connection, and a reset
                # may discard the last replies before the client reads them
                self.goodbye = True
                transport.write_eof()
            else:
                transport.close()

    def retire(self) -> None:
        """The listener is going away (a reload removed it): every frame handled so far is
        answered once durable, then `serverclose`; frames not handled yet are never answered,
        so omrelp resends them on its next session (here or to another listener)."""
        if self.transport is None:  # a TLS handshake not finished
            self.close()
            return
        self.retiring = True
        self.session.retire()
        self._flush()

    def shutdown(self) -> None:
        """Tell the client this server is going: it resends what is unanswered elsewhere/later."""
        transport = self.transport
        if transport is not None and not transport.is_closing() and not self.goodbye:
            self.goodbye = True
            data = self.session.data_to_send()
            transport.write(data if data.endswith(SERVERCLOSE) else data + SERVERCLOSE)
        self.close()

    def gone(self, exc: Exception | None) -> None:
        if self.started:
            assert self.peer is not None
            clean = self.close_received and self.all_replied and exc is None
            self.listener.intake.relp_session_ended(self.session_id, self.peer, clean)


class RelpListener(StreamListener):
    stream = _RelpStream

    def unanswered(self) -> int:
        """Frames received and not answered yet (most wait for their journal commit), over
        every open session."""
        return sum(s.session.unanswered for s in self._open if isinstance(s, _RelpStream))
