"""From a syslog message to an outcome: source -> client IP -> protections -> jail."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from bansink.receiver.syslog import SyslogMessage

from .addresses import IPAddress, NetworkSet
from .events import NOT_MATCHED, MalformedEvent, NotMatched, SecurityEvent
from .jail import BanDecision, Jail, JailSettings
from .proxies import resolve_client
from .roundcube import roundcube_event

Source = Callable[[SyslogMessage], SecurityEvent | NotMatched | MalformedEvent]


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


# Outcomes are NamedTuples: one is built per message (see receiver.syslog.SyslogMessage).
class Banned(NamedTuple):
    decision: BanDecision
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
    def __init__(
        self,
        jail: JailSettings,
        protections: Protections,
        sources: Sequence[Source] = (roundcube_event,),
    ) -> None:
        self.jail = Jail(jail)
        self.protections = protections
        self.sources = tuple(sources)
        self.counts: Counter[str] = Counter()

    def handle(self, message: SyslogMessage, now: float) -> Outcome:
        outcome = self._handle(message, now)
        self.counts[type(outcome).__name__] += 1
        return outcome

    def _handle(self, message: SyslogMessage, now: float) -> Outcome:
        result: SecurityEvent | NotMatched | MalformedEvent = NOT_MATCHED
        for source in self.sources:
            result = source(message)
            if not isinstance(result, NotMatched):
                break
        if not isinstance(result, SecurityEvent):
            return result
        ip = resolve_client(result.client_chain, self.protections.trusted_proxies)
        if ip is None:
            return Ignored("unresolvable", result)
        reason = self.protections.reason(ip)
        if reason is not None:
            return Ignored(reason, result)
        decision = self.jail.observe(ip, now)
        if decision is None:
            return Counted(ip, result)
        return Banned(decision, result)

    def expire(self, now: float) -> int:
        return self.jail.expire(now)

    def next_deadline(self) -> float | None:
        return self.jail.next_deadline()
