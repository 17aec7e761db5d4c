"""The bans as the admin sees them: every ban decided goes through here to the store and the
enforcer; the admin's bans, unbans and allow entries too; at start the store's running bans are
put back and the kernel's sets reconciled with them.

What each admin action does (the Artica document's words in brackets):
- `ban`: a manual ban, filed under a jail (its ports, its bantime unless a duration is given)
  or, without one, in the `manual` sets, which close every port, until lifted unless a duration
  is given.
- `unban` [Delete]: every ban of the target ends now; each jail forgets its failures, so it is
  banned again after `maxretry` more.
- `allow` [Disable]: unbanned, and never counted or banned while the entry lasts (optionally
  timed); `disallow` removes the entry.

The store is the journal's SQLite file (store/bans.py); without a journal (`journal.path = ""`)
all of this still works and lasts until bansink stops.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from operator import itemgetter
from typing import NamedTuple

import structlog

from bansink.engine.addresses import IPAddress, NetworkSet
from bansink.engine.decisions import MANUAL_JAIL, Ban, Origin, Target
from bansink.engine.escalation import BanRecord, ban_count, ban_time
from bansink.engine.pipeline import SecurityPipeline

from .enforcer import Enforcer
from .store import bans as store
from .store.journal import Operation
from .store.writer import JournalWriter

log = structlog.get_logger("bansink")

MAX_DURATION = 365 * 86400.0
"""The longest timed ban or allow entry (nft's element timeouts reach far beyond)."""


class AdminError(ValueError):
    """An admin request that cannot be done; the message says why."""


def parse_target(text: str) -> Target:
    """An address, or a network in CIDR form (host bits must be zero); a /32 or /128 is the
    address."""
    try:
        if "/" not in text:
            address = ip_address(text)
            mapped = getattr(address, "ipv4_mapped", None)
            return mapped if mapped is not None else address
        network = ip_network(text)
    except ValueError as exc:
        raise AdminError(f"{text!r} is not an address or a network: {exc}") from None
    if network.num_addresses == 1:
        return network.network_address
    if network.prefixlen == 0:
        raise AdminError(f"{text}: a ban or allow entry for every address is refused")
    return network


def covers(target: Target, address: IPAddress) -> bool:
    if isinstance(target, IPv4Network | IPv6Network):
        return address.version == target.version and address in target
    return target == address


class RunningBan(NamedTuple):
    target: str
    jail: str
    origin: str
    failures: int
    started_at: float | None
    """Wall clock (None: restored without a record)."""
    ends_at: float | None
    """Wall clock; None: until lifted."""
    left: int | None
    """Seconds; None: until lifted."""
    note: str


@dataclass(slots=True)
class Entry:
    """What the book knows of a running ban besides the enforcer's view."""

    started_at: float
    """Wall clock."""
    ends: float
    """Monotonic (math.inf: until lifted): when the book forgets it."""
    id: int | None = None
    step: int = 0
    note: str = ""


class BanBook:
    def __init__(self, pipeline: SecurityPipeline, enforcer: Enforcer,
                 journal: JournalWriter | None, *, findtime: Callable[[str], float],
                 history: float = 30 * 86400.0,
                 clock: Callable[[], float] = time.time) -> None:
        """`findtime(jail)`: how far back a jail's ban takes its messages as evidence;
        `history`: how long ended bans are remembered (repeat offenders are judged by them:
        fail2ban's dbpurgeage)."""
        self.pipeline, self.enforcer, self.journal = pipeline, enforcer, journal
        self._findtime = findtime
        self.horizon = history
        self._clock = clock
        self.history: dict[Target, list[BanRecord]] = {}
        """target -> its bans (wall clock) within `history`: the repeat offenders' record"""
        self.entries: dict[tuple[str, Target], Entry] = {}
        self.allowed: dict[Target, store.AllowRow] = {}
        self._unrecorded: list[tuple[store.NewBan, Entry]] = []
        """bans decided in this tick, written to the store together (_record_bans)"""

    def _mono(self) -> float:
        return asyncio.get_running_loop().time()

    def write(self, operation: Operation) -> None:
        if self.journal is not None:
            self._record_bans()  # a lift after a ban of the same tick must find its record
            self.journal.put_operation(operation)

    def _record_bans(self) -> None:
        """Queue the bans decided since the last call as one journal operation, written in two
        statements per 1,000 bans (a burst decides hundreds in a tick: a closure per ban on the
        event loop, and two statements per ban on the writer thread, which takes the GIL back
        for each, cost more). Runs at the end of the tick a ban was decided in, after the rows
        of the messages that caused it were queued."""
        bans, self._unrecorded = self._unrecorded, []
        if not bans or self.journal is None:
            return

        def write(db: sqlite3.Connection) -> None:
            ids = store.record_bans(db, [record for record, _ in bans])
            for (_, entry), ban_id in zip(bans, ids, strict=True):
                entry.id = ban_id

        self.journal.put_operation(write, records=len(bans))

    # -- decisions ---------------------------------------------------------------------------

    def ban(self, ban: Ban, started_at: float | None = None, note: str = "") -> Ban:
        """Enforce and record a ban (a jail's decision, or one made here); a jail's ban of a
        repeat offender is made longer as its `bantime.*` settings say. Returns the ban as
        enforced."""
        now = self._clock()
        wall = now if started_at is None else started_at
        step = 0
        jail = self.pipeline.jail(ban.jail) if ban.origin is Origin.JAIL else None
        escalation = jail.settings.escalation if jail is not None else None
        if jail is not None and escalation is not None:
            step = ban_count(self.history.get(ban.target, ()), ban.jail, wall,
                             overalljails=escalation.overalljails, dbpurgeage=self.horizon)
            longer = ban_time(escalation, ban.bantime, step)
            if longer != ban.bantime:
                ban = dataclasses.replace(ban, bantime=longer, origin=Origin.ESCALATION)
                if not isinstance(ban.target, IPv4Network | IPv6Network):
                    jail.remember(ban.target, ban.decided_at + longer)
        bantime = ban.bantime
        record = BanRecord(ban.jail, wall, wall + bantime)
        records = self.history.get(ban.target)
        if records is None:
            self.history[ban.target] = [record]
        else:
            records.append(record)
        end = ban.decided_at + bantime
        entry = Entry(wall, end, step=step, note=note)
        self.entries[(ban.jail, ban.target)] = entry
        if self.journal is not None:
            findtime = self._findtime(ban.jail) if ban.origin is not Origin.MANUAL else None
            ends = None if math.isinf(bantime) else now + (end - self._mono())
            if not self._unrecorded:
                asyncio.get_running_loop().call_soon(self._record_bans)
            self._unrecorded.append((store.NewBan(
                str(ban.target), ban.jail, ban.origin.value, ban.failures, wall, ends, step, note,
                None if findtime is None else wall - findtime), entry))
        self.enforcer.ban(ban)
        return ban

    # -- the admin's actions -----------------------------------------------------------------

    def manual_ban(self, target: Target, jail: str | None = None, duration: float | None = None,
                   note: str = "") -> Ban:
        name = jail or MANUAL_JAIL
        found = None if name == MANUAL_JAIL else self.pipeline.jail(name)
        if name != MANUAL_JAIL and found is None:
            raise AdminError(f"no jail {name!r} (jails: "
                             f"{', '.join(j.settings.name for j in self.pipeline.jails)})")
        if duration is not None and not 0 < duration <= MAX_DURATION:
            raise AdminError("a ban lasts more than 0 seconds and at most 365 days")
        for allowed in self.allowed:
            if _overlaps(allowed, target):
                raise AdminError(f"{target} is covered by the allow entry {allowed}: "
                                 f"`bansink disallow {allowed}` first")
        protection = self._protection(target)
        if protection is not None:
            raise AdminError(f"{target} is protected ({protection}): bansink never bans it")
        bantime = duration if duration is not None else (
            found.settings.bantime if found is not None else math.inf)
        now = self._mono()
        ban = Ban(target=target, origin=Origin.MANUAL, jail=name, failures=0, bantime=bantime,
                  decided_at=now)
        if not isinstance(target, IPv4Network | IPv6Network):  # the jails hold its failures
            for held in self.pipeline.jails if found is None else (found,):
                held.remember(target, now + bantime)
        return self.ban(ban, note=note)

    def _protection(self, target: Target) -> str | None:
        """Why the engine would never ban this target (a trusted proxy, ignoreip, a sender)."""
        p = self.pipeline.protections
        named = {"trusted_proxy": p.trusted_proxies, "ignoreip": p.ignoreip,
                 "sender": p.senders}
        for reason, nets in named.items():
            for net in nets.networks:
                if _overlaps(net, target):
                    return f"{reason} {net}"
        return None

    def unban(self, target: Target, reason: str = "unban") -> list[Ban]:
        """End every ban of `target` now; the jails forget its failures. Returns the bans
        that ended (none: it was not banned)."""
        ended = self.enforcer.lift(target, None, reason)
        for ban in ended:
            self.entries.pop((ban.jail, ban.target), None)
        if not isinstance(target, IPv4Network | IPv6Network):
            for jail in self.pipeline.jails:
                jail.forget(target)
        at = self._clock()
        self.write(lambda db: store.lift(db, str(target), at, reason))
        return ended

    def allow(self, target: Target, duration: float | None = None, note: str = "") -> list[Ban]:
        """Never count or ban `target` while the entry lasts; running bans of it (or of
        addresses in it) end now. Returns those bans."""
        if duration is not None and not 0 < duration <= MAX_DURATION:
            raise AdminError("an allow entry lasts more than 0 seconds and at most 365 days")
        now = self._clock()
        row = store.AllowRow(str(target), now, None if duration is None else now + duration,
                             note)
        self.allowed[target] = row
        self.apply_allowed()
        self.write(lambda db: store.put_allow(db, row))
        inside = {ban.target for _, ban in self.enforcer.running() if ban.target == target or (
            not isinstance(ban.target, IPv4Network | IPv6Network)
            and covers(target, ban.target))}
        return [ended for t in sorted(inside | {target}, key=str)
                for ended in self.unban(t, reason="allow")]

    def disallow(self, target: Target) -> bool:
        if self.allowed.pop(target, None) is None:
            return False
        self.apply_allowed()
        self.write(lambda db: store.remove_allow(db, str(target)))
        return True

    def apply_allowed(self) -> None:
        self.pipeline.allow(NetworkSet([ip_network(t) for t in self.allowed]))

    def forget_history(self) -> None:
        """Drop what is known of bans that ended, and the record of those that ended more
        than `history` ago (housekeeping)."""
        now = self._mono()
        for key in [key for key, entry in self.entries.items() if entry.ends < now]:
            del self.entries[key]
        horizon = self._clock() - self.horizon
        for target in list(self.history):
            kept = [record for record in self.history[target] if record.end >= horizon]
            if kept:
                self.history[target] = kept
            else:
                del self.history[target]

    def expire_allowed(self) -> None:
        """Timed allow entries that ran out end (housekeeping)."""
        now = self._clock()
        ended = [t for t, row in self.allowed.items() if row.until is not None and row.until <= now]
        for target in ended:
            del self.allowed[target]
            log.info("allow_ended", target=str(target))
        if ended:
            self.apply_allowed()

    # -- what the admin reads ----------------------------------------------------------------

    def running(self, limit: int | None = None, offset: int = 0) -> list[RunningBan]:
        """Every running ban, soonest end first (those until lifted last; by target within a
        second); `limit` and `offset` take a page of that order."""
        mono, wall, entries, inf = self._mono(), self._clock(), self.entries, math.inf
        found = []
        for end, ban, target in self.enforcer.listing():
            left = end - mono
            found.append((round(left) if left < inf else inf, target, left, ban))
        found.sort(key=itemgetter(0, 1))
        page = []
        for rounded, target, left, ban in found[offset : None if limit is None else offset + limit]:
            entry = entries.get((ban.jail, ban.target))
            page.append(RunningBan(
                target, ban.jail, ban.origin.value, ban.failures,
                entry.started_at if entry is not None else None,
                wall + left if rounded < inf else None, int(rounded) if rounded < inf else None,
                entry.note if entry is not None else ""))
        return page

    def status(self, jail: str | None = None) -> dict[str, object]:
        """fail2ban's six counters per jail, and each jail's banned list with time left."""
        jails = self.pipeline.jails
        if jail is not None:
            found = self.pipeline.jail(jail)
            if found is None and jail != MANUAL_JAIL:
                raise AdminError(f"no jail {jail!r}")
            jails = (found,) if found is not None else ()
        names = [j.settings.name for j in jails]
        if jail in (None, MANUAL_JAIL):
            names.append(MANUAL_JAIL)
        banned = self._banned(names)
        report: dict[str, object] = {}
        for j in jails:
            mine = banned[j.settings.name]
            report[j.settings.name] = {
                "currently_failed": j.tracked, "total_failed": j.failed,
                "currently_banned": len(mine), "total_banned": j.bans, "banned": mine,
            }
        if jail in (None, MANUAL_JAIL):
            mine = banned[MANUAL_JAIL]
            report[MANUAL_JAIL] = {
                "currently_failed": 0, "total_failed": 0, "currently_banned": len(mine),
                "total_banned": None, "banned": mine}
        return {"jails": report}

    def _banned(self, jails: list[str]) -> dict[str, list[dict[str, object]]]:
        """Each jail's banned list: target and seconds left, in running()'s order. Built
        without running()'s records (a status of 100,000 bans spent 261 of its 345 ms
        building and sorting them): the enforcer's listing with the targets' text, one
        (left, target) pair per ban, sorted per jail."""
        mono, inf = self._mono(), math.inf
        found: dict[str, list[tuple[float, str]]] = {name: [] for name in jails}
        for end, ban, target in self.enforcer.listing():
            mine = found.get(ban.jail)
            if mine is not None:
                left = end - mono
                mine.append((round(left) if left < inf else inf, target))
        lists: dict[str, list[dict[str, object]]] = {}
        for name, pairs in found.items():
            pairs.sort()  # by time left, then target; until lifted (inf) last
            lists[name] = [{"target": target, "left": left if left < inf else None}
                           for left, target in pairs]
        return lists

    def allow_entries(self) -> list[dict[str, object]]:
        return [{**row._asdict()} for row in self.allowed.values()]


def _overlaps(a: Target, b: Target) -> bool:
    na, nb = ip_network(a), ip_network(b)
    return na.version == nb.version and na.overlaps(nb)
