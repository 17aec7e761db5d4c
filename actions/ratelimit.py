"""Connection rate limits per source address, in bansink's table: the first `connections` new
connections (or pings) from one address within `window` seconds pass, every further one until
the window ends is dropped and counted.

The James document's first defence does this with iptables' `recent` match (a `--set` rule, then
`--update --seconds 60 --hitcount 4 -j DROP`). In nftables the building block is a dynamic set
whose elements carry a stateful `limit`. For each limit and IP version, bansink declares

    set ratelimit_smtp_4in60s_ip {
        type ipv4_addr
        size 65536
        limit rate over 1/day burst 4 packets
        timeout 1m
    }

and appends to its input chain (after the ban rules)

    tcp dport { 25, 587 } ct state new ip saddr != { 192.0.2.0/24 }
        add @ratelimit_smtp_4in60s_ip { ip saddr } counter drop

How it behaves, step by step (from the kernel's nft_dynset.c and nft_limit.c):

- `add @set { ip saddr }` inserts the source address when it is absent, with its own copy of the
  set's `limit`, and evaluates that limit for every packet that reaches it, new element or old.
- nft's packet limit is a token bucket that holds `burst` packets (for packet limits the bucket is
  `burst` tokens, not rate + burst: that form is for byte limits), starts full, costs one token a
  packet and refills continuously at `rate`. `limit rate over` matches when the bucket is empty,
  and then `counter drop` runs; otherwise the rule stops there and the packet goes on.
- With rate 1/day, not one token comes back within a window shorter than a day, so the bucket is
  simply "N passes, then no more". (nft leaves `burst 5 packets`, its default, out of listings.)
- The element expires `timeout` after it was inserted. `add` never refreshes the timeout (only
  `update` does), so the window is fixed from an address's first new connection: the first N
  within it pass, the others are dropped, and when it ends the next connection starts a new window
  with a full bucket. Dropped attempts do not extend it.

Why not the obvious `update @set { ip saddr limit rate over 4/minute burst 4 packets }` (which
is also what a `meter` compiles to): that bucket refills one token every 15 seconds, so the fifth
connection passes 15 s after the first and up to seven pass in the first minute (4 + 3), not
"four, then drop until the minute is over". And `update` restarts the timeout at every packet,
dropped ones included: with a bucket that does not refill, a client connecting once every 50 s
would be locked out for good after its fourth connection.

Compared with the iptables rules: `--set` records the packet before `--update` counts it, so
`--hitcount 4` lets three connections through and drops the fourth, and every dropped attempt is
recorded too, so a client that keeps retrying stays blocked. Here `connections` is the number
that pass (3 reproduces `--hitcount 4`), and retries do not prolong the window: this is rate
limiting, punishment is the jails' job (bans).

What counts: for tcp and udp, packets in conntrack state new to the given ports (a TCP SYN, and
its retransmissions; a UDP datagram that opens a flow); for icmp, every echo request (ping), with
no conntrack condition (repeated pings of one `ping` process share one conntrack flow).

Why the limit sits in the set and not in the rule's `add`: statements in the `add` need a set
with `flags dynamic` (the kernel answers EINVAL otherwise), and nft 1.0.6's JSON parser does not
know that flag: nft sets it by itself only on a set created in the same batch as a rule that adds
to it. A set declared with the statement gives each new element a copy of it and works with or
without `dynamic`, whichever batch created it.

Adding the sets: only those missing from the table. A set created in the same batch as its rule
comes out `flags dynamic,timeout`, and adding it again from JSON (without `dynamic`) fails with
EEXIST; and a re-added set whose limit or timeout differ would keep the old ones without a word
(the kernel compares the statements' types only). So a set's name carries all its parameters, an
existing set of that name is the right one, and a changed limit gets new sets. Sets named
SET_PREFIX (`ratelimit_`...) that the config no longer asks for are the caller's to delete, once
no rule refers to them (after the chain flush, in the same transaction, works).

Exempt networks (ignoreip, log senders, trusted proxies) are an anonymous interval set inside each
rule, collapsed first: the rule, and so bansink's digest comment, carries the list, so a change
replaces the rules; the elements of a named set would outlive a config change.

Limits. Each set holds at most MAX_TRACKED addresses; when it is full, a new address cannot be
added and its packets pass (the kernel's dynset fails open), so a flood from many (spoofed)
sources can disable the limit but never makes it block legitimate clients. IPv6 is limited per
address, not per /64. Windows are whole seconds (JSON timeouts are), shorter than a day.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, collapse_addresses, ip_network
from typing import Any, Literal

from .nftjson import match, one_or_set

PROTOCOLS = ("tcp", "udp", "icmp")
SET_PREFIX = "ratelimit_"
MAX_TRACKED = 65536  # addresses per set and IP version
MAX_WINDOW = 86399  # seconds: the bucket's refill (1/day) must stay below one token per window
MAX_NAME = 32
_NAME = re.compile(r"[a-z0-9_]+")
_VERSIONS: dict[str, tuple[Literal[4, 6], ...]] = {"inet": (4, 6), "ip": (4,), "ip6": (6,)}
_IP = {4: "ip", 6: "ip6"}
_ICMP = {4: "icmp", 6: "icmpv6"}


@dataclass(frozen=True, slots=True)
class RateLimit:
    """New connections from one source address to `ports` (pings, for icmp): the first
    `connections` within `window` seconds pass, the others until the window ends are dropped."""

    name: str
    protocol: Literal["tcp", "udp", "icmp"]
    ports: tuple[int, ...]
    connections: int
    window: float

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name) \
                or len(self.name) > MAX_NAME:
            raise ValueError(f"rate limit name {self.name!r}: use 1-{MAX_NAME} of [a-z0-9_]")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"rate limit {self.name}: protocol {self.protocol!r} is not one of "
                             f"{', '.join(PROTOCOLS)}")
        for port in self.ports:
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise ValueError(f"rate limit {self.name}: port {port!r} is not 1-65535")
        ports = tuple(sorted(set(self.ports)))
        if self.protocol == "icmp" and ports:
            raise ValueError(f"rate limit {self.name}: icmp has no ports")
        if self.protocol != "icmp" and not ports:
            raise ValueError(f"rate limit {self.name}: {self.protocol} needs at least one port")
        object.__setattr__(self, "ports", ports)
        if isinstance(self.connections, bool) or not isinstance(self.connections, int) \
                or not 0 < self.connections < 2**31:
            raise ValueError(f"rate limit {self.name}: connections must be a positive integer")
        if isinstance(self.window, bool) or not isinstance(self.window, int | float) \
                or not 1 <= self.window <= MAX_WINDOW or not float(self.window).is_integer():
            raise ValueError(f"rate limit {self.name}: window must be whole seconds, 1 to "
                             f"{MAX_WINDOW}")

    def set_name(self, version: Literal[4, 6]) -> str:
        """The set for one IP version, named with the parameters it was declared with."""
        return (f"{SET_PREFIX}{self.name}_{self.connections}in{int(self.window)}s_"
                f"{_IP[version]}")


def _networks(values: Sequence[str], version: int) -> list[IPv4Network | IPv6Network]:
    """The exempt networks of one IP version, collapsed (sorted, overlaps and neighbours merged,
    so that the same networks give the same rule and digest)."""
    found: list[Any] = []
    for value in values:
        try:
            network = ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"exempt{version}: {value!r} is not an address or network") from None
        if network.version != version:
            raise ValueError(f"exempt{version}: {value} is not an IPv{version} network")
        found.append(network)
    return list(collapse_addresses(found))


def _element(network: IPv4Network | IPv6Network) -> Any:
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return {"prefix": {"addr": str(network.network_address), "len": network.prefixlen}}


def _rule(limit: RateLimit, version: Literal[4, 6],
          exempt: list[IPv4Network | IPv6Network]) -> list[dict[str, Any]]:
    saddr = {"payload": {"protocol": _IP[version], "field": "saddr"}}
    if limit.protocol == "icmp":
        expr = [match({"payload": {"protocol": _ICMP[version], "field": "type"}},
                       "echo-request")]
    else:
        expr = [match({"payload": {"protocol": limit.protocol, "field": "dport"}},
                       one_or_set(limit.ports)),
                match({"ct": {"key": "state"}}, "new", op="in")]
    if exempt:
        expr.append(match(saddr, one_or_set([_element(net) for net in exempt]), op="!="))
    return [*expr,
            {"set": {"op": "add", "elem": saddr, "set": f"@{limit.set_name(version)}"}},
            {"counter": None},
            {"drop": None}]


def ratelimit_sets_and_rules(
    family: str, table: str, chain: str, limits: Sequence[RateLimit],
    exempt4: Sequence[str], exempt6: Sequence[str],
) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
    """nft JSON: the `add set` commands (one set per limit and IP version of `family`) and the
    rule expression lists, in the same order, to be appended to `chain` (bansink's input chain)
    after its ban rules. Exempt networks (CIDR strings or addresses) are never limited.

    Add a set only when the table has none of that name (a set's name carries its parameters;
    re-adding an existing one can fail with EEXIST: see the module's docstring). Raises
    ValueError for an unknown family, two limits with one name, or an exempt entry that is no
    network of its IP version."""
    versions = _VERSIONS.get(family)
    if versions is None:
        raise ValueError(f"family {family!r}: rate limits need inet, ip or ip6")
    if not table or not chain:
        raise ValueError("table and chain must be named")
    names = [limit.name for limit in limits]
    if len(set(names)) != len(names):
        twice = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(f"rate limits named twice: {', '.join(twice)}")
    exempt: dict[int, list[IPv4Network | IPv6Network]] = {
        4: _networks(exempt4, 4), 6: _networks(exempt6, 6)}
    sets: list[dict[str, Any]] = []
    rules: list[list[dict[str, Any]]] = []
    for limit in limits:
        bucket = {"limit": {"rate": 1, "per": "day", "burst": limit.connections, "inv": True}}
        for version in versions:
            sets.append({"add": {"set": {
                "family": family, "table": table, "name": limit.set_name(version),
                "type": f"ipv{version}_addr", "flags": ["timeout"],
                "timeout": int(limit.window), "size": MAX_TRACKED, "stmt": [bucket],
            }}})
            rules.append(_rule(limit, version, exempt[version]))
    return sets, rules
