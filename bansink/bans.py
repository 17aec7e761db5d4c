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

from bansink.engine.addresses import IPAddress, IPNetwork, NetworkSet
from bansink.engine.decisions import MANUAL_JAIL, Ban, Origin, Target
from bansink.engine.escalation import BanRecord, ban_count, ban_time
from bansink.engine.jail import Jail
from bansink.engine.pipeline import SecurityPipeline
from bansink.engine.prefixes import PrefixWatch, ban_target, inside

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
        self.watches: dict[str, PrefixWatch] = {}
        """jail -> its recent bans per wider prefix (`prefix.*`), for jails that escalate"""
        self.on_ban: list[Callable[[Ban], None]] = []
        """Told of each ban once it is recorded, as enforced (metrics, notifications). The
        daemon adds them after start-up, so bans put back then (restored, replayed) are not
        told. Each must be quick and must not raise: it runs inside the ban's path."""
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
                jail.remember(ban.target, ban.decided_at + longer)
        wide = self._widened(jail, ban, wall) if jail is not None else None
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
        if wide is None:
            self.enforcer.ban(ban)
            for observer in self.on_ban:
                observer(ban)
            return ban
        # replaced at once by the wider ban (never enforced): recorded, and lifted
        del self.entries[(ban.jail, ban.target)]
        target = str(ban.target)
        self.write(lambda db: store.lift(db, target, wall, "prefix", ban.jail))
        assert jail is not None
        return self._ban_prefix(jail, wide, ban.decided_at, wall)

    def _widened(self, jail: Jail, ban: Ban, wall: float
                 ) -> tuple[IPNetwork, list[Target]] | None:
        """The wider prefix this jail's ban completes (`prefix.count` bans inside it within
        `prefix.window`), unless it holds something bansink never bans or is banned already."""
        settings = jail.settings.prefix
        if settings is None or ban.origin is Origin.MANUAL:
            return None
        watch = self.watches.get(jail.settings.name)
        if watch is None or watch.settings != settings:
            watch = self.watches[jail.settings.name] = PrefixWatch(settings)
        widened = watch.banned(ban.target, wall)
        if widened is None:
            return None
        wide = widened[0]
        entry = self.entries.get((jail.settings.name, wide))
        if entry is not None and entry.ends > ban.decided_at:
            return None
        protection = self._protection(wide, jail) or next(
            (f"allow entry {allowed}" for allowed in self.allowed if _overlaps(allowed, wide)),
            None)
        if protection is not None:
            log.info("prefix_ban_refused", network=str(wide), jail=jail.settings.name,
                     protected=protection)
            return None
        return widened

    def _ban_prefix(self, jail: Jail, widened: tuple[IPNetwork, list[Target]],
                    decided_at: float, wall: float) -> Ban:
        """Ban the wider prefix as one element, lifting first (in the same commit) the jail's
        bans inside it, those running and those of this tick, so that an interval set never
        holds overlapping elements."""
        name, settings = jail.settings.name, jail.settings.prefix
        assert settings is not None
        wide, recent = widened
        narrower = list(dict.fromkeys([*recent, *(
            b.target for _, b in self.enforcer.running() if b.jail == name
            and b.origin is not Origin.MANUAL and inside(b.target, wide))]))
        for target in narrower:
            self.enforcer.lift(target, name, "prefix")
            self.entries.pop((name, target), None)
        self.write(lambda db: [store.lift(db, str(t), wall, "prefix", name) for t in narrower])
        jail.remember(wide, decided_at + jail.settings.bantime)
        log.info("prefix_ban", network=str(wide), jail=name, bans=settings.count,
                 window=settings.window, lifted=len(narrower))
        return self.ban(Ban(target=wide, origin=Origin.ESCALATION, jail=name,
                            failures=settings.count, bantime=jail.settings.bantime,
                            decided_at=decided_at), started_at=wall,
                        note=f"{settings.count} bans inside it within {settings.window:g}s")

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
        for held in self.pipeline.jails if found is None else (found,):  # they hold its failures
            held.remember(target, now + bantime)
        return self.ban(ban, note=note)

    def _protection(self, target: Target, jail: Jail | None = None) -> str | None:
        """Why the engine would never ban this target (a trusted proxy, ignoreip, a sender;
        `jail`'s own ignoreip)."""
        p = self.pipeline.protections
        named = {"trusted_proxy": p.trusted_proxies, "ignoreip": p.ignoreip,
                 "sender": p.senders}
        if jail is not None and jail.ignoreip is not None:
            named[f"jails.{jail.settings.name}.ignoreip"] = jail.ignoreip
        for reason, nets in named.items():
            for net in nets.networks:
                if _overlaps(net, target):
                    return f"{reason} {net}"
        return None

    def unban(self, target: Target, reason: str = "unban") -> list[Ban]:
        """End every ban of `target` now, and of an address the bans of the IPv6 prefix the
        jails count it by; the jails forget its failures. Returns the bans that ended (none: it
        was not banned). Wider networks holding an address stay banned (`covering`)."""
        targets = [target]
        if not isinstance(target, IPv4Network | IPv6Network):
            targets += [key for key in {ban_target(jail.key_of(target))
                                        for jail in self.pipeline.jails} if key != target]
        ended = [ban for t in targets for ban in self.enforcer.lift(t, None, reason)]
        for ban in ended:
            self.entries.pop((ban.jail, ban.target), None)
        for jail in self.pipeline.jails:
            jail.forget(target)
        at = self._clock()
        self.write(lambda db: [store.lift(db, str(t), at, reason) for t in targets])
        return ended

    def covering(self, target: Target) -> list[Ban]:
        """Running bans of networks wider than `target` that hold it."""
        return [ban for _, ban in self.enforcer.running() if ban.target != target
                and isinstance(ban.target, IPv4Network | IPv6Network) and inside(target,
                                                                                 ban.target)]

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
        # every ban that would still block some of it: inside it, or a network holding it
        overlapping = {ban.target for _, ban in self.enforcer.running()
                       if _overlaps(ban.target, target)}
        return [ended for t in sorted(overlapping | {target}, key=str)
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
        for watch in self.watches.values():
            watch.expire(self._clock())
        horizon = self._clock() - self.horizon
        for target in list(self.history):
            kept = [record for record in self.history[target] if record.end >= horizon]
            if kept:
                self.history[target] = kept
            else:
                del self.history[target]

    def recall_prefixes(self) -> None:
        """At start: each jail's recent bans per wider prefix, from the history."""
        self.watches.clear()
        jails = {jail.settings.name: jail for jail in self.pipeline.jails
                 if jail.settings.prefix is not None}
        recent = sorted(((record.start, record.jail, target)
                         for target, records in self.history.items() for record in records
                         if record.jail in jails), key=lambda found: found[0])
        for start, name, target in recent:
            settings = jails[name].settings.prefix
            assert settings is not None
            if start > self._clock() - settings.window:
                self.watches.setdefault(name, PrefixWatch(settings)).banned(target, start)

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
    """Whether two targets share an address (CIDR networks either nest or are apart)."""
    if isinstance(a, IPv4Network | IPv6Network):
        return inside(b, a) or (isinstance(b, IPv4Network | IPv6Network) and inside(a, b))
    return inside(a, b) if isinstance(b, IPv4Network | IPv6Network) else a == b
