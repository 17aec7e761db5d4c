"""From a syslog message to an outcome: source -> client IP -> protections -> the jails it feeds."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from bansink.receiver.syslog import SyslogMessage

from .addresses import IPAddress, NetworkSet
from .decisions import Ban
from .events import NOT_MATCHED, MalformedEvent, NotMatched, SecurityEvent
from .jail import Jail, JailSettings
from .proxies import resolve_client
from .sources import Source, registry


@dataclass(frozen=True, slots=True)
class Protections:
    """Addresses that are never banned, whatever a message says."""

    trusted_proxies: NetworkSet
    ignoreip: NetworkSet
    senders: NetworkSet
    any: NetworkSet = field(init=False)
    """All three at once: one membership test for the common, unprotected case."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "any", self.trusted_proxies | self.ignoreip | self.senders)

    def reason(self, ip: IPAddress) -> str | None:
        if ip not in self.any:
            return None
        if ip in self.trusted_proxies:
            return "trusted_proxy"
        if ip in self.ignoreip:
            return "ignoreip"
        if ip in self.senders:
            return "sender"
        return None


@dataclass(frozen=True, slots=True)
class JailSpec:
    """A jail and the sources (names in engine.sources.registry) that feed it."""

    settings: JailSettings
    sources: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError(f"jail {self.settings.name}: name at least one source")


# Outcomes are NamedTuples: one is built per message (see receiver.syslog.SyslogMessage).
class Banned(NamedTuple):
    bans: tuple[Ban, ...]
    """One per jail the event pushed over its `maxretry` (one jail today: one ban)."""
    event: SecurityEvent


class Counted(NamedTuple):
    ip: IPAddress
    event: SecurityEvent


class Ignored(NamedTuple):
    reason: str
    """unresolvable, trusted_proxy, ignoreip or sender"""
    event: SecurityEvent


Outcome = Banned | Counted | Ignored | NotMatched | MalformedEvent


class SecurityPipeline:
    """Jails fed by the sources they name. A message goes to the sources in the order the jails
    first name them; the first that recognises it (an event, or a malformed one) decides, and
    its event is counted in every jail that source feeds."""

    def __init__(
        self,
        jails: Sequence[JailSpec],
        protections: Protections,
        *,
        sources: Mapping[str, Source] = registry,
    ) -> None:
        self._sources = sources
        self.jails: tuple[Jail, ...] = ()
        self.counts: Counter[str] = Counter()
        self.reconfigure(jails, protections)

    def reconfigure(self, jails: Sequence[JailSpec], protections: Protections) -> None:
        """New jails, settings and protections (a reload). A jail whose name stays keeps its
        tracked failures under its new settings; a jail no longer named is dropped."""
        if not jails:
            raise ValueError("a pipeline needs at least one jail")
        names = [spec.settings.name for spec in jails]
        if len(set(names)) != len(names):
            raise ValueError(f"jail names must be unique: {names}")
        sources = self._sources
        for spec in jails:
            for name in spec.sources:
                if name not in sources:
                    raise ValueError(f"jail {spec.settings.name}: unknown source {name!r} "
                                     f"(known: {', '.join(sorted(sources))})")
        kept = {jail.settings.name: jail for jail in self.jails}
        self.jails = tuple(kept.get(spec.settings.name) or Jail(spec.settings) for spec in jails)
        fed: dict[str, list[Jail]] = {}
        for spec, jail in zip(jails, self.jails, strict=True):
            jail.settings = spec.settings
            jail.trim()
            for name in spec.sources:
                if jail not in fed.setdefault(name, []):
                    fed[name].append(jail)
        # per source: its first jail and the others, so that the common case (one jail per
        # source) makes no loop, hence no iterator, per message
        self._routes: tuple[tuple[Source, Jail, tuple[Jail, ...]], ...] = tuple(
            (sources[name], feeds[0], tuple(feeds[1:])) for name, feeds in fed.items())
        self.protections = protections

    def handle(self, message: SyslogMessage, now: float) -> Outcome:
        outcome = self._handle(message, now)
        self.counts[type(outcome).__name__] += 1
        return outcome

    def _handle(self, message: SyslogMessage, now: float) -> Outcome:
        for source, jail, others in self._routes:
            result = source(message)
            if isinstance(result, NotMatched):
                continue
            if not isinstance(result, SecurityEvent):
                return result
            ip = resolve_client(result.client_chain, self.protections.trusted_proxies)
            if ip is None:
                return Ignored("unresolvable", result)
            reason = self.protections.reason(ip)
            if reason is not None:
                return Ignored(reason, result)
            ban = jail.observe(ip, now)
            if others:
                return self._more_jails(ip, now, result, ban, others)
            if ban is None:
                return Counted(ip, result)
            return Banned((ban,), result)
        return NOT_MATCHED

    @staticmethod
    def _more_jails(ip: IPAddress, now: float, event: SecurityEvent, ban: Ban | None,
                    others: tuple[Jail, ...]) -> Counted | Banned:
        """The event in the other jails its source feeds (after the first, which made `ban`)."""
        bans = () if ban is None else (ban,)
        for jail in others:
            more = jail.observe(ip, now)
            if more is not None:
                bans = (*bans, more)
        return Banned(bans, event) if bans else Counted(ip, event)

    @property
    def tracked(self) -> int:
        """Addresses with failures inside a window, summed over the jails."""
        return sum(jail.tracked for jail in self.jails)

    @property
    def evicted(self) -> int:
        return sum(jail.evicted for jail in self.jails)

    def expire(self, now: float) -> int:
        return sum(jail.expire(now) for jail in self.jails)

    def next_deadline(self) -> float | None:
        deadlines = [d for d in (jail.next_deadline() for jail in self.jails) if d is not None]
        return min(deadlines, default=None)
