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
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Network

from .addresses import IPAddress, IPNetwork, NetworkSet
from .decisions import Ban, Origin, Target
from .escalation import EscalationSettings
from .prefixes import Prefix6, PrefixSettings, ban_target, inside, prefix_of, split_prefixes


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
    ipv6_prefix: int = 64
    """IPv6 clients are counted and banned by this prefix (128: by address); see prefixes.py."""
    prefix: PrefixSettings | None = None
    """Several bans inside one wider prefix make it one ban (`prefix.*`); None: off."""

    def __post_init__(self) -> None:
        if not 16 <= self.ipv6_prefix <= 128:
            raise ValueError("ipv6_prefix must be 16 to 128")
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
        self._split: frozenset[int] = frozenset()
        """IPv6 prefixes holding a protected address: counted by address (prefixes.py)."""
        self._wide: dict[IPNetwork, float] = {}
        """Wider prefixes this jail banned -> monotonic end: bans inside them are held."""
        # address -> monotonic time of its failure (one failure, the common case), or a tuple of
        # them, oldest first. Floats and tuples of floats are not followed by the cyclic GC and
        # are small: this keeps a million tracked addresses cheap. The dict is ordered by each
        # address's latest failure, so expiry and eviction pop from the front.
        self._failures: OrderedDict[Target, float | tuple[float, ...]] = OrderedDict()
        self.evicted = 0
        self._banned: OrderedDict[Target, float] = OrderedDict()
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

    def key_of(self, ip: IPAddress) -> Target:
        """What this jail counts `ip`'s failures under: an IPv4 address itself, an IPv6 one
        by its `ipv6_prefix` (by itself where that prefix holds a protected address)."""
        prefixlen = self.settings.ipv6_prefix
        if isinstance(ip, IPv4Address) or prefixlen == 128:
            return ip
        if self._split and int(ip) >> (128 - prefixlen) in self._split:
            return ip
        return prefix_of(ip, prefixlen)

    def protect(self, protected: Iterable[IPNetwork]) -> None:
        """The addresses bansink never bans, for this jail's IPv6 prefixes (`key_of`)."""
        self._split = split_prefixes(protected, self.settings.ipv6_prefix)

    def _times(self, key: Target) -> tuple[float, ...]:
        times = self._failures.get(key, ())
        return times if isinstance(times, tuple) else (times,)

    def failures_of(self, ip: IPAddress, now: float) -> int:
        horizon = now - self.settings.findtime
        return sum(1 for t in self._times(self.key_of(ip)) if t > horizon)

    def trim(self) -> int:
        """Forget the quietest addresses past `max_tracked` (after it was lowered)."""
        failures, dropped = self._failures, 0
        while len(failures) > self.settings.max_tracked:
            failures.popitem(last=False)
            dropped += 1
        self.evicted += dropped
        return dropped

    def observe(self, ip: Target, now: float) -> Ban | None:
        """Record one failure of `ip` (the key `key_of` gave) at `now`; return a ban when it
        crosses `maxretry`."""
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
            if self._wide:
                covering = self._covering(ip, now)
                if covering is not None:  # a wider ban of this jail holds it already
                    self._banned[ip] = covering
                    self.held += 1
                    return None
            self._banned[ip] = now + s.bantime
            if len(self._banned) > s.max_tracked:
                self._banned.popitem(last=False)
            self.bans += 1
            return Ban(target=ban_target(ip), origin=Origin.JAIL, jail=s.name, failures=len(times),
                       bantime=s.bantime, decided_at=now)
        failures[ip] = times[0] if len(times) == 1 else times
        return None

    def _covering(self, key: Target, now: float) -> float | None:
        """The end of a running wider ban holding `key`, if any."""
        for network, end in self._wide.items():
            if end > now and inside(key, network):
                return end
        return None

    def _wider(self, target: Target) -> IPNetwork | None:
        """`target` if it is a network wider than what this jail counts by."""
        if not isinstance(target, IPv4Network | IPv6Network):
            return None
        return None if target.prefixlen == self.settings.ipv6_prefix else target

    def _key(self, target: Target) -> Target:
        """What a ban's target (not a wider one) is counted under."""
        if isinstance(target, IPv6Network):
            return Prefix6(int(target.network_address), target.prefixlen)
        return target if isinstance(target, IPv4Network) else self.key_of(target)

    def remember(self, target: Target, until: float) -> None:
        """Hold the failures of `target` until `until` (monotonic): a ban that runs till then
        (made longer, made by hand, restored at start), or one lifted then, whose earlier
        failures must not count again when the journal is replayed. A wider network: the bans
        it holds are not made again while it runs."""
        wider = self._wider(target)
        if wider is not None:
            self._wide[wider] = until
            return
        key = self._key(target)
        self._failures.pop(key, None)
        self._banned.pop(key, None)
        self._banned[key] = until

    def forget(self, target: Target) -> None:
        """An unban: `target` starts again from no failures and is banned again after
        `maxretry` more."""
        wider = self._wider(target)
        if wider is not None:
            self._wide.pop(wider, None)
            return
        key = self._key(target)
        self._failures.pop(key, None)
        self._banned.pop(key, None)

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
        if self._wide:
            self._wide = {net: end for net, end in self._wide.items() if end > now}
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
