"""Counting failures per IP in a sliding window and deciding bans (fail2ban's vocabulary).

A jail bans an address once it has `maxretry` failures within `findtime` seconds, for `bantime`
seconds. Memory is bounded: at most `max_tracked` addresses are tracked; past that the address
whose latest failure is oldest is forgotten first (and counted in `evicted`).

An address a jail has banned is not banned again by that jail until the ban ends: the failures
still in flight from it (a burst read after the decision, a journal replayed at start) are
counted (`held`) and journaled, but make no new ban, as fail2ban's list of banned addresses does
(a 100,000-line burst once gave 6,800 ban operations for 251 attackers).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from .addresses import IPAddress, NetworkSet
from .decisions import Ban, Origin
from .escalation import EscalationSettings


@dataclass(frozen=True, slots=True)
class JailSettings:
    name: str
    maxretry: int = 6
    findtime: float = 600.0
    bantime: float = 3600.0
    max_tracked: int = 1_000_000
    escalation: EscalationSettings | None = None
    """Longer bans for repeat offenders (`bantime.increment` …); None: every ban lasts
    `bantime`."""

    def __post_init__(self) -> None:
        if self.maxretry < 1:
            raise ValueError("maxretry must be at least 1")
        if self.findtime <= 0 or self.bantime <= 0:
            raise ValueError("findtime and bantime must be positive")
        if self.max_tracked < 1:
            raise ValueError("max_tracked must be at least 1")


class Jail:
    def __init__(self, settings: JailSettings) -> None:
        self.settings = settings
        self.ignoreip: NetworkSet | None = None
        """Addresses this jail never counts (the pipeline checks it before `observe`)."""
        # address -> monotonic time of its failure (one failure, the common case), or a tuple of
        # them, oldest first. Floats and tuples of floats are not followed by the cyclic GC and
        # are small: this keeps a million tracked addresses cheap. The dict is ordered by each
        # address's latest failure, so expiry and eviction pop from the front.
        self._failures: OrderedDict[IPAddress, float | tuple[float, ...]] = OrderedDict()
        self.evicted = 0
        self._banned: OrderedDict[IPAddress, float] = OrderedDict()
        """address -> monotonic end of this jail's ban of it, in the order they were decided
        (so, with one bantime, the order in which they end)"""
        self.held = 0
        """Failures of addresses this jail had banned already: counted, no new ban."""
        self.failed = 0
        """Failures observed since start (fail2ban's "Total failed")."""
        self.bans = 0
        """Bans decided since start (fail2ban's "Total banned")."""

    @property
    def tracked(self) -> int:
        return len(self._failures)

    @property
    def banned(self) -> int:
        """Addresses whose ban by this jail has not ended (as far as the jail knows)."""
        return len(self._banned)

    def _times(self, ip: IPAddress) -> tuple[float, ...]:
        times = self._failures.get(ip, ())
        return times if isinstance(times, tuple) else (times,)

    def failures_of(self, ip: IPAddress, now: float) -> int:
        horizon = now - self.settings.findtime
        return sum(1 for t in self._times(ip) if t > horizon)

    def trim(self) -> int:
        """Forget the quietest addresses past `max_tracked` (after it was lowered)."""
        failures, dropped = self._failures, 0
        while len(failures) > self.settings.max_tracked:
            failures.popitem(last=False)
            dropped += 1
        self.evicted += dropped
        return dropped

    def observe(self, ip: IPAddress, now: float) -> Ban | None:
        """Record one failure of `ip` at `now`; return a ban when it crosses `maxretry`."""
        s = self.settings
        self.failed += 1
        end = self._banned.get(ip)
        if end is not None:
            if end > now:
                self.held += 1
                return None
            del self._banned[ip]
        failures = self._failures
        before = failures.pop(ip, None)
        if before is None:
            if s.maxretry > 1:
                if len(failures) >= s.max_tracked:
                    failures.popitem(last=False)
                    self.evicted += 1
                failures[ip] = now
                return None
            times: tuple[float, ...] = (now,)
        else:
            horizon = now - s.findtime
            if isinstance(before, tuple):
                times = (*(t for t in before if t > horizon), now)
            else:
                times = (before, now) if before > horizon else (now,)
        if len(times) >= s.maxretry:
            self._banned[ip] = now + s.bantime
            if len(self._banned) > s.max_tracked:
                self._banned.popitem(last=False)
            self.bans += 1
            return Ban(target=ip, origin=Origin.JAIL, jail=s.name, failures=len(times),
                       bantime=s.bantime, decided_at=now)
        failures[ip] = times[0] if len(times) == 1 else times
        return None

    def remember(self, ip: IPAddress, until: float) -> None:
        """Hold `ip`'s failures until `until` (monotonic): a ban that runs till then (made
        longer, made by hand, restored at start), or one lifted then, whose earlier failures
        must not count again when the journal is replayed."""
        self._failures.pop(ip, None)
        self._banned.pop(ip, None)
        self._banned[ip] = until

    def forget(self, ip: IPAddress) -> None:
        """An unban: `ip` starts again from no failures and is banned again after `maxretry`
        more."""
        self._failures.pop(ip, None)
        self._banned.pop(ip, None)

    def next_deadline(self) -> float | None:
        """When the address quiet the longest leaves the window (`expire` has work), if any."""
        deadlines = []
        if self._failures:
            times = next(iter(self._failures.values()))
            deadlines.append((times[-1] if isinstance(times, tuple) else times)
                             + self.settings.findtime)
        if self._banned:
            deadlines.append(next(iter(self._banned.values())))
        return min(deadlines, default=None)

    def expire(self, now: float) -> int:
        """Forget addresses whose latest failure has left the window, and bans that ended;
        return how many addresses left the window."""
        banned = self._banned
        while banned and next(iter(banned.values())) <= now:
            banned.popitem(last=False)
        horizon = now - self.settings.findtime
        failures = self._failures
        dropped = 0
        while failures:
            ip, times = next(iter(failures.items()))
            latest = times[-1] if isinstance(times, tuple) else times
            if latest > horizon:
                break
            del failures[ip]
            dropped += 1
        return dropped
