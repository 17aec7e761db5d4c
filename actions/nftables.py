"""Bans as elements of nftables sets with per-element timeouts, via libnftables (its JSON API;
the element transactions in nft's own syntax, see _transaction).

bansink owns one table (default `inet bansink`) holding a pair of sets (`flags timeout`) per
jail, `ban4_JAIL` and `ban6_JAIL` (or one shared pair `ban4`/`ban6` for an old single-jail
config; actions/layout.py says why), and one chain on the input hook that drops packets from
their members (to the jail's ports, or all), with counters, followed by the connection rate
limits (actions/ratelimit.py). Sets in the table that the config no longer asks for are removed
(their bans end with them). Not `flags interval`: with nft 1.0.6 (Debian 12) every change to an
interval set costs time in proportion to the whole set (adding 20 elements to a 50,000-element
set: 0.25 s, against 1 ms without `interval`), and deleting is quadratic (a re-ban of 4,000
addresses: over 30 s, against 95 ms). Prefix bans, when they come, belong in a small interval
set of their own. Never auto-merge, which corrupts sets with timeouts. The kernel expires each
element on time, even while bansink is stopped, so there is no unban scheduler.

A (re-)ban is `add` + `delete` + `add` of the element in one transaction: the first add makes the
delete safe when the element is absent, and the delete makes the new timeout stick on kernels
before 6.12, which ignore the timeout of an element that is re-added. Deleting a ban (the end of
it) is the same without the last `add`, so deleting an element that is absent (expired, never
banned) does not fail the transaction (nft's `delete element` alone would: ENOENT). Queued bans
and deletions go out in one transaction per commit, never one call per ban. Into an address set
this backend has just created (at start, or rebuilding a deleted table) a ban whose element it
has not added there yet is a plain `add`: the set is known to be without it (100,000 elements:
0.48 s of libnftables instead of 1.12 s, the restore's path). That knowledge (the texts added)
is kept only while the set is filled in bulk: a transaction adding fewer than FRESH_BULK
elements to it, or the start's reconciliation (remove_strays), ends it. Into a set that was
there at start, the restored bans would be written again (add+delete+add of 100,000: 1.1 s of
libnftables, and the start's listing for strays waited behind it): `survey()` lists those sets
once before the restore, a restored ban whose element is there with the same end (within
SURVEY_TOLERANCE) is not written again, and remove_strays() reads the same listing.

A ban's target may be a network (engine.decisions.Ban): each scope has a second, small pair of
sets for those, `net4_JAIL`/`net6_JAIL` (`flags interval,timeout`, never auto-merge), so that
the big address sets stay fast. The `manual` scope holds an admin's bans made without a jail;
it closes every port.

Local senders (optional). With loopback senders allowed, any local account could send syslog to
127.0.0.1:514 and get any address banned. Given `local_ports` and `local_uids`, the table gets a
second chain, on the output hook, that rejects packets leaving through `lo` (traffic to any of
the host's own addresses goes through lo, not only to 127.0.0.1 and ::1) for those ports when
the sending socket's owner (`meta skuid`) is not one of `local_uids`. On a packet without a full
socket (a kernel RST, an ICMP error, a TIME_WAIT reply) `meta skuid` matches nothing, neither
`==` nor `!=`, so those pass untouched. TCP is answered with a reset (connect() fails at once
with ECONNREFUSED), UDP with port unreachable (the send fails with EPERM).

Watching the table. `nft flush ruleset` or a firewall reload removes bansink's table, bans
included, without telling anyone; `nft flush set` empties one set and leaves no trace in a
terse listing. `verify()` spots that in a terse listing of the family's
ruleset (`nft -t list ruleset inet`: sets without their elements, a few milliseconds with
100,000 bans; in nft 1.0.6 `list sets` without -t returns every element, and `list chain`,
`list table` and even `list tables` fetch them all, -t or not: about 0.5 s at 100,000),
re-creates what is missing and says what it was, so that the caller can add back the bans it
still holds. A flushed set is found by its canary: every ban set holds one element that is never
a source address (255.255.255.255, ff02::1), without a timeout and with a comment saying what it
is; `get element` of it costs in proportion to that set's size (0.1 ms for a small set, 18 ms at
10,000 elements, 0.5 s at 100,000, measured with nft 1.0.6), so a set whose check took long is
checked less often (at most every CANARY_SLOW_INTERVAL), on a libnftables context of its own
that does not hold up commits.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any

from bansink.engine.addresses import parse_address, text_of
from bansink.engine.decisions import Ban, Target

from .backend import BackendUnavailable, CommitResult
from .layout import JailScope, Layout
from .nftjson import match, one_or_set, port_values
from .ratelimit import SET_PREFIX, ratelimit_sets_and_rules

_INSTALL_HINT = (
    "install Debian's nftables bindings (apt-get install nftables python3-nftables) and run "
    "bansink with Debian's python3 (deploy/setup.sh does both), or use --dry-run"
)
_PRIVILEGE_HINT = (
    "managing nftables needs CAP_NET_ADMIN: run bansink as root, or as its own user with that "
    "capability (AmbientCapabilities=CAP_NET_ADMIN in the systemd unit, or `setpriv "
    "--ambient-caps +net_admin`), or use --dry-run"
)
CAP_NET_ADMIN = 12  # linux/capability.h


def has_net_admin() -> bool:
    """Whether this process holds CAP_NET_ADMIN in its effective set (root usually does, an
    unprivileged user only when granted it). Root is assumed to when /proc is unreadable."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0


def load_libnftables() -> Any:
    """A libnftables context with JSON output, or BackendUnavailable saying what to install."""
    try:
        import nftables  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        raise BackendUnavailable(
            f"the nftables Python bindings are missing: {_INSTALL_HINT}"
        ) from None
    try:
        nft = nftables.Nftables()
    except OSError as exc:
        raise BackendUnavailable(f"libnftables cannot be loaded ({exc}): {_INSTALL_HINT}") from None
    nft.set_json_output(True)
    return nft


MAX_ELEMENTS_PER_TRANSACTION = 10_000  # a netlink batch of a bounded size (~0.3 s at most)

CANARY = {4: "255.255.255.255", 6: "ff02::1"}
"""Per set, an element no packet can carry as its source: its absence means the set was
flushed."""
CANARY_COMMENT = "bansink canary: never a source address; gone means the set was flushed"
CANARY_SLOW = 0.05
"""A canary check that took longer than this (seconds) is repeated at most every
CANARY_SLOW_INTERVAL."""
CANARY_SLOW_INTERVAL = 4.0
SURVEY_TOLERANCE = 2.0
"""Seconds by which a listed element's end may differ from its ban's and still be left as it
is (the kernel lists whole seconds; a ban's timeout was rounded to one)."""
FRESH_BULK = 1000
"""Elements a transaction adds to a set this backend just created, under which the set's
element texts stop being tracked (see the module's docstring)."""


def element_value(target: Target) -> str | dict[str, Any]:
    """An address, or a network as nft's JSON prefix."""
    if isinstance(target, IPv4Network | IPv6Network):
        return {"prefix": {"addr": str(target.network_address), "len": target.prefixlen}}
    return str(target)


def parse_element(value: Any) -> Target | None:
    """A listed element's value as a target (None for what bansink never adds)."""
    try:
        if isinstance(value, dict) and "prefix" in value:
            prefix = value["prefix"]
            return ip_network(f"{prefix['addr']}/{prefix['len']}")
        if isinstance(value, str):
            address = parse_address(value) if "/" not in value else None
            if address is not None:  # (the engine's parser: ipaddress' is several times slower)
                return address
            network = ip_network(value)
            return network.network_address if network.num_addresses == 1 else network
    except (KeyError, ValueError):
        return None
    return None


_Change = tuple[JailScope | None, Target, Ban | None, str]


class NftablesError(Exception):
    pass


LOCAL_PROTOCOLS = ("tcp", "udp")
_REJECT = {
    "tcp": {"reject": {"type": "tcp reset"}},  # connect() fails at once
    "udp": {"reject": {"type": "icmpx", "expr": "port-unreachable"}},
}


@dataclass(frozen=True, slots=True)
class _Chain:
    """A base chain bansink wants, with its rules (each carrying the digest comment)."""

    name: str
    hook: str
    priority: int
    rules: tuple[dict[str, Any], ...]

    @property
    def comments(self) -> list[str]:
        return [rule["comment"] for rule in self.rules]


@dataclass(slots=True)
class _Inventory:
    """What the kernel holds of bansink's table, from a listing without set elements."""

    table: bool = False
    sets: set[str] = field(default_factory=set)
    chains: dict[str, list[str | None]] = field(default_factory=dict)  # rule comments, in order


class NftablesSet:
    def __init__(
        self,
        *,
        family: str = "inet",
        table: str = "bansink",
        set4: str = "ban4",
        set6: str = "ban6",
        chain: str = "input",
        priority: int = -10,
        layout: Layout | None = None,
        local_ports: Sequence[tuple[str, int]] = (),
        local_uids: Sequence[int] | None = None,
        local_chain: str = "local_senders",
        local_priority: int = -10,
    ) -> None:
        """`layout`: the set pair per jail with its ports, and the rate limits.

        `local_ports` (("udp" | "tcp", port) pairs bansink listens on) and `local_uids`
        together turn on the local-senders guard: only sockets owned by those uids may send to
        those ports over loopback. Without either, the guard chain is absent (and removed)."""
        self.family, self.table, self.chain = family, table, chain
        self.set4, self.set6 = set4, set6
        self.priority = priority
        self.layout = layout or Layout()
        self.local_ports = tuple(sorted({(proto, int(port)) for proto, port in local_ports}))
        for proto, port in self.local_ports:
            if proto not in LOCAL_PROTOCOLS or not 0 < port < 65536:
                raise ValueError(f"local_ports: {(proto, port)!r} is not ('udp'|'tcp', 1-65535)")
        self.local_uids = None if local_uids is None else tuple(sorted(set(local_uids)))
        if self.local_ports and self.local_uids == ():
            raise ValueError("local_uids is empty: name at least the uid bansink's senders run "
                             "as (0 for root), or None to turn the guard off")
        self.local_chain, self.local_priority = local_chain, local_priority
        self._nft: Any = None
        self._watcher: Any = None  # a context of its own for the canary checks
        self._canary_checked: dict[str, tuple[float, float]] = {}
        """set -> (monotonic time of its last canary check, how long that took)"""
        self._pending: dict[tuple[str, str], _Change] = {}
        """(scope name, str(target)) -> (the jail's scope, target, its ban or None for a
        deletion, str(target)); the latest request for one set wins. The scope is None for a
        ban of a jail the layout lacks (keyed by the jail's name)."""
        self._lock = threading.RLock()  # one libnftables context: one call at a time
        self._created: set[str] = set()
        """ban sets this backend created since the last remove_strays(): they hold nothing
        bansink did not put there, so that needs no listing of them"""
        self._surveyed: dict[str, dict[str, float]] = {}
        """address set -> {element text: monotonic end (math.inf: no timeout)} as survey()
        listed it; an element bansink writes or deletes leaves it"""
        self._fresh: dict[str, set[str]] = {}
        """address set -> the element texts added since this backend created it empty (while
        it is filled in bulk): a ban of any other text is a plain add there"""

    def configure(self, layout: Layout) -> None:
        """Take another layout (a reload); the next setup() applies it to the table."""
        with self._lock:
            self.layout = layout

    def sets_of(self, scope: JailScope) -> tuple[str, str]:
        """The IPv4 and IPv6 address set names of a jail's scope (the shared pair for the
        unnamed)."""
        if not scope.name:
            return self.set4, self.set6
        return f"{self.set4}_{scope.name}", f"{self.set6}_{scope.name}"

    @staticmethod
    def nets_of(scope: JailScope) -> tuple[str, str]:
        """The IPv4 and IPv6 network set names of a jail's scope."""
        suffix = f"_{scope.name}" if scope.name else ""
        return f"net4{suffix}", f"net6{suffix}"

    def _scopes(self) -> tuple[JailScope, ...]:
        return self.layout.scopes

    def _ban_sets(self) -> list[tuple[str, str, int, bool]]:
        """(name, type, IP version, whether it holds networks) of every ban set the layout asks
        for."""
        found = []
        for scope in self._scopes():
            for names, nets in ((self.sets_of(scope), False), (self.nets_of(scope), True)):
                found += [(name, kind, version, nets) for name, kind, version in
                          zip(names, ("ipv4_addr", "ipv6_addr"), (4, 6), strict=True)]
        return found

    def _ratelimits(self) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
        exempt = self.layout.exempt
        return ratelimit_sets_and_rules(
            self.family, self.table, self.chain, self.layout.ratelimits,
            [net for net in exempt if ":" not in net], [net for net in exempt if ":" in net])

    @property
    def guarded(self) -> bool:
        """Whether the local-senders guard chain is part of the table."""
        return bool(self.local_ports) and self.local_uids is not None

    # -- running commands ---------------------------------------------------------------------

    def _load(self) -> None:
        if self._nft is None:
            self._nft = load_libnftables()
            self._nft.set_terse_output(True)  # listings without set elements: see verify()

    def _run(self, commands: list[dict[str, Any]]) -> Any:
        rc, output, error = self._nft.json_cmd({"nftables": commands})
        if rc != 0:
            message = " ".join(str(error).split()) or f"libnftables returned {rc}"
            if "Operation not permitted" in message:
                raise BackendUnavailable(f"nftables refused: {_PRIVILEGE_HINT}")
            raise NftablesError(message)
        return output

    def _ref(self, **extra: Any) -> dict[str, Any]:
        return {"family": self.family, "table": self.table, **extra}

    # -- the table ------------------------------------------------------------------------------

    def _with_digest(self, chain: str, rules: list[list[dict[str, Any]]]) -> tuple[dict, ...]:
        digest = hashlib.sha256(json.dumps(rules, sort_keys=True).encode()).hexdigest()[:12]
        return tuple(self._ref(chain=chain, expr=expr, comment=f"bansink {digest}")
                     for expr in rules)

    def _input_rules(self) -> list[list[dict[str, Any]]]:
        """Per jail, a drop rule for each of its sets (to its ports, or all traffic); then the
        rate limits."""
        rules = []
        for scope in self._scopes():
            names = [*zip(("ip", "ip6"), self.sets_of(scope), strict=True),
                     *zip(("ip", "ip6"), self.nets_of(scope), strict=True)]
            for proto, name in names:
                expr = [match({"payload": {"protocol": proto, "field": "saddr"}}, f"@{name}")]
                if scope.ports:
                    expr += [
                        match({"meta": {"key": "l4proto"}}, {"set": ["tcp", "udp"]}),
                        match({"payload": {"protocol": "th", "field": "dport"}},
                              one_or_set(port_values(scope.ports))),
                    ]
                expr += [{"counter": None}, {"drop": None}]
                rules.append(expr)
        return rules + self._ratelimits()[1]

    def _guard_rules(self) -> list[list[dict[str, Any]]]:
        """One rule per protocol: out through lo, to our port, from a socket of another uid."""
        assert self.local_uids is not None
        rules = []
        for proto in LOCAL_PROTOCOLS:
            ports = [port for p, port in self.local_ports if p == proto]
            if ports:
                rules.append([
                    match({"meta": {"key": "oifname"}}, "lo"),
                    match({"payload": {"protocol": proto, "field": "dport"}}, one_or_set(ports)),
                    match({"meta": {"key": "skuid"}}, one_or_set(self.local_uids), op="!="),
                    {"counter": None},
                    _REJECT[proto],
                ])
        return rules

    def _wanted(self) -> list[_Chain]:
        chains = [_Chain(self.chain, "input", self.priority,
                         self._with_digest(self.chain, self._input_rules()))]
        if self.guarded:
            chains.append(_Chain(self.local_chain, "output", self.local_priority,
                                 self._with_digest(self.local_chain, self._guard_rules())))
        return chains

    def _inventory(self) -> _Inventory:
        """bansink's table as the kernel has it: one terse listing of the family's ruleset."""
        listed = self._run([{"list": {"ruleset": {"family": self.family}}}])
        found = _Inventory()
        for item in listed["nftables"]:
            kind, body = next(iter(item.items()))
            if not isinstance(body, dict) or body.get("family") != self.family:
                continue
            if kind == "table" and body["name"] == self.table:
                found.table = True
            elif body.get("table") != self.table:
                continue
            elif kind == "set":
                found.sets.add(body["name"])
            elif kind == "chain":
                found.chains.setdefault(body["name"], [])
            elif kind == "rule":
                found.chains.setdefault(body["chain"], []).append(body.get("comment"))
        return found

    def setup(self) -> None:
        """Create the table, sets and chains where missing; never touch set contents or other
        tables. A chain whose rules differ from the config gets them replaced, and chains the
        config does not ask for are removed, all in one transaction."""
        self._load()
        if not has_net_admin():
            raise BackendUnavailable(_PRIVILEGE_HINT)
        with self._lock:
            have = self._inventory()
            try:
                self._run(self._setup_commands(have))
                created = {name for name, *_ in self._ban_sets() if name not in have.sets}
                self._created |= created
                self._fresh.update((name, set()) for name, _, _, nets in self._ban_sets()
                                   if name in created and not nets)
            except NftablesError as exc:
                raise NftablesError(
                    f"cannot create table {self.family} {self.table} ({exc}); if it was made by "
                    f"an older config, remove it with `bansink nft remove`"
                ) from None

    def _setup_commands(self, have: _Inventory) -> list[dict[str, Any]]:
        commands: list[dict[str, Any]] = [{"add": {"table": self._ref(name=self.table)}}]
        for name, kind, version, nets in self._ban_sets():
            flags = ["interval", "timeout"] if nets else ["timeout"]
            commands += [
                {"add": {"set": self._ref(name=name, type=kind, flags=flags)}},
                {"add": {"element": self._ref(name=name, elem=[
                    {"elem": {"val": CANARY[version], "comment": CANARY_COMMENT}}])}},
            ]
        # a rate limit's set only when missing: re-adding one can fail (see ratelimit.py)
        limit_sets = self._ratelimits()[0]
        commands += [command for command in limit_sets
                     if command["add"]["set"]["name"] not in have.sets]
        wanted = self._wanted()
        for chain in wanted:
            commands.append({"add": {"chain": self._ref(
                name=chain.name, type="filter", hook=chain.hook, prio=chain.priority,
                policy="accept")}})
            rules = have.chains.get(chain.name)
            if rules != chain.comments:
                if rules is not None:
                    commands.append({"flush": {"chain": self._ref(name=chain.name)}})
                commands += ({"add": {"rule": rule}} for rule in chain.rules)
        for name in have.chains.keys() - {chain.name for chain in wanted}:
            commands += [{"flush": {"chain": self._ref(name=name)}},
                         {"delete": {"chain": self._ref(name=name)}}]
        # after the rules that used them are gone, in the same transaction
        commands += [{"delete": {"set": self._ref(name=name)}}
                     for name in sorted(have.sets - self._wanted_sets())]
        return commands

    def _wanted_sets(self) -> set[str]:
        return ({name for name, *_ in self._ban_sets()}
                | {command["add"]["set"]["name"] for command in self._ratelimits()[0]})

    def _problems(self, have: _Inventory) -> tuple[list[str], bool]:
        """What differs from the config, and whether bans were lost with it."""
        if not have.table:
            return [f"table {self.family} {self.table} was missing"], True
        problems = [f"set {name} was missing" for name, *_ in self._ban_sets()
                    if name not in have.sets]
        lost = bool(problems)
        problems += [f"rate limit set {name} was missing"
                     for name in sorted(self._wanted_sets() - have.sets)
                     if name.startswith(SET_PREFIX)]
        problems += [f"set {name} is not in the config"
                     for name in sorted(have.sets - self._wanted_sets())]
        wanted = self._wanted()
        for chain in wanted:
            rules = have.chains.get(chain.name)
            if rules is None:
                problems.append(f"chain {chain.name} was missing")
            elif rules != chain.comments:
                problems.append(f"chain {chain.name} had other rules")
        problems += [f"chain {name} is not in the config"
                     for name in sorted(have.chains.keys() - {chain.name for chain in wanted})]
        if problems:
            problems[0] = f"table {self.family} {self.table}: {problems[0]}"
        return problems, lost

    def _repair(self) -> tuple[str | None, bool]:
        with self._lock:
            problems, lost = self._problems(self._inventory())
            if not problems:
                return None, False
            self.setup()
        cause = "flushed or deleted outside bansink" if lost else "changed outside bansink"
        done = "re-created it without bans" if lost else "restored"
        return f"{', '.join(problems)} ({cause}); {done}", lost

    def verify(self) -> str | None:
        """Check that the table, its sets and the chains with their rules exist, without
        listing set elements (a few milliseconds, also with 100,000 bans). None when all is
        well; otherwise re-create what is missing (setup()) and return one line saying what
        it was. Raises NftablesError or BackendUnavailable when that fails."""
        self._load()
        problem = self._repair()[0]
        if problem is not None:
            return problem
        flushed = self._flushed()
        if not flushed:
            return None
        with self._lock:
            self.setup()  # puts the canaries back
        return (f"table {self.family} {self.table}: set {', '.join(flushed)} was emptied "
                f"(flushed outside bansink); refilled its canary")

    def _flushed(self) -> list[str]:
        """The ban sets whose canary is gone, each checked as often as its size allows."""
        watcher = self._watching()
        flushed = []
        for name, _, version, _ in self._ban_sets():
            now = time.monotonic()
            checked, took = self._canary_checked.get(name, (-math.inf, 0.0))
            if took > CANARY_SLOW and now - checked < CANARY_SLOW_INTERVAL:
                continue
            rc, _, error = watcher.cmd(
                f"get element {self.family} {self.table} {name} {{ {CANARY[version]} }}")
            self._canary_checked[name] = (now, time.monotonic() - now)
            if rc != 0 and "No such file or directory" in str(error):
                flushed.append(name)
        return flushed

    def _watching(self) -> Any:
        """The second context (not terse: it lists set elements)."""
        if self._watcher is None:
            self._watcher = load_libnftables()
        return self._watcher

    def elements(self, skip: set[str] | frozenset[str] = frozenset()) -> dict[str, list[Target]]:
        """Every ban set's elements (canaries left out; not those of the sets in `skip`): a
        full listing, for the reconciliation at start (0.5 s at 100,000 elements)."""
        watcher = self._watching()
        found: dict[str, list[Target]] = {}
        with self._lock:
            for name, *_ in self._ban_sets():
                if name in skip:
                    continue
                found[name] = self._listed(watcher, name)
        return found

    def _elements_of(self, context: Any, name: str) -> Iterator[tuple[Any, dict[str, Any]]]:
        """(value, its attributes: timeout, expires, …) of each element of one set, its canary
        left out. An element without attributes is listed as its value alone."""
        rc, output, error = context.json_cmd(
            {"nftables": [{"list": {"set": self._ref(name=name)}}]})
        if rc != 0:
            raise NftablesError(" ".join(str(error).split()))
        for item in output["nftables"]:
            for elem in item.get("set", {}).get("elem", []):
                body = elem.get("elem") if isinstance(elem, dict) else None
                if body is None:
                    yield elem, {}
                elif body.get("comment") != CANARY_COMMENT:
                    yield body.get("val"), body

    def _listed(self, context: Any, name: str) -> list[Target]:
        """The elements of one set (its canary left out)."""
        return [target for value, _ in self._elements_of(context, name)
                if (target := parse_element(value)) is not None]

    def survey(self) -> None:
        """Before a start's restore: list the address sets that were there already (not those
        setup() just created), so that a restored ban whose element is in place with its end
        is not written again, and remove_strays() needs no second listing. A set that cannot
        be listed is not surveyed (its bans are written as usual)."""
        self._load()
        watcher = self._watching()
        with self._lock:
            for name, _, _, nets in self._ban_sets():
                if nets or name in self._created:
                    continue
                now = time.monotonic()
                try:
                    listed = list(self._elements_of(watcher, name))
                except NftablesError:
                    continue
                self._surveyed[name] = {
                    value: math.inf if body.get("expires") is None else now + body["expires"]
                    for value, body in listed if isinstance(value, str)}

    def _listed_texts(self, name: str) -> set[str]:
        """The elements of a network set as bansink writes them (text_of): what a transaction
        compares its targets with. Without parsing each one (ipaddress' parser made listing a
        set of 200 prefixes 1.2 ms, on each ban's commit); an element nft writes with an
        embedded IPv4 address is parsed, since ipaddress writes it in hex."""
        found = set()
        for value, _ in self._elements_of(self._watching(), name):
            if isinstance(value, dict) and "prefix" in value:
                text = f"{value['prefix']['addr']}/{value['prefix']['len']}"
            elif isinstance(value, str):
                text = value  # one address: a /32 or /128, as an address or a network
                found.add(f"{text}/{128 if ':' in text else 32}")
            else:
                continue
            if ":" in text and "." in text:
                target = parse_element(value)
                text = text_of(target) if target is not None else text
            found.add(text)
        return found

    def remove_strays(self, keep: set[tuple[str, Target]]) -> list[tuple[str, Target]]:
        """Delete the elements that are no running ban (`keep`: (jail, target)) in one
        transaction per set; return (set, target) of each. Sets created since the last call
        (a table made at start: the restored bans were just added) are not listed, surveyed
        ones are read from the survey (whatever bansink wrote since is no stray)."""
        with self._lock:
            fresh, self._created = self._created, set()
            self._fresh.clear()
            surveyed, self._surveyed = self._surveyed, {}
        listed = self.elements(skip=fresh | surveyed.keys())
        for name, ends in surveyed.items():
            listed[name] = [target for text in ends
                            if (target := parse_element(text)) is not None]
        if not listed:
            return []
        wanted = {(self.set_of(jail, target), target) for jail, target in keep}
        strays = [(name, target) for name, targets in listed.items()
                  for target in targets if (name, target) not in wanted]
        by_set: dict[str, list[str | dict[str, Any]]] = {}
        for name, target in strays:
            by_set.setdefault(name, []).append(element_value(target))
        with self._lock:
            for name, values in by_set.items():
                for start in range(0, len(values), MAX_ELEMENTS_PER_TRANSACTION):
                    chunk = values[start : start + MAX_ELEMENTS_PER_TRANSACTION]
                    # the placeholder: one that expired since the listing cannot fail the delete
                    placeholder = [{"elem": {"val": v, "timeout": 1}} for v in chunk]
                    self._run([{"add": {"element": self._ref(name=name, elem=placeholder)}},
                               {"delete": {"element": self._ref(name=name, elem=chunk)}}])
        return strays

    def set_of(self, jail: str, target: Target) -> str | None:
        """The set a ban of `jail` on `target` goes to (None: no such jail)."""
        scope = self.layout.scope(jail)
        return None if scope is None else self._set_in(scope, target)

    def _set_in(self, scope: JailScope, target: Target) -> str:
        """The set of `scope` that holds `target`: its network or its address set, by IP
        version."""
        names = (self.nets_of(scope) if isinstance(target, IPv4Network | IPv6Network)
                 else self.sets_of(scope))
        return names[target.version == 6]

    def remove(self) -> bool:
        """Delete bansink's own table (and every ban in it); False if there was none."""
        self._load()
        with self._lock:
            if not self._inventory().table:
                return False
            self._run([{"delete": {"table": self._ref(name=self.table)}}])
            return True

    # -- bans -----------------------------------------------------------------------------------

    def add(self, ban: Ban) -> None:
        scope = self.layout.scope(ban.jail)
        text = text_of(ban.target)  # once: the key, and the element's value
        key = (ban.jail if scope is None else scope.name, text)
        self._pending.pop(key, None)  # keep the order of the requests
        self._pending[key] = (scope, ban.target, ban, text)

    def delete(self, target: Target, jail: str | None = None) -> None:
        """Queue the end of `jail`'s ban of `target`, or of every jail's (None)."""
        scopes = self._scopes() if jail is None else [self.layout.scope(jail)]
        for scope in scopes:
            if scope is not None:
                text = text_of(target)
                key = (scope.name, text)
                self._pending.pop(key, None)
                self._pending[key] = (scope, target, None, text)

    def _transaction(self, changes: Sequence[tuple[JailScope, Target, Ban | None, str]]) -> str:
        """Per set: the deletions, then the bans with their timeouts (none for a ban until
        lifted). A ban is delete + add, so that a repeated ban gets its new timeout (kernels
        before 6.12 ignore the timeout of a re-added element). In an address set a placeholder
        comes first (a delete cannot fail on an absent element then); in an interval set
        (networks) nft 1.0.6 refuses that sequence when a wider prefix replaces narrower ones
        ("interval overlaps"), so only the elements listed there are deleted: those sets are
        small.

        In nft's own syntax rather than JSON: the same transaction, but its text is joined in
        5 ms per 100,000 elements where the JSON's dicts and json.dumps took 0.27 s, all of it
        holding the GIL that the event loop needs, and libnftables parses it faster (add,
        delete, add of 100,000 elements: 0.85 s against 1.21 s, measured with nft 1.0.6).
        In a set this backend just created, a ban of an element not added there yet is a plain
        add (see the module's docstring)."""
        by_set: dict[str, list[tuple[Target, str, Ban | None]]] = {}
        for scope, target, ban, value in changes:
            by_set.setdefault(self._set_in(scope, target), []).append((target, value, ban))
        where = f"{self.family} {self.table}"
        commands: list[str] = []
        for name, mine in by_set.items():
            intervals = isinstance(mine[0][0], IPv4Network | IPv6Network)
            present: set[str] = set()
            if intervals:
                try:
                    present = self._listed_texts(name)
                except NftablesError:
                    pass  # no set (yet): nothing to delete; the commit re-creates the table
            gone = [(t, v) for t, v, ban in mine if ban is None]
            banned = [(t, v) for t, v, ban in mine if ban is not None]
            listed = self._surveyed.get(name)
            if listed is not None:
                in_place = set()
                for _, v, ban in mine:
                    end = listed.pop(v, None)  # what is written or deleted leaves the survey
                    if end is not None and ban is not None:
                        wanted = ban.decided_at + ban.bantime
                        if end == wanted or abs(end - wanted) <= SURVEY_TOLERANCE:
                            in_place.add(v)
                if in_place:
                    banned = [(t, v) for t, v in banned if v not in in_place]
                    mine = [(t, v, ban) for t, v, ban in mine if v not in in_place]
            added = self._fresh.get(name)
            if added is not None:
                if len(banned) < FRESH_BULK:
                    del self._fresh[name]  # filled in bulk no more: the usual path from now on
                else:
                    # absent for sure: plain adds (the timed add below); the rest as usual
                    absent = {v for _, v in banned if v not in added}
                    added.update(v for _, v, _ in mine)  # a failed commit errs on the safe side
                    banned = [(t, v) for t, v in banned if v not in absent]
            for touched in (gone, banned):
                values = [v for _, v in touched if not intervals or v in present]
                if values and not intervals:
                    commands.append(f"add element {where} {name} "
                                    f"{{ {' timeout 1s, '.join(values)} timeout 1s }}")
                if values:
                    commands.append(f"delete element {where} {name} {{ {', '.join(values)} }}")
            timed = [f"{value} timeout {max(1, round(ban.bantime))}s"
                     if math.isfinite(ban.bantime) else value
                     for _, value, ban in mine if ban is not None]
            if timed:
                commands.append(f"add element {where} {name} {{ {', '.join(timed)} }}")
        return "\n".join(commands)

    def _run_text(self, commands: str) -> None:
        """Run commands in nft's syntax in one transaction; errors as _run's (libnftables
        repeats the offending command under its error: only the error lines are kept)."""
        rc, _, error = self._nft.cmd(commands)
        if rc != 0:
            said = [line for line in str(error).splitlines() if line.startswith("Error:")]
            message = " ".join(" ".join(said).split())[:2000] or f"libnftables returned {rc}"
            if "Operation not permitted" in message:
                raise BackendUnavailable(f"nftables refused: {_PRIVILEGE_HINT}")
            raise NftablesError(message)

    def commit(self) -> CommitResult:
        """Apply the queued bans and deletions, MAX_ELEMENTS_PER_TRANSACTION at a time (a
        million bans from a replay would otherwise be one multi-second netlink transaction).
        When a transaction fails because the table or a set was gone, they are re-created and
        the transaction retried once; the result then says `rebuilt`: every other ban was lost
        with them. Bans of a jail the layout lacks are refused."""
        pending, self._pending = self._pending, {}
        changes: list[tuple[JailScope, Target, Ban | None, str]] = []
        refused: list[tuple[Target, Ban | None]] = []
        unknown: set[str] = set()
        for scope, target, ban, value in pending.values():
            if scope is not None:
                changes.append((scope, target, ban, value))
            else:
                refused.append((target, ban))
                if ban is not None:
                    unknown.add(ban.jail)
        rebuilt = False
        error: str | None = None
        failed: Sequence[tuple[Target, Ban | None]] = ()
        with self._lock:
            for start in range(0, len(changes), MAX_ELEMENTS_PER_TRANSACTION):
                commands = self._transaction(changes[start : start + MAX_ELEMENTS_PER_TRANSACTION])
                try:
                    self._run_text(commands)
                except NftablesError as first:
                    # e.g. the table was deleted under us (`nft flush ruleset`): rebuild, retry
                    try:
                        rebuilt = self._repair()[1] or rebuilt
                        self._run_text(commands)
                    except (NftablesError, BackendUnavailable) as exc:
                        error = f"{first}; after checking the table: {exc}"
                        failed = [(target, ban) for _, target, ban, _ in changes[start:]]
                        break
        if refused:
            named = ", ".join(str(target) for target, _ in refused[:5])
            more = f" and {len(refused) - 5} more" if len(refused) > 5 else ""
            why = (f"refused {named}{more}: no set pair for jail {', '.join(sorted(unknown))} "
                   f"(not in the running config)")
            error = why if error is None else f"{error}; {why}"
            failed = [*failed, *refused]
        if error is not None:
            return CommitResult(tuple(ban for _, ban in failed if ban is not None), error=error,
                                rebuilt=rebuilt,
                                deletes=tuple(dict.fromkeys(
                                    target for target, ban in failed if ban is None)),
                                refused=tuple(target for target, _ in refused))
        return CommitResult(tuple(ban for _, _, ban, _ in changes if ban is not None),
                            rebuilt=rebuilt,
                            deletes=tuple(dict.fromkeys(
                                target for _, target, ban, _ in changes if ban is None)))
