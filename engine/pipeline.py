"""From a syslog message to an outcome: source -> client IP -> protections -> the jails it feeds."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address
from typing import NamedTuple

from bansink.receiver.syslog import SyslogMessage

from .addresses import IPAddress, NetworkSet, parse_address
from .decisions import Ban, Target
from .events import NOT_MATCHED, MalformedEvent, NotMatched, SecurityEvent
from .jail import Jail, JailSettings
from .proxies import resolve_client
from .sources import Source, registry, tags_of


@dataclass(frozen=True, slots=True)
class Protections:
    """Addresses that are never banned, whatever a message says."""

    trusted_proxies: NetworkSet
    ignoreip: NetworkSet
    senders: NetworkSet
    allowed: NetworkSet = field(default_factory=lambda: NetworkSet(()))
    """The admin's allow entries (`bansink allow`)."""
    any: NetworkSet = field(init=False)
    """All of them at once: one membership test for the common, unprotected case."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "any",
                           self.trusted_proxies | self.ignoreip | self.senders | self.allowed)

    def reason(self, ip: IPAddress) -> str | None:
        if ip not in self.any:
            return None
        if ip in self.trusted_proxies:
            return "trusted_proxy"
        if ip in self.ignoreip:
            return "ignoreip"
        if ip in self.senders:
            return "sender"
        if ip in self.allowed:
            return "allowed"
        return None


@dataclass(frozen=True, slots=True)
class JailSpec:
    """A jail and the sources (names in the pipeline's source mapping) that feed it."""

    settings: JailSettings
    sources: tuple[str, ...]
    tags: frozenset[str] | None = None
    """Hand this jail's sources only messages with these syslog tags (APP-NAMEs); None: the
    tags each source names itself (engine.sources.tags_of)."""
    ignoreip: NetworkSet | None = None
    """Addresses this jail never counts (besides the pipeline's protections)."""

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError(f"jail {self.settings.name}: name at least one source")


# Outcomes are NamedTuples: one is built per message (see receiver.syslog.SyslogMessage).
class Banned(NamedTuple):
    bans: tuple[Ban, ...]
    """One per jail the event pushed over its `maxretry` (one jail today: one ban)."""
    event: SecurityEvent


class Counted(NamedTuple):
    key: Target
    """What the failure counted for: the address, or the IPv6 prefix its jail counts by."""
    event: SecurityEvent


class Ignored(NamedTuple):
    reason: str
    """unresolvable, trusted_proxy, ignoreip, sender or allowed"""
    event: SecurityEvent


Outcome = Banned | Counted | Ignored | NotMatched | MalformedEvent


Route = tuple[Source, Jail, tuple[Jail, ...]]
"""A source, the first jail it feeds and the others: the common case (one jail per source)
makes no loop, hence no iterator, per message."""


class SecurityPipeline:
    """Jails fed by the sources they name. A message goes to the sources that read its syslog
    tag (APP-NAME), in the order the jails first name them, then to the sources that read every
    tag; the first that recognises it (an event, or a malformed one) decides, and its event is
    counted in every jail that source feeds (for that tag). Which sources a tag reaches is one
    dict lookup per message, however many sources there are."""

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
        self.events: Counter[str] = Counter()
        """Security events per source (the event's `service`: the source's name)."""
        self._allowed = protections.allowed
        self.reconfigure(jails, protections)

    def reconfigure(self, jails: Sequence[JailSpec], protections: Protections, *,
                    sources: Mapping[str, Source] | None = None) -> None:
        """New jails, settings, protections and (if given) sources: a reload. A jail whose name
        stays keeps its tracked failures under its new settings; a jail no longer named is
        dropped."""
        if not jails:
            raise ValueError("a pipeline needs at least one jail")
        names = [spec.settings.name for spec in jails]
        if len(set(names)) != len(names):
            raise ValueError(f"jail names must be unique: {names}")
        sources = self._sources if sources is None else sources
        for spec in jails:
            for name in spec.sources:
                if name not in sources:
                    raise ValueError(f"jail {spec.settings.name}: unknown source {name!r} "
                                     f"(known: {', '.join(sorted(sources))})")
        self._sources = sources
        kept = {jail.settings.name: jail for jail in self.jails}
        self.jails = tuple(kept.get(spec.settings.name) or Jail(spec.settings) for spec in jails)
        # (source, the tags it is read for, or None for all) -> the jails it feeds
        fed: dict[tuple[str, frozenset[str] | None], list[Jail]] = {}
        for spec, jail in zip(jails, self.jails, strict=True):
            jail.settings = spec.settings
            jail.ignoreip = spec.ignoreip
            jail.trim()
            self._protect(jail, protections)
            for name in spec.sources:
                tags = spec.tags if spec.tags is not None else tags_of(sources[name])
                if jail not in fed.setdefault((name, tags), []):
                    fed[(name, tags)].append(jail)
        every_tag = [(name, feeds) for (name, tags), feeds in fed.items() if tags is None]
        tagged = {tag for (_, tags) in fed if tags is not None for tag in tags}

        def routes(tag: str | None) -> tuple[Route, ...]:
            chosen = [(name, feeds) for (name, tags), feeds in fed.items()
                      if tags is not None and tag in tags] + every_tag
            return tuple((sources[name], feeds[0], tuple(feeds[1:])) for name, feeds in chosen)

        self._by_tag: dict[str | None, tuple[Route, ...]] = {tag: routes(tag) for tag in tagged}
        self._every_tag: tuple[Route, ...] = routes(None)
        self.protections = replace(protections, allowed=self._allowed)

    def allow(self, networks: NetworkSet) -> None:
        """The admin's allow entries, now (they outlive reconfigure)."""
        self._allowed = networks
        self.protections = replace(self.protections, allowed=networks)
        for jail in self.jails:
            self._protect(jail, self.protections)

    @staticmethod
    def _protect(jail: Jail, protections: Protections) -> None:
        """No IPv6 prefix a jail bans may hold an address bansink protects."""
        own = jail.ignoreip.networks if jail.ignoreip is not None else ()
        jail.protect((*protections.any.networks, *own))

    def jail(self, name: str) -> Jail | None:
        for jail in self.jails:
            if jail.settings.name == name:
                return jail
        return None

    def handle(self, message: SyslogMessage, now: float) -> Outcome:
        outcome = self._handle(message, now)
        self.counts[type(outcome).__name__] += 1
        return outcome

    def _handle(self, message: SyslogMessage, now: float) -> Outcome:
        for source, jail, others in self._by_tag.get(message.app_name, self._every_tag):
            result = source(message)
            if isinstance(result, NotMatched):
                continue
            if not isinstance(result, SecurityEvent):
                return result
            self.events[result.service] += 1
            chain = result.client_chain
            # one hop (every filter source): resolve_client's answer, without its loop
            ip = parse_address(chain[0].strip()) if len(chain) == 1 else \
                resolve_client(chain, self.protections.trusted_proxies)
            if ip is None:
                return Ignored("unresolvable", result)
            if ip in self.protections.any:
                reason = self.protections.reason(ip)
                if reason is not None:
                    return Ignored(reason, result)
            if others:
                return self._every_jail(ip, now, result, (jail, *others))
            if jail.ignoreip is not None and ip in jail.ignoreip:
                return Ignored("ignoreip", result)
            key = ip if type(ip) is IPv4Address else jail.key_of(ip)
            ban = jail.observe(key, now)
            if ban is None:
                return Counted(key, result)
            return Banned((ban,), result)
        return NOT_MATCHED

    @staticmethod
    def _every_jail(ip: IPAddress, now: float, event: SecurityEvent,
                    jails: tuple[Jail, ...]) -> Counted | Banned | Ignored:
        """The event in each jail its source feeds, except those whose ignoreip covers it."""
        bans: tuple[Ban, ...] = ()
        counted: Target | None = None
        for jail in jails:
            if jail.ignoreip is not None and ip in jail.ignoreip:
                continue
            key = jail.key_of(ip)
            counted = counted or key
            more = jail.observe(key, now)
            if more is not None:
                bans = (*bans, more)
        if bans:
            return Banned(bans, event)
        return Counted(counted, event) if counted is not None else Ignored("ignoreip", event)

    @property
    def tracked(self) -> int:
        """Addresses with failures inside a window, summed over the jails."""
        return sum(jail.tracked for jail in self.jails)

    @property
    def evicted(self) -> int:
        return sum(jail.evicted for jail in self.jails)

    @property
    def held(self) -> int:
        """Failures of addresses already banned by that jail: counted, not banned again."""
        return sum(jail.held for jail in self.jails)

    def expire(self, now: float) -> int:
        return sum(jail.expire(now) for jail in self.jails)

    def next_deadline(self) -> float | None:
        deadlines = [d for d in (jail.next_deadline() for jail in self.jails) if d is not None]
        return min(deadlines, default=None)
