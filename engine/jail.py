"""Counting failures per IP in a sliding window and deciding bans (fail2ban's vocabulary).

A jail bans an address once it has `maxretry` failures within `findtime` seconds, for `bantime`
seconds. Memory is bounded: at most `max_tracked` addresses are tracked; past that the address
whose latest failure is oldest is forgotten first (and counted in `evicted`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from .addresses import IPAddress


@dataclass(frozen=True, slots=True)
class JailSettings:
    name: str
    maxretry: int = 6
    findtime: float = 600.0
    bantime: float = 3600.0
    max_tracked: int = 1_000_000

    def __post_init__(self) -> None:
        if self.maxretry < 1:
            raise ValueError("maxretry must be at least 1")
        if self.findtime <= 0 or self.bantime <= 0:
            raise ValueError("findtime and bantime must be positive")
        if self.max_tracked < 1:
            raise ValueError("max_tracked must be at least 1")


@dataclass(frozen=True, slots=True)
class BanDecision:
    ip: IPAddress
    jail: str
    failures: int
    """Failures inside the window that triggered the ban."""
    bantime: float
    """Seconds the ban lasts."""
    decided_at: float
    """Monotonic time of the decision (the `now` it was made with)."""


class Jail:
    def __init__(self, settings: JailSettings) -> None:
        self.settings = settings
        # address -> monotonic times of its failures inside the window, oldest first. The dict is
        # ordered by each address's latest failure, so expiry and eviction pop from the front.
        self._failures: OrderedDict[IPAddress, list[float]] = OrderedDict()
        self.evicted = 0

    @property
    def tracked(self) -> int:
        return len(self._failures)

    def failures_of(self, ip: IPAddress, now: float) -> int:
        times = self._failures.get(ip)
        if times is None:
            return 0
        horizon = now - self.settings.findtime
        return sum(1 for t in times if t > horizon)

    def observe(self, ip: IPAddress, now: float) -> BanDecision | None:
        """Record one failure of `ip` at `now`; return a ban when it crosses `maxretry`."""
        s = self.settings
        failures = self._failures
        times = failures.pop(ip, None)
        if times is None:
            if len(failures) >= s.max_tracked:
                failures.popitem(last=False)
                self.evicted += 1
            times = [now]
        else:
            horizon = now - s.findtime
            if times[0] <= horizon:
                times = [t for t in times if t > horizon]
            times.append(now)
        if len(times) >= s.maxretry:
            return BanDecision(ip, s.name, len(times), s.bantime, now)
        failures[ip] = times
        return None

    def expire(self, now: float) -> int:
        """Forget addresses whose latest failure has left the window; return how many."""
        horizon = now - self.settings.findtime
        failures = self._failures
        dropped = 0
        while failures:
            ip, times = next(iter(failures.items()))
            if times[-1] > horizon:
                break
            del failures[ip]
            dropped += 1
        return dropped

    def next_deadline(self) -> float | None:
        """When the oldest tracked address leaves the window (for the daemon's expiry timer)."""
        if not self._failures:
            return None
        times = next(iter(self._failures.values()))
        return times[-1] + self.settings.findtime
