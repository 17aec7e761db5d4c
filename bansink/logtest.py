"""`bansink test`: bansink's fail2ban-regex. A log file (or a capture of syslog messages)
through sources or a filter: what matched, whom, when; with a jail, who would have been banned
and when, replayed through the real jail by the log's own times.

A line is a file line as a syslog daemon or an application wrote it (its date is found by the
filter's datepattern), or a syslog message as sent on the wire (`<PRI>...`), which is read the
way the daemon reads it. A line without a year takes `now`'s. Blank lines and lines starting
with `#` are skipped and not counted, as fail2ban-regex does.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from ipaddress import ip_address
from typing import TextIO

from bansink.engine.events import SecurityEvent
from bansink.engine.filters.filter import Failure, Ignored, LineResult
from bansink.engine.jail import Jail, JailSettings
from bansink.engine.sources import FilterSource, Source
from bansink.receiver.syslog import SyslogMessage, parse_syslog


@dataclass(frozen=True, slots=True)
class Found:
    lineno: int
    host: str
    user: str | None
    time: float | None
    source: str


@dataclass
class Tally:
    lines: int = 0
    ignored: int = 0
    matched: int = 0
    missed: int = 0
    hosts: Counter[str] = field(default_factory=Counter)
    missed_lines: list[tuple[int, str]] = field(default_factory=list)


def _event(source: Source, message: SyslogMessage) -> Found | None:
    event = source(message)
    if isinstance(event, SecurityEvent):
        return Found(0, event.client_chain[-1], event.user, None, _name(source))  # lineno: scan
    return None


def _result(source: Source, line: str, now: float) -> LineResult | Found | None:
    """One source on one line: a filter's full result, or (code sources) a Found or None."""
    if line.startswith("<") and line[1:4].rstrip(">").isdigit():
        message = parse_syslog(line.encode(), peer="test", received_at=now)
        if isinstance(message, SyslogMessage):
            return _event(source, message)
    if isinstance(source, FilterSource):
        return source.filter.match(line, now)
    return _event(source, SyslogMessage(1, 5, "rfc3164", None, None, None, None, None, None,
                                        line, "test", now, line.encode()))


def _name(source: Source) -> str:
    return source.name if isinstance(source, FilterSource) else getattr(source, "__name__", "")


def scan(lines: Iterable[str], sources: Sequence[Source], now: float,
         tally: Tally, keep_missed: bool = False) -> Iterator[Found]:
    """The failures in `lines`, in order; `tally` counts as fail2ban-regex does."""
    for lineno, raw in enumerate(lines, 1):
        line = raw.rstrip("\r\n")
        if not line.strip() or line.startswith("#"):
            continue  # as fail2ban-regex: comments and blank lines are not lines
        tally.lines += 1
        ignored = False
        found: Found | None = None
        for source in sources:
            result = _result(source, line, now)
            if isinstance(result, Failure):
                found = Found(lineno, result.host, result.user, result.time, _name(source))
                break
            if isinstance(result, Found):
                found = replace(result, lineno=lineno)
                break
            ignored = ignored or isinstance(result, Ignored)
        if found is not None:
            tally.matched += 1
            tally.hosts[found.host] += 1
            yield found
        elif ignored:
            tally.ignored += 1
        else:
            tally.missed += 1
            if keep_missed:
                tally.missed_lines.append((lineno, line))


@dataclass(frozen=True, slots=True)
class WouldBan:
    host: str
    time: float
    failures: int
    bantime: float


def replay(found: Iterable[Found], settings: JailSettings, now: float) -> Iterator[WouldBan]:
    """The bans a jail would have made, by the failures' own times (`now` for those without
    one); a banned address's failures are not counted while its ban runs (its traffic would
    have been dropped)."""
    jail = Jail(settings)
    banned_until: dict[str, float] = {}
    for failure in found:
        when = failure.time if failure.time is not None else now
        try:
            ip = ip_address(failure.host.strip("[]"))
        except ValueError:
            continue  # a host name: never banned
        if banned_until.get(failure.host, -1.0) > when:
            continue
        ban = jail.observe(ip, when)
        if ban is not None:
            banned_until[failure.host] = when + settings.bantime
            yield WouldBan(failure.host, when, ban.failures, settings.bantime)


def _iso(moment: float | None) -> str | None:
    return None if moment is None else datetime.fromtimestamp(moment).astimezone().isoformat()


def report(found: list[Found], tally: Tally, bans: list[WouldBan] | None, *, as_json: bool,
           out: TextIO = sys.stdout) -> None:
    if as_json:
        for one in found:
            out.write(json.dumps({"lineno": one.lineno, "match": True, "ip": one.host,
                                  "time": _iso(one.time), "user": one.user,
                                  "filter": one.source}) + "\n")
        for ban in bans or ():
            out.write(json.dumps({"ban": {"ip": ban.host, "time": _iso(ban.time),
                                          "failures": ban.failures,
                                          "bantime": ban.bantime}}) + "\n")
        for lineno, line in tally.missed_lines:
            out.write(json.dumps({"lineno": lineno, "match": False, "line": line}) + "\n")
        out.write(json.dumps({"summary": {"lines": tally.lines, "matched": tally.matched,
                                          "ignored": tally.ignored,
                                          "missed": tally.missed}}) + "\n")
        return
    out.write(f"Lines: {tally.lines} lines, {tally.ignored} ignored, {tally.matched} matched, "
              f"{tally.missed} missed\n")
    if tally.hosts:
        out.write("\nMatched hosts:\n")
        for host, count in tally.hosts.most_common():
            out.write(f"  {count:8d}  {host}\n")
    if bans is not None:
        out.write(f"\nWould ban {len(bans)}:\n")
        for ban in bans:
            out.write(f"  {_iso(ban.time)}  {ban.host}  after {ban.failures} failures, "
                      f"for {ban.bantime:g}s\n")
    if tally.missed_lines:
        out.write("\nMissed lines:\n")
        for lineno, line in tally.missed_lines:
            out.write(f"  {lineno}: {line}\n")
