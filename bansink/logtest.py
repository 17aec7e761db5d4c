"""`bansink test`: bansink's fail2ban-regex. A log file (or a capture of syslog messages)
through sources or a filter: what matched, whom, when; with a jail, who would have been banned
and when, replayed through the real jail by the log's own times.

A line is a file line as a syslog daemon or an application wrote it (its date is found by the
filter's datepattern), or a syslog message as sent on the wire (`<PRI>...`), which is read the
way the daemon reads it. A line without a year takes `now`'s. Blank lines and lines starting
with `#` are skipped and not counted, as fail2ban-regex does.
"""

from __future__ import annotations

import functools
import gc
import itertools
import json
import re
import sys
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from ipaddress import ip_address
from typing import NamedTuple, TextIO

from bansink.engine.events import SecurityEvent
from bansink.engine.filters.filter import Failure, Ignored, LineResult
from bansink.engine.jail import Jail, JailSettings
from bansink.engine.sources import FilterSource, Source, tags_of
from bansink.receiver.syslog import SyslogMessage, parse_syslog


class Found(NamedTuple):
    """A failure found on a line (a NamedTuple: one per matched line, built fast)."""

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


def _result(source: Source, line: str, message: SyslogMessage | None,
            now: float) -> LineResult | Found | None:
    """One source on one line (`message`: the line parsed, if it is a syslog message as sent):
    a filter's full result, or (code sources) a Found or None."""
    if message is not None:
        return _event(source, message)
    if isinstance(source, FilterSource):
        return source.filter.match(line, now)
    return _event(source, SyslogMessage(1, 5, "rfc3164", None, None, None, None, None, None,
                                        line, "test", now, line.encode()))


_FILE_TAG = re.compile(r"(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d|\d{4}-\d\d-\d\dT[\d:.]+"
                       r"(?:Z|[+-]\d\d:\d\d)?) [^\s:]\S* ([^\s\[:]+)")
"""A syslog file line's tag: `Mmm dd hh:mm:ss host TAG[pid]: ` (or an RFC 3339 time)."""


Route = tuple[str, Callable[[str, float], LineResult] | None, Source]
"""A source as scan() calls it: its name, its filter's `match` (None: a code source), itself."""


class Routes:
    """Which sources a line goes to, as the daemon picks them: by its syslog tag, one dict
    lookup (`routed`); or every source in turn (not routed: sources the user named)."""

    def __init__(self, sources: Sequence[Source], routed: bool) -> None:
        self.sources = tuple(sources)
        self.routed = routed
        self._all = self._routes(self.sources)
        self._cache: dict[str | None, tuple[Route, ...]] = {}

    @staticmethod
    def _routes(sources: Iterable[Source]) -> tuple[Route, ...]:
        return tuple((_name(source), source.filter.match if isinstance(source, FilterSource)
                      else None, source) for source in sources)

    def __call__(self, tag: str | None, headed: bool) -> tuple[Route, ...]:
        """The sources for a line with this tag, those of the tag first and then those of
        every tag, as the pipeline tries them; `headed`: the line has a syslog header (a line
        without one is an application's own file: every source that reads the message text
        alone, and those without tags, in the given order)."""
        if not self.routed:
            return self._all
        key = tag if headed else "\0"
        chosen = self._cache.get(key)
        if chosen is None:
            every = [source for source in self.sources if tags_of(source) is None]
            if headed:  # as the pipeline: those of the tag first, then those of every tag
                chosen = self._routes([*(source for source in self.sources
                                         if tag in (tags_of(source) or ())), *every])
            else:
                chosen = self._routes(source for source in self.sources
                                      if tags_of(source) is None
                                      or getattr(source, "line", "") == "message")
            self._cache[key] = chosen
        return chosen


def _name(source: Source) -> str:
    return source.name if isinstance(source, FilterSource) else getattr(source, "__name__", "")


def scan(lines: Iterable[str], sources: Sequence[Source], now: float,
         tally: Tally, keep_missed: bool = False, routed: bool = False,
         first: int = 1) -> Iterator[Found]:
    """The failures in `lines`, in order; `tally` counts as fail2ban-regex does. `routed`:
    each line goes only to the sources of its syslog tag, as in the daemon (Routes). `first`:
    the number of the first line."""
    routes = Routes(sources, routed)
    file_tag = _FILE_TAG.match if routed else None
    hosts = tally.hosts
    counted = ignored_lines = matched = missed = 0
    try:
        for lineno, raw in enumerate(lines, first):
            line = raw.rstrip("\r\n")
            if not line or line[0] == "#" or line.isspace():
                continue  # as fail2ban-regex: comments and blank lines are not lines
            counted += 1
            ignored = False
            found: Found | None = None
            message: SyslogMessage | None = None
            if line[0] == "<" and line[1:4].rstrip(">").isdigit():
                parsed = parse_syslog(line.encode(), peer="test", received_at=now)
                message = parsed if isinstance(parsed, SyslogMessage) else None
            if message is not None:
                chosen = routes(message.app_name, True)
            elif file_tag is not None:
                header = file_tag(line)
                chosen = routes(header.group(1), True) if header else routes(None, False)
            else:
                chosen = routes(None, False)
            for name, match, source in chosen:
                if match is not None and message is None:
                    result: LineResult | Found | None = match(line, now)
                    if isinstance(result, Failure):
                        found = Found(lineno, result.host, result.user, result.time, name)
                        break
                    if isinstance(result, Ignored):
                        ignored = True
                    continue
                result = _result(source, line, message, now)
                if isinstance(result, Found):
                    found = result._replace(lineno=lineno)
                    break
                ignored = ignored or isinstance(result, Ignored)
            if found is not None:
                matched += 1
                hosts[found.host] += 1
                yield found
            elif ignored:
                ignored_lines += 1
            else:
                missed += 1
                if keep_missed:
                    tally.missed_lines.append((lineno, line))
    finally:
        tally.lines += counted
        tally.ignored += ignored_lines
        tally.matched += matched
        tally.missed += missed


CHUNK = 50_000
"""Lines per piece of work when `bansink test` reads a file on several cores."""

_shared: tuple[str, array[int], Sequence[Source], float, bool, bool] | None = None
"""What a worker process inherits (fork): the file as one string and where each line starts
(one object: the worker reads it without copying it page by page, as touching a million line
objects would), the sources (compiled once, never pickled), the options."""

Columns = tuple[list[int], list[str], list[str | None], list[float | None], list[str]]
"""A piece's failures as Found's columns: pickled between processes several times faster
than a list of Found (measured: 0.3 against 2.5 s of CPU for 735,000)."""


def _scan_chunk(piece: tuple[int, int]) -> tuple[Columns, Tally]:
    assert _shared is not None
    text, starts, sources, now, keep_missed, routed = _shared
    first, stop = piece
    tally = Tally()
    lines = (text[starts[index]:starts[index + 1]] for index in range(first, stop))
    found = list(scan(lines, sources, now, tally, keep_missed, routed, first + 1))
    columns: Columns = ([], [], [], [], [])
    if found:
        linenos, hosts, users, times, names = zip(*found, strict=True)
        columns = (list(linenos), list(hosts), list(users), list(times), list(names))
    return columns, tally


def scan_file(lines: Sequence[str], sources: Sequence[Source], now: float, tally: Tally,
              keep_missed: bool = False, routed: bool = False, jobs: int = 1) -> list[Found]:
    """scan() over a whole file, on `jobs` processes (forked, so nothing is copied to them) in
    pieces of CHUNK lines, merged in the file's order. The cycle collector is off meanwhile:
    scanning makes no cycles, and its passes over the growing list of failures cost 13 % of
    the time (measured on a million lines)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _scan_file(lines, sources, now, tally, keep_missed, routed, jobs)
    finally:
        if collecting:
            gc.enable()


def _scan_file(lines: Sequence[str], sources: Sequence[Source], now: float, tally: Tally,
               keep_missed: bool, routed: bool, jobs: int) -> list[Found]:
    global _shared
    if jobs <= 1 or len(lines) <= CHUNK:
        return list(scan(lines, sources, now, tally, keep_missed, routed))
    import multiprocessing

    _shared = ("".join(lines), array("q", itertools.accumulate(map(len, lines), initial=0)),
               sources, now, keep_missed, routed)
    pieces = [(start, min(start + CHUNK, len(lines))) for start in range(0, len(lines), CHUNK)]
    found: list[Found] = []
    as_found = functools.partial(tuple.__new__, Found)
    try:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            for columns, counted in pool.imap(_scan_chunk, pieces):
                found += map(as_found, zip(*columns, strict=True))
                tally.lines += counted.lines
                tally.ignored += counted.ignored
                tally.matched += counted.matched
                tally.missed += counted.missed
                tally.hosts.update(counted.hosts)
                tally.missed_lines += counted.missed_lines
    finally:
        _shared = None
    return found


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
