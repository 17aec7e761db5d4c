"""RFC 3164 and RFC 5424 syslog parsing as one pure function.

Accepts what rsyslog forwards by default (RSYSLOG_TraditionalForwardFormat, RSYSLOG_ForwardFormat,
RSYSLOG_SyslogProtocol23Format) and what util-linux `logger` sends. Timestamps are kept as the
text the sender wrote: counting windows use the receive time, so no hot-path date parsing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

MAX_RAW_IN_ERRORS = 200


@dataclass(frozen=True, slots=True)
class SyslogMessage:
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


@dataclass(frozen=True, slots=True)
class MalformedSyslog:
    reason: str
    raw: bytes
    peer: str


_PRI = re.compile(rb"<(\d{1,3})>")

_RFC3339 = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:\d\d)"

_RFC5424 = re.compile(
    r"1 (?P<ts>-|" + _RFC3339 + r") (?P<host>\S{1,255}) (?P<app>\S{1,48}) (?P<pid>\S{1,128})"
    r" (?P<msgid>\S{1,32}) (?P<sd>-|(?:\[(?:[^\]\\]|\\.)*\])+)(?: (?P<msg>.*))?",
    re.DOTALL,
)

# TAG is what rsyslog's %syslogtag% carries: a name, an optional [pid], an optional colon.
_RFC3164 = re.compile(
    r"(?P<ts>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d|" + _RFC3339 + r") +"
    r"(?:(?P<host>[^ :\[\]]{1,255}|[0-9A-Fa-f.]*:[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*) )?"
    r"(?P<tag>[^ :\[\]]{1,48})(?:\[(?P<pid>[^\]\s]{0,32})\])?:? ?(?P<msg>.*)",
    re.DOTALL,
)

_ESCAPED_CONTROL = re.compile(r"#([0-3][0-7]{2})")


def _unescape_control(text: str) -> str:
    """Undo rsyslog's `#012`-style escaping of control characters (octal 000-037)."""
    if "#" not in text:
        return text
    return _ESCAPED_CONTROL.sub(lambda m: chr(int(m.group(1), 8)), text)


def _dash_none(value: str | None) -> str | None:
    return None if value is None or value == "-" else value


def parse_syslog(raw: bytes, *, peer: str, received_at: float) -> SyslogMessage | MalformedSyslog:
    """Parse one syslog message (one UDP datagram or one TCP/RELP frame).

    Returns MalformedSyslog (never raises) for input that is not syslog.
    """
    pri = _PRI.match(raw)
    if pri is None:
        return MalformedSyslog("no <PRI> at start", raw[:MAX_RAW_IN_ERRORS], peer)
    value = int(pri.group(1))
    if value > 191:
        return MalformedSyslog(f"PRI {value} out of range", raw[:MAX_RAW_IN_ERRORS], peer)
    text = raw[pri.end() :].decode("utf-8", "replace").rstrip("\r\n\x00")
    facility, severity = divmod(value, 8)
    if text.startswith("1 "):
        m = _RFC5424.fullmatch(text)
        if m is None:
            return MalformedSyslog("bad RFC 5424 header", raw[:MAX_RAW_IN_ERRORS], peer)
        msg = m.group("msg") or ""
        if msg.startswith("\ufeff"):
            msg = msg[1:]
        return SyslogMessage(
            facility=facility,
            severity=severity,
            format="rfc5424",
            timestamp=_dash_none(m.group("ts")),
            hostname=_dash_none(m.group("host")),
            app_name=_dash_none(m.group("app")),
            procid=_dash_none(m.group("pid")),
            msgid=_dash_none(m.group("msgid")),
            structured_data=_dash_none(m.group("sd")),
            # RSYSLOG_SyslogProtocol23Format keeps an RFC 3164 message's leading space
            msg=_unescape_control(msg.lstrip(" ")),
            peer=peer,
            received_at=received_at,
        )
    m = _RFC3164.fullmatch(text)
    if m is None:
        return MalformedSyslog("bad RFC 3164 header", raw[:MAX_RAW_IN_ERRORS], peer)
    return SyslogMessage(
        facility=facility,
        severity=severity,
        format="rfc3164",
        timestamp=m.group("ts"),
        hostname=m.group("host"),
        app_name=m.group("tag"),
        procid=m.group("pid") or None,
        msgid=None,
        structured_data=None,
        msg=_unescape_control(m.group("msg")),
        peer=peer,
        received_at=received_at,
    )
