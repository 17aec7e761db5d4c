"""What the page shows, read from the admin service (bans.BanBook, explain.py) and, for the
charts, from the store through a read-only connection of its own.

The blocked list is built here on top of the book's public parts, not with `BanBook.running()`:
that builds, sorts and returns every running ban (about 0.3 s for 100,000 on this project's
machine), where a page needs 50 of them. `ban_page` filters and sorts the enforcer's running
bans on cheap keys and builds rows only for the page shown; each row is what `running()` would
say of that ban (bench/web.py holds it to 300 ms at 100,000 bans).
"""

from __future__ import annotations

import asyncio
import gc
import math
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from itertools import repeat
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any

from bansink.engine.decisions import MANUAL_JAIL, Ban, Target

from ..bans import BanBook, RunningBan

PER_PAGE = (25, 50, 100, 200)
SORTS = ("left", "target", "jail", "origin", "failures", "since")


_V6 = 1 << 140


def _target_key(target: Target) -> int:
    """Addresses and networks in numeric order, IPv4 first, an address after the networks
    that start where it is: one integer, so that sorting 100,000 compares machine words, not
    tuples or ipaddress objects."""
    if isinstance(target, IPv4Address):
        return (int(target) << 8) | 0xFF
    if isinstance(target, IPv6Address):
        return _V6 | (int(target) << 8) | 0xFF
    return (_V6 if target.version == 6 else 0) | (int(target.network_address) << 8) \
        | target.prefixlen


@dataclass(frozen=True, slots=True)
class BanQuery:
    """The list's filter, order and page, from the query string (anything unknown: the
    default)."""

    q: str = ""
    jail: str = ""
    origin: str = ""
    sort: str = "left"
    descending: bool = False
    page: int = 1
    per: int = 50

    @classmethod
    def parse(cls, query: Any) -> BanQuery:
        def number(name: str, default: int, low: int, high: int) -> int:
            try:
                return min(max(int(query.get(name, default)), low), high)
            except ValueError:
                return default

        sort = query.get("sort", "left")
        per = number("per", 50, 1, max(PER_PAGE))
        return cls(q=query.get("q", "").strip()[:100], jail=query.get("jail", "")[:40],
                   origin=query.get("origin", "")[:20],
                   sort=sort if sort in SORTS else "left",
                   descending=query.get("dir") == "desc", page=number("page", 1, 1, 10**7),
                   per=per if per in PER_PAGE else 50)

    def params(self, **change: Any) -> dict[str, str]:
        """The query string of this view with some values changed (for links)."""
        values = {"q": self.q, "jail": self.jail, "origin": self.origin, "sort": self.sort,
                  "dir": "desc" if self.descending else "asc", "page": str(self.page),
                  "per": str(self.per)}
        values.update({k: str(v) for k, v in change.items()})
        defaults = {"q": "", "jail": "", "origin": "", "sort": "left", "dir": "asc",
                    "page": "1", "per": "50"}
        return {k: v for k, v in values.items() if v != defaults[k]}


@dataclass(frozen=True, slots=True)
class BanPage:
    rows: list[RunningBan]
    total: int
    """Bans matching the filter."""
    running: int
    """Bans running in all."""
    page: int
    pages: int
    query: BanQuery
    problem: str = ""
    """Why the filter was not understood, if it was not."""


def _matcher(q: str) -> tuple[Callable[[Ban], bool] | None, str]:
    """A filter for the text typed: an address (its own bans and the networks holding it), a
    network (the bans inside it), else part of the address or network as written."""
    if not q:
        return None, ""
    try:
        if "/" in q:
            net = ip_network(q, strict=False)
            low, high, version = int(net.network_address), int(net.broadcast_address), \
                net.version

            def inside(ban: Ban) -> bool:
                t = ban.target
                if t.version != version:
                    return False
                if isinstance(t, IPv4Network | IPv6Network):
                    return low <= int(t.network_address) and int(t.broadcast_address) <= high
                return low <= int(t) <= high

            return inside, ""
        address = ip_address(q)
        mapped = getattr(address, "ipv4_mapped", None)
        address = mapped or address

        def holds(ban: Ban) -> bool:
            t = ban.target
            if isinstance(t, IPv4Network | IPv6Network):
                return t.version == address.version and address in t
            return t == address

        return holds, ""
    except ValueError:
        pass
    text = q.lower()
    if not all(c in "0123456789abcdef.:/" for c in text):
        return (lambda ban: False), f"{q!r} is not part of an address or a network"
    return (lambda ban: text in str(ban.target)), ""


async def ban_page(book: BanBook, query: BanQuery) -> BanPage:
    """One page of the running bans, filtered and sorted as asked.

    Off the event loop: the bans and (for the `since` order) the book's entries are copied here
    (milliseconds), then filtered and sorted on a worker thread, which hands the GIL back to the
    loop at least every `sys.getswitchinterval()` between bytecodes (a single C-level sort holds
    it for its length: about 30 ms at 100,000). Messages and bans go on meanwhile; the rows of
    the page shown are built back on the loop. The rare ban not found in the copy by its
    target's identity is looked up in the live book from the thread (one `dict.get`, atomic
    under the GIL)."""
    loop = asyncio.get_running_loop()
    running = list(book.enforcer.running())
    entries: Entries = ((list(book.entries), list(book.entries.values()))
                        if query.sort == "since" else ([], []))
    ordered, problem = await asyncio.to_thread(_select, running, entries, query,
                                              book.entries.get)
    mono, wall = loop.time(), time.time()
    total = len(ordered)
    pages = max(1, math.ceil(total / query.per))
    page = min(query.page, pages)
    shown = ordered[(page - 1) * query.per : page * query.per]
    rows = [_row(book, end, ban, mono, wall) for end, ban in shown]
    return BanPage(rows, total, len(running), page, pages, query, problem)


Running = list[tuple[float, Ban]]
Entries = tuple[list[tuple[str, Target]], list[Any]]
"""the book's entries: their keys, their values"""
Lookup = Callable[[tuple[str, Target]], Any]


def _select(running: Running, entries: Entries, query: BanQuery,
            lookup: Lookup) -> tuple[Running, str]:
    """The bans the query keeps, in its order, and why its text was not understood (if it
    was not). The cyclic garbage collector waits meanwhile: the lists made here hold no cycle,
    and with 100,000 bans alive the collections their allocations set off cost as much as the
    sort (measured: 280 ms with, 165 ms without, on a loaded machine)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        chosen: list[tuple[float, Ban]] = running
        if query.jail:
            chosen = [item for item in chosen if item[1].jail == query.jail]
        if query.origin:
            chosen = [item for item in chosen if item[1].origin.value == query.origin]
        match, problem = _matcher(query.q)
        if match is not None:
            chosen = [item for item in chosen if match(item[1])]
        # by the end first (the default order, soonest first, as `bansink bans` lists them),
        # then, stably, by the column asked for: ties keep the default order. A column's keys
        # are read in the enforcer's order, the order the bans were made in and so lie in
        # memory (in the end's order every read is a cache miss: 2.5 times slower), in one
        # comprehension or C-level map; then positions are sorted on them (a C-level key:
        # no Python call per element or comparison)
        if query.sort == "left":
            ordered = sorted(chosen, key=itemgetter(0))
            if query.descending:
                ordered.reverse()
        else:
            column = _column(entries, query.sort, chosen, lookup)
            ends = list(map(itemgetter(0), chosen))
            positions = sorted(range(len(chosen)), key=ends.__getitem__)
            positions.sort(key=column.__getitem__, reverse=query.descending)
            ordered = [chosen[i] for i in positions]
        return ordered, problem
    finally:
        if enabled:
            gc.enable()


_AMBIGUOUS = -1.0
_STARTED = attrgetter("started_at")
_TARGET = attrgetter("target")


def _column(entries: Entries, sort: str, bans: Running, lookup: Lookup) -> list[Any]:
    """The sort keys of `bans` for a column of the list."""
    if sort == "target":
        return [_target_key(ban.target) for _, ban in bans]
    if sort == "jail":
        return [ban.jail for _, ban in bans]
    if sort == "origin":
        return [ban.origin for _, ban in bans]  # a StrEnum: sorts as its text
    if sort == "failures":
        return [ban.failures for _, ban in bans]
    return _since(entries, bans, lookup)


def _since(entries: Entries, bans: Running, lookup: Lookup) -> list[float]:
    """When each ban started (0: not known), from the book's entries. They are keyed by (jail,
    target), and hashing an ipaddress object runs Python code (about 0.6 µs): with 100,000
    bans that alone costs more than the page may. A ban the book decided holds the very target
    object its entry is keyed by, so entries are found by the object's identity (an integer),
    every step a C-level map with no Python frame per ban; by equality (`lookup`, the book's
    own `entries.get`) only where that misses or is ambiguous (a ban restored at start, one
    target in two jails)."""
    keys = [id(target) for _, target in entries[0]]
    by_identity = dict(zip(keys, map(_STARTED, entries[1]), strict=True))
    if len(by_identity) < len(keys):  # one target object in two jails
        for key, count in Counter(keys).items():
            if count > 1:
                by_identity[key] = _AMBIGUOUS
    targets = list(map(_TARGET, map(itemgetter(1), bans)))
    started = list(map(by_identity.get, map(id, targets), repeat(_AMBIGUOUS)))
    if _AMBIGUOUS not in started:  # (a scan in C)
        return started
    for i, value in enumerate(started):
        if value == _AMBIGUOUS:
            ban = bans[i][1]
            held = lookup((ban.jail, ban.target))
            started[i] = held.started_at if held is not None else 0.0
    return started


def _row(book: BanBook, end: float, ban: Ban, mono: float, wall: float) -> RunningBan:
    """A ban as `BanBook.running()` gives it."""
    entry = book.entries.get((ban.jail, ban.target))
    left = end - mono
    timed = math.isfinite(left)
    return RunningBan(str(ban.target), ban.jail, ban.origin.value, ban.failures,
                      entry.started_at if entry is not None else None,
                      wall + left if timed else None, round(left) if timed else None,
                      entry.note if entry is not None else "")


def running_by_jail(book: BanBook) -> Counter[str]:
    return Counter(ban.jail for _, ban in book.enforcer.running())


def jail_counters(book: BanBook) -> list[dict[str, Any]]:
    """fail2ban's six status lines per jail (`fail2ban-client status JAIL`): currently and in
    all failed, what it reads (fail2ban's file list), currently and in all banned, and (as a
    link) its banned list; the admin's `manual` bans last."""
    banned = running_by_jail(book)
    rows = []
    for jail in book.pipeline.jails:
        name = jail.settings.name
        rows.append({"jail": name, "currently_failed": jail.tracked,
                     "total_failed": jail.failed, "currently_banned": banned.get(name, 0),
                     "total_banned": jail.bans})
    rows.append({"jail": MANUAL_JAIL, "currently_failed": None, "total_failed": None,
                 "currently_banned": banned.get(MANUAL_JAIL, 0), "total_banned": None})
    return rows


def manual_bans(book: BanBook) -> list[RunningBan]:
    """The admin's deny entries: bans filed in the `manual` sets."""
    mono, wall = asyncio.get_running_loop().time(), time.time()
    found = [(end, ban) for end, ban in book.enforcer.running() if ban.jail == MANUAL_JAIL]
    found.sort(key=lambda item: (item[0], _target_key(item[1].target)))
    return [_row(book, end, ban, mono, wall) for end, ban in found]


# -- the store's numbers for the overview ----------------------------------------------------

HOUR, DAY = 3600.0, 86400.0


@dataclass(frozen=True, slots=True)
class Series:
    """Counts per bucket, oldest first, each bucket `step` seconds from `start` (wall clock)."""

    start: float
    step: float
    counts: list[int]


def _buckets(db: sqlite3.Connection, sql: str, since: float, step: float, count: int
             ) -> Series:
    counts = [0] * count
    for bucket, n in db.execute(sql, (step, since, since)):
        if 0 <= bucket < count:
            counts[int(bucket)] += n
    return Series(since, step, counts)


def prefix_of(address: str) -> str:
    """The /24 of an IPv4 address, the /64 of an IPv6 one. A message row's address may be the
    IPv6 prefix its jail counted it by already ("2001:db8:1:2::/64"): a prefix that wide stays
    as it is."""
    if ":" not in address:
        head, _, _ = address.rpartition(".")
        return f"{head}.0/24"
    network = ip_network(address, strict=False)
    return str(network.supernet(new_prefix=64) if network.prefixlen > 64 else network)


def read_overview(path: Path, now: float) -> dict[str, Any]:
    """Failures and bans per minute over the last hour and per hour over the last day, the
    top addresses and prefixes by failures over the last day, and the failures received per
    sender and transport; from a read-only connection (WAL: the journal's writer is never
    waited for, nor waits)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)
    try:
        # ?1 the bucket's length, ?2 the first moment counted, ?3 the first bucket's start
        failures = ("SELECT CAST((received_at - ?3) / ?1 AS INTEGER) AS b, count(*) FROM message "
                    "WHERE received_at >= ?2 AND address != '' GROUP BY b")
        bans = ("SELECT CAST((started_at - ?3) / ?1 AS INTEGER) AS b, count(*) FROM ban "
                "WHERE started_at >= ?2 GROUP BY b")
        hour_start = now - HOUR
        day_start = now - DAY
        result: dict[str, Any] = {
            "failures_hour": _buckets(db, failures, hour_start, 60.0, 60),
            "bans_hour": _buckets(db, bans, hour_start, 60.0, 60),
            "failures_day": _buckets(db, failures, day_start, HOUR, 24),
            "bans_day": _buckets(db, bans, day_start, HOUR, 24),
        }
        by_address = db.execute(
            "SELECT address, count(*) AS n FROM message WHERE received_at >= ? AND address != '' "
            "GROUP BY address ORDER BY n DESC LIMIT 20000", (day_start,)).fetchall()
        result["top_addresses"] = by_address[:10]
        prefixes: Counter[str] = Counter()
        for address, n in by_address:
            prefixes[prefix_of(address)] += n
        result["top_prefixes"] = prefixes.most_common(10)
        result["senders"] = db.execute(
            "SELECT peer, transport, count(*) FROM message WHERE received_at >= ? "
            "GROUP BY peer, transport ORDER BY 3 DESC LIMIT 50", (day_start,)).fetchall()
        return result
    finally:
        db.close()


class OverviewCache:
    """The store's overview numbers, read at most every `ttl` seconds, on a thread."""

    def __init__(self, path: Path | None, ttl: float = 10.0) -> None:
        self.path, self.ttl = path, ttl
        self._at = -math.inf
        self._value: dict[str, Any] | None = None
        self._error = ""

    async def get(self) -> tuple[dict[str, Any] | None, str]:
        if self.path is None:
            return None, "no store (journal.path is empty): no charts or top lists"
        now = time.monotonic()
        if now - self._at >= self.ttl:
            try:
                self._value = await asyncio.to_thread(read_overview, self.path, time.time())
                self._error = ""
            except sqlite3.Error as exc:
                self._value, self._error = None, f"the store cannot be read: {exc}"
            self._at = now
        return self._value, self._error
