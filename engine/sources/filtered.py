"""A fail2ban-syntax filter as a source: the filter reads the line a syslog daemon would have
written to a log file, and its failure becomes a security event.

Which line the filter sees (`line`):
- "syslog": the traditional file line, `Mmm dd hh:mm:ss HOST TAG[PID]: MSG`, as rsyslog writes
  /var/log/mail.log: the filters built on fail2ban's common.conf expect it. The header's date
  is the one fail2ban would cut out first, so it is left out from the start (`match_text`).
- "message": the message text alone, as the application wrote it to its own file and rsyslog's
  imfile (or the application's syslog appender) forwarded it: Apache's error log for Kopano,
  log4j2's file for James, Kerio's external log with its own `[dd/Mon/yyyy hh:mm:ss]`.

The event's time is the receive time (the daemon's clock): a date inside the line is only read
by `bansink test`, which replays a file by its own times. A host name is never resolved: the
event carries it, and the pipeline ignores it as unresolvable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from bansink.receiver.syslog import SyslogMessage

from ..events import NOT_MATCHED, EventKind, NotMatched, SecurityEvent
from ..filters.filter import Failure, Filter

LineForm = Literal["syslog", "message"]
_DATES_CUT_FIRST = (None, "{^LN-BEG}")
"""datepatterns that find the line's leading date: the syslog form may skip the search."""


def syslog_line(message: SyslogMessage) -> str:
    """The file line's text after its date: ` HOST TAG[PID]: MSG`."""
    host, tag, msg = message.hostname, message.app_name, message.msg
    if tag:
        if message.procid:
            tag = f"{tag}[{message.procid}]"
        return f" {host} {tag}: {msg}" if host else f" {tag}: {msg}"
    return f" {host} {msg}" if host else f" {msg}"


@dataclass(frozen=True, slots=True)
class FilterSource:
    name: str
    filter: Filter
    line: LineForm = "syslog"
    tags: frozenset[str] | None = None
    """The syslog APP-NAMEs (RFC 3164 tags) whose messages this source reads; None: all."""
    _dated: bool = field(init=False, repr=False, compare=False)
    """The filter must find the date itself: a message-form line, or a syslog line whose date
    the filter's datepattern may not find at its start."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "_dated", self.line == "message"
                           or self.filter.datepattern not in _DATES_CUT_FIRST)

    def __call__(self, message: SyslogMessage) -> SecurityEvent | NotMatched:
        flt = self.filter
        if not self._dated:
            result = flt.match_text(syslog_line(message))
        elif self.line == "message":
            result = flt.match_untimed(message.msg)
        else:
            result = flt.match_untimed(f"{message.timestamp or ''}{syslog_line(message)}")
        if type(result) is not Failure:
            return NOT_MATCHED
        return SecurityEvent(EventKind.LOGIN_FAILED, self.name, (result.host,), result.user,
                             None, None, message.peer, message.msg)
