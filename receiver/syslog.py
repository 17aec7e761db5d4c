"""RFC 3164 and RFC 5424 syslog parsing as one pure function.

Accepts what rsyslog forwards by default (RSYSLOG_TraditionalForwardFormat, RSYSLOG_ForwardFormat,
RSYSLOG_SyslogProtocol23Format) and what util-linux `logger` sends. Timestamps are kept as the
text the sender wrote: counting windows use the receive time, so no hot-path date parsing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, NamedTuple

MAX_RAW_IN_ERRORS = 200


class SyslogMessage(NamedTuple):
    """One parsed message. A NamedTuple, not a frozen dataclass: equally immutable, and built
    2.7x faster (0.44 vs 1.17 us for 12 fields), which counts once per message."""

    facility: int
    severity: int
    format: Literal["rfc3164", "rfc5424"]
    timestamp: str | None
    """The header's timestamp as sent (RFC 3164 `Mmm dd hh:mm:ss` or RFC 3339), or None."""
    hostname: str | None
    app_name: str | None
    """RFC 5424 APP-NAME, or the RFC 3164 TAG without its `[pid]`."""
    procid: str | None
    msgid: str | None
    structured_data: str | None
    msg: str
    """The free-text part, with rsyslog's `#ooo` control-character escapes undone."""
    peer: str
    """The address the bytes came from (the transport's peer), not anything the text claims."""
    received_at: float
    """Wall-clock receive time, seconds since the epoch."""
    raw: bytes
    """The message as received (for the journal and audit)."""


@dataclass(frozen=True, slots=True)
class MalformedSyslog:
    reason: str
    raw: bytes
    peer: str


_RFC3339 = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:\d\d)"

# matched from just after "<PRI>"
_RFC5424 = re.compile(
    r"1 (-|" + _RFC3339 + r") (\S{1,255}) (\S{1,48}) (\S{1,128}) (\S{1,32})"
    r" (-|(?:\[(?:[^\]\\]|\\.)*\])+)(?: (.*))?",
    re.DOTALL,
)

# TAG is what rsyslog's %syslogtag% carries: a name, an optional [pid], an optional colon.
# The host may be an IPv6 literal (two or more colons), which rsyslog uses for unnamed senders.
_RFC3164 = re.compile(
    r"([A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d|" + _RFC3339 + r") +"
    r"(?:([^ :\[\]]{1,255}|[0-9A-Fa-f.]*:[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*) )?"
    r"([^ :\[\]]{1,48})(?:\[([^\]\s]{0,32})\])?:? ?(.*)",
    re.DOTALL,
)

# rsyslog escapes control characters only (bytes 0x00-0x1F and 0x7F, `$EscapeControlCharacters
# OnReceive`): a `#042` in a message is text the sender wrote, and decoding it would forge a
# character (a double quote after the application replaced every one) that was never sent.
_ESCAPED_CONTROL = re.compile(r"#(0[0-3][0-7]|177)")


def _unescape_control(text: str) -> str:
    """Undo rsyslog's `#012`-style escaping of control characters (octal 000-037 and 177)."""
    return _ESCAPED_CONTROL.sub(lambda m: chr(int(m.group(1), 8)), text)


def _dash_none(value: str | None) -> str | None:
    return None if value == "-" else value


def _malformed(reason: str, raw: bytes, peer: str) -> MalformedSyslog:
    return MalformedSyslog(reason, raw[:MAX_RAW_IN_ERRORS], peer)


def parse_syslog(raw: bytes, *, peer: str, received_at: float) -> SyslogMessage | MalformedSyslog:
    """Parse one syslog message (one UDP datagram or one TCP/RELP frame).

    Returns MalformedSyslog (never raises) for input that is not syslog. Written for speed: it
    runs once per message.
    """
    text = raw.decode("utf-8", "replace").rstrip("\r\n\x00")
    gt = text.find(">", 1, 5)
    if gt < 0 or text[0] != "<" or not text[1:gt].isdigit() or not text[1:gt].isascii():
        return _malformed("no <PRI> at start", raw, peer)
    value = int(text[1:gt])
    if value > 191:
        return _malformed(f"PRI {value} out of range", raw, peer)
    facility, severity = divmod(value, 8)
    if text.startswith("1 ", gt + 1):
        m = _RFC5424.fullmatch(text, gt + 1)
        if m is None:
            return _malformed("bad RFC 5424 header", raw, peer)
        ts, host, app, procid, msgid, sd, msg = m.groups()
        if msg is None:
            msg = ""
        elif msg.startswith("\ufeff"):
            msg = msg[1:]
        # RSYSLOG_SyslogProtocol23Format keeps an RFC 3164 message's leading space
        msg = msg.lstrip(" ")
        return SyslogMessage(
            facility, severity, "rfc5424", _dash_none(ts), _dash_none(host), _dash_none(app),
            _dash_none(procid), _dash_none(msgid), _dash_none(sd),
            _unescape_control(msg) if "#" in msg else msg, peer, received_at, raw,
        )
    m = _RFC3164.fullmatch(text, gt + 1)
    if m is None:
        return _malformed("bad RFC 3164 header", raw, peer)
    ts, host, tag, procid, msg = m.groups()
    return SyslogMessage(
        facility, severity, "rfc3164", ts, host, tag, procid or None, None, None,
        _unescape_control(msg) if "#" in msg else msg, peer, received_at, raw,
    )
