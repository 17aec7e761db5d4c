"""RFC 6587 syslog-over-TCP framing as a sans-I/O state machine (h11-style).

    framer = Rfc6587Framer(max_frame_size=8192)
    framer.receive_data(chunk)          # b"" means EOF
    while (event := framer.next_event()) is not NEED_DATA: ...

Octet-counting (`MSG-LEN SP SYSLOG-MSG`) and LF-terminated framing are told apart per frame the
way rsyslog's imtcp does: a frame that starts with a digit run followed by SP is octet-counted,
anything else runs to the next LF. rsyslog's templates end in LF *inside* the counted octets, so
one trailing LF is stripped from counted frames.

Nothing here raises on hostile input: an oversized or truncated frame becomes a FrameDropped
event and the framer resynchronises (after the counted octets, or at the next LF).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class SyslogFrame:
    data: bytes


@dataclass(frozen=True, slots=True)
class FrameDropped:
    reason: str
    size: int
    """Octets discarded (for an oversized frame: as many as were announced or seen)."""


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA: Final = _Sentinel("NEED_DATA")
"""More bytes are needed before the next event."""
CLOSED: Final = _Sentinel("CLOSED")
"""EOF was received and every buffered byte has been turned into events."""

FramerEvent = SyslogFrame | FrameDropped | _Sentinel

_COUNT = re.compile(rb"[0-9]{1,10}")
_DIGITS = frozenset(b"0123456789")


class Rfc6587Framer:
    def __init__(self, *, max_frame_size: int = 65536) -> None:
        if max_frame_size < 1:
            raise ValueError("max_frame_size must be positive")
        self.max_frame_size = max_frame_size
        self._buf = bytearray()
        self._pos = 0  # start of the unconsumed bytes in _buf
        self._lf_searched = 0  # LF search resumes here (absolute index), keeps scanning O(n)
        self._skip = 0  # octets still to discard from an oversized counted frame
        self._skip_to_lf = False  # discarding an oversized LF frame up to its LF
        self._discarded = 0  # octets of that frame discarded so far
        self._eof = False

    @property
    def trailing_data(self) -> bytes:
        """Buffered bytes not yet turned into events."""
        return bytes(self._buf[self._pos :])

    def receive_data(self, data: bytes) -> None:
        if not data:
            self._eof = True
            return
        if self._eof:
            raise RuntimeError("receive_data after EOF")
        if self._pos and self._pos >= len(self._buf) // 2:
            del self._buf[: self._pos]
            self._lf_searched = max(0, self._lf_searched - self._pos)
            self._pos = 0
        self._buf += data

    def next_event(self) -> FramerEvent:
        while True:
            buf, pos = self._buf, self._pos
            end = len(buf)
            if self._skip:
                take = min(self._skip, end - pos)
                self._skip -= take
                self._pos = pos + take
                if self._skip:
                    return CLOSED if self._eof else NEED_DATA
                continue
            if self._skip_to_lf:
                lf = buf.find(b"\n", pos)
                if lf < 0:
                    self._discarded += end - pos
                    self._pos = end
                    if not self._eof:
                        return NEED_DATA
                else:
                    self._discarded += lf - pos
                    self._pos = lf + 1
                self._skip_to_lf = False
                return FrameDropped("oversized", self._discarded)
            if pos >= end:
                return CLOSED if self._eof else NEED_DATA
            if buf[pos] in _DIGITS:
                event = self._maybe_octet_counted(buf, pos, end)
                if event is not None:
                    return event
            event = self._maybe_lf_terminated(buf, pos, end)
            if event is None:
                return NEED_DATA
            if event is _SKIP:
                continue
            return event

    def _maybe_octet_counted(self, buf: bytearray, pos: int, end: int) -> FramerEvent | None:
        """Return a frame, a drop, NEED_DATA, or None when this is not a counted frame."""
        digits = _COUNT.match(buf, pos)
        assert digits is not None  # the caller saw a digit at pos
        digits_end = digits.end()
        if digits_end >= end:
            return None if self._eof else NEED_DATA
        if buf[digits_end] != 0x20:  # not `MSG-LEN SP`: an LF frame that starts with a digit
            return None
        count = int(buf[pos:digits_end])
        start = digits_end + 1
        if count == 0:
            self._pos = start
            return FrameDropped("empty octet-counted frame", 0)
        if count > self.max_frame_size:
            self._pos = start
            self._skip = count
            return FrameDropped("oversized", count)
        if end - start < count:
            if self._eof:
                self._pos = end
                return FrameDropped("truncated at EOF", end - pos)
            return NEED_DATA
        stop = start + count
        self._pos = stop
        if buf[stop - 1] == 0x0A:
            stop -= 1
            if stop == start:
                return FrameDropped("empty octet-counted frame", count)
        return SyslogFrame(bytes(buf[start:stop]))

    def _maybe_lf_terminated(self, buf: bytearray, pos: int, end: int) -> FramerEvent | None:
        lf = buf.find(b"\n", max(pos, self._lf_searched))
        if lf < 0:
            self._lf_searched = end
            if end - pos > self.max_frame_size + 1:  # + 1: room for a CR before the LF
                self._pos = end
                self._skip_to_lf = True
                self._discarded = end - pos
                return _SKIP  # FrameDropped comes when the LF (or EOF) ends the frame
            if self._eof:  # the last frame of a stream may lack its LF
                self._pos = end
                if end - pos > self.max_frame_size:
                    return FrameDropped("oversized", end - pos)
                return SyslogFrame(bytes(buf[pos:end]))
            return None
        self._pos = lf + 1
        stop = lf - 1 if lf > pos and buf[lf - 1] == 0x0D else lf
        if stop == pos:
            return _SKIP  # blank line between frames
        if stop - pos > self.max_frame_size:
            return FrameDropped("oversized", lf - pos)
        return SyslogFrame(bytes(buf[pos:stop]))


_SKIP: Final = _Sentinel("_SKIP")
