"""What bansink's table holds besides the bans: where each jail's bans go and which ports they
close, and the connection rate limits with the networks they spare.

One set pair per jail (`ban4_kerio`, `ban6_kerio`), each with its own drop rule: a Kerio ban
closes IMAP and SMTP and leaves the web server alone, `nft list set inet bansink ban4_kerio` is
that jail's list with each element's time left, and the rule's counter says what that jail's
bans dropped. The alternative, one pair of `ipv4_addr . inet_service` concatenation sets, would
put a ban's ports into every element (a jail with five ports: five elements per ban) and make
the listing a list of pairs. An address banned by two jails is an element of both pairs, each
with its own timeout, as fail2ban's chain per jail has it. Without jails (an old `[jail]`
config) every ban goes to one shared pair, `ban4`/`ban6`. An admin's ban without a jail
(`bansink ban IP`) goes to the `manual` scope, which closes every port.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bansink.engine.decisions import MANUAL_JAIL

from .nftjson import PortRange
from .ratelimit import RateLimit


@dataclass(frozen=True, slots=True)
class JailScope:
    """A jail's own set pair: its bans drop traffic to `ports` only (empty: all traffic)."""

    name: str
    ports: tuple[PortRange, ...] = ()


@dataclass(frozen=True, slots=True)
class Layout:
    jails: tuple[JailScope, ...] = ()
    """A set pair per jail; empty: one shared pair for every ban, whatever its jail."""
    ports: tuple[PortRange, ...] = ()
    """The shared pair's ports (empty: all traffic)."""
    ratelimits: tuple[RateLimit, ...] = ()
    exempt: tuple[str, ...] = ()
    """Networks (CIDR) the rate limits never apply to: ignoreip, senders, trusted proxies."""
    _by_jail: dict[str, JailScope] = field(init=False, repr=False, compare=False)
    """`scope()`'s answers, made once: it is asked once per ban"""

    def __post_init__(self) -> None:
        by_jail = {scope.name: scope for scope in self.jails}
        by_jail[MANUAL_JAIL] = JailScope(MANUAL_JAIL)
        object.__setattr__(self, "_by_jail", by_jail)

    @property
    def scopes(self) -> tuple[JailScope, ...]:
        """Every scope with sets of its own: the jails' (or the shared one), then `manual`."""
        return (*(self.jails or (JailScope("", self.ports),)), JailScope(MANUAL_JAIL))

    def scope(self, jail: str) -> JailScope | None:
        """The scope a ban of `jail` goes to; None when jails are configured and this is none
        of them."""
        found = self._by_jail.get(jail)
        if found is None and not self.jails:
            return JailScope("", self.ports)
        return found
