"""RELP (librelp's doc/relp.md) server side as a sans-I/O state machine, h11-style.

    session = RelpSession()
    session.receive_data(chunk)                      # b"" means EOF
    while (event := session.next_event()) is not NEED_DATA: ...
    session.ack(txnr)                                # a RelpSyslog is durable: answer 200 OK
    transport.write(session.data_to_send())

Frames are `TXNR SP COMMAND SP DATALEN [SP DATA] LF`. Where librelp differs from the text,
librelp wins (checked against rsyslog's omrelp): it offers and expects `relp_version=0`, pipelines
up to its window of unacknowledged frames, and after a reconnect resends every unacknowledged
frame in a new session. Replies must go out in the order commands came in, so answers wait in
an outbox until every earlier `syslog` frame has been acknowledged.

Errors: a frame that cannot be delimited (bad TXNR, command or DATALEN, a missing trailer, a
DATALEN over `max_frame_size`) raises RelpProtocolError from next_event; the session is then in
ERROR and `data_to_send()` holds a last 500 reply when a TXNR was readable. Commands that are
well framed but wrong (syslog before open, an unknown command, a TXNR out of sequence) come out
as RelpRejected and are answered 500; out-of-sequence and not-open also end the session.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Final, NamedTuple, NoReturn

from .framing import CLOSED, NEED_DATA, _Sentinel

MAX_TXNR = 999_999_999
DEFAULT_MAX_FRAME_SIZE = 128 * 1024  # librelp's RELP_DFLT_MAX_DATA_SIZE
RELP_VERSION = "0"  # what librelp speaks; it refuses a server offering a higher one (10025)

_HEADER = re.compile(rb"([0-9]{1,9}) ([A-Za-z]{1,32}) ([0-9]{1,9})")
# what a header looks like while still incomplete: used to tell NEED_DATA from garbage
_HEADER_PREFIX = re.compile(rb"[0-9]{0,9}(?: (?:[A-Za-z]{0,32}(?: [0-9]{0,9})?)?)?")
_MAX_HEADER = 9 + 1 + 32 + 1 + 9 + 1


@dataclass(frozen=True, slots=True)
class RelpOpen:
    txnr: int
    offers: dict[str, str]


class RelpSyslog(NamedTuple):
    """One per message: a NamedTuple, cheap to build (see syslog.SyslogMessage)."""

    txnr: int
    message: bytes


@dataclass(frozen=True, slots=True)
class RelpClose:
    txnr: int


@dataclass(frozen=True, slots=True)
class RelpRejected:
    """A well-framed command that was refused with a 500 reply."""

    txnr: int
    command: str
    reason: str


RelpEvent = RelpOpen | RelpSyslog | RelpClose | RelpRejected | _Sentinel


class RelpProtocolError(Exception):
    """The byte stream cannot be delimited into frames any more: close the connection."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class State(Enum):
    AWAIT_OPEN = "await_open"
    OPEN = "open"
    CLOSED = "closed"
    ERROR = "error"


_WAITING: Final = None  # outbox slot of a syslog frame not yet acknowledged


def rsp_frame(txnr: int, data: bytes) -> bytes:
    return b"%d rsp %d %s\n" % (txnr, len(data), data)


SERVERCLOSE: Final = b"0 serverclose 0\n"


class RelpSession:
    def __init__(self, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
                 software: str = "bansink,-,-") -> None:
        self.max_frame_size = max_frame_size
        self.software = software
        self.state = State.AWAIT_OPEN
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self._last_txnr = 0
        self._outbox: deque[tuple[int, bytes | None]] = deque()
        self._acked: set[int] = set()
        self._serverclose = False  # retire(): owed once every reply has gone out

    # -- input -------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if self.state is State.CLOSED or self.state is State.ERROR:
            # nothing more will be read: drop input (and what was left) so memory stays bounded
            self._buf.clear()
            self._pos = 0
            return
        if not data:
            self._eof = True
            return
        if self._pos and self._pos >= len(self._buf) // 2:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_event(self) -> RelpEvent:
        if self.state in (State.CLOSED, State.ERROR):
            return CLOSED
        buf, pos = self._buf, self._pos
        end = len(buf)
        if pos >= end:
            return CLOSED if self._eof else NEED_DATA
        header = _HEADER.match(buf, pos)
        if header is None or header.end() >= end:
            available = bytes(buf[pos : min(end, pos + _MAX_HEADER)])
            if _HEADER_PREFIX.fullmatch(available) and end - pos < _MAX_HEADER:
                if self._eof:
                    return self._fail("frame truncated at EOF", available)
                return NEED_DATA
            return self._fail("malformed frame header", available)
        txnr, command, datalen = int(header[1]), header[2].decode(), int(header[3])
        if datalen > self.max_frame_size:
            return self._fail(f"DATALEN {datalen} over the maximum {self.max_frame_size}", txnr)
        after = header.end()
        if datalen == 0:
            if buf[after] != 0x0A:
                return self._fail("missing LF trailer", txnr)
            data, frame_end = b"", after + 1
        else:
            if buf[after] != 0x20:
                return self._fail("missing SP before DATA", txnr)
            frame_end = after + 1 + datalen + 1
            if end < frame_end:
                if self._eof:
                    return self._fail("frame truncated at EOF", txnr)
                return NEED_DATA
            if buf[frame_end - 1] != 0x0A:
                return self._fail("DATALEN does not match the data (no LF trailer)", txnr)
            data = bytes(buf[after + 1 : frame_end - 1])
        self._pos = frame_end
        return self._command(txnr, command, data)

    def _fail(self, reason: str, context: int | bytes) -> NoReturn:
        self.state = State.ERROR
        if isinstance(context, int) and context > 0:
            self._outbox.append((context, b"500 " + reason.encode()))
        raise RelpProtocolError(reason)

    def _command(self, txnr: int, command: str, data: bytes) -> RelpEvent:
        expected = 1 if self._last_txnr in (0, MAX_TXNR) else self._last_txnr + 1
        if txnr != expected:
            return self._reject(txnr, command, f"txnr {txnr} out of sequence (expected "
                                               f"{expected})", close=True)
        self._last_txnr = txnr
        if command == "open":
            if self.state is State.OPEN:
                return self._reject(txnr, command, "protocol error: connection already open")
            offers = _parse_offers(data)
            if "relp_version" not in offers:
                return self._reject(txnr, command, "no relp_version offered", close=True)
            if "syslog" not in offers.get("commands", "").split(","):
                return self._reject(txnr, command, "required command not supported by client",
                                    close=True)
            self.state = State.OPEN
            reply = (f"200 OK\nrelp_version={RELP_VERSION}\nrelp_software={self.software}\n"
                     f"commands=syslog").encode()
            self._outbox.append((txnr, reply))
            return RelpOpen(txnr, offers)
        if self.state is not State.OPEN:
            return self._reject(txnr, command, "session not open", close=True)
        if command == "syslog":
            self._outbox.append((txnr, _WAITING))
            return RelpSyslog(txnr, data)
        if command == "close":
            self.state = State.CLOSED
            self._outbox.append((txnr, b"200 OK"))
            return RelpClose(txnr)
        return self._reject(txnr, command, "command not supported")

    def _reject(self, txnr: int, command: str, reason: str, *, close: bool = False) -> RelpEvent:
        self._outbox.append((txnr, b"500 " + reason.encode()))
        if close:
            self.state = State.CLOSED
        return RelpRejected(txnr, command, reason)

    def retire(self) -> None:
        """This server is going away: nothing more is read (frames received and not yet
        returned by next_event are dropped unanswered, so the client resends them); the replies
        owed go out as they are acknowledged, and after the last one data_to_send() adds
        `serverclose` (an open session only). The session is then finished."""
        if self.state is State.OPEN:
            self._serverclose = True
        if self.state is not State.ERROR:
            self.state = State.CLOSED
        self._buf.clear()
        self._pos = 0

    # -- output ------------------------------------------------------------------------------

    def ack(self, txnr: int) -> None:
        """The RelpSyslog with this txnr is durable: it may be answered 200 OK."""
        self._acked.add(txnr)

    def data_to_send(self) -> bytes:
        """Replies that may go out now: every reply up to the first unacknowledged syslog."""
        out = []
        outbox, acked = self._outbox, self._acked
        while outbox:
            txnr, reply = outbox[0]
            if reply is _WAITING:
                if txnr not in acked:
                    break
                acked.discard(txnr)
                reply = b"200 OK"
            outbox.popleft()
            out.append(rsp_frame(txnr, reply))
        if self._serverclose and not outbox:
            self._serverclose = False
            out.append(SERVERCLOSE)
        return b"".join(out)

    @property
    def unanswered(self) -> int:
        """Commands received and not yet answered (syslog frames waiting for durability)."""
        return len(self._outbox)

    @property
    def finished(self) -> bool:
        """No more input will be read: close the connection once data_to_send() is flushed."""
        return self.state in (State.CLOSED, State.ERROR)


def _parse_offers(data: bytes) -> dict[str, str]:
    """`name[=value]` lines (librelp writes them LF-separated, without the spec's leading LF)."""
    offers = {}
    for line in data.decode("utf-8", "replace").split("\n"):
        name, _, value = line.strip().partition("=")
        if name:
            offers[name] = value
    return offers


__all__ = ["CLOSED", "NEED_DATA", "SERVERCLOSE", "RelpClose", "RelpOpen", "RelpProtocolError",
           "RelpRejected", "RelpSession", "RelpSyslog", "State", "rsp_frame"]
