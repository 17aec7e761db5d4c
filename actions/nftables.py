"""Bans as elements of nftables sets with per-element timeouts, via libnftables' JSON API.

bansink owns one table (default `inet bansink`) holding two sets, `ban4` and `ban6`
(`flags timeout`), and one chain on the input hook that drops packets from their members, with
counters. Not `flags interval`: with nft 1.0.6 (Debian 12) every change to an interval set costs
time in proportion to the whole set (adding 20 elements to a 50,000-element set: 0.25 s, against
1 ms without `interval`), and deleting is quadratic (a re-ban of 4,000 addresses: over 30 s,
against 95 ms). Prefix bans, when they come, belong in a small interval set of their own. Never
auto-merge, which corrupts sets with timeouts. The kernel expires each
element on time, even while bansink is stopped, so there is no unban scheduler.

A (re-)ban is `add` + `delete` + `add` of the element in one transaction: the first add makes the
delete safe when the element is absent, and the delete makes the new timeout stick on kernels
before 6.12, which ignore the timeout of an element that is re-added. Queued bans go out in one
transaction per commit, never one call per ban.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

from bansink.engine.jail import BanDecision

from .backend import BackendUnavailable, CommitResult

_INSTALL_HINT = (
    "install Debian's nftables bindings (apt-get install nftables python3-nftables) and run "
    "bansink with Debian's python3 (deploy/setup.sh does both), or use --dry-run"
)


def load_libnftables() -> Any:
    """A libnftables context with JSON output, or BackendUnavailable saying what to install."""
    try:
        import nftables  # type: ignore[import-not-found]
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


class NftablesError(Exception):
    pass


def _match(left: dict[str, Any], right: Any) -> dict[str, Any]:
    return {"match": {"op": "==", "left": left, "right": right}}


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
        ports: Sequence[int] = (),
    ) -> None:
        self.family, self.table, self.chain = family, table, chain
        self.set4, self.set6 = set4, set6
        self.priority = priority
        self.ports = tuple(sorted(set(ports)))
        self._nft: Any = None
        self._pending: dict[str, BanDecision] = {}

    # -- running commands ---------------------------------------------------------------------

    def _run(self, commands: list[dict[str, Any]]) -> Any:
        rc, output, error = self._nft.json_cmd({"nftables": commands})
        if rc != 0:
            message = " ".join(str(error).split()) or f"libnftables returned {rc}"
            if "Operation not permitted" in message:
                raise BackendUnavailable(
                    "nftables refused: bansink needs root (CAP_NET_ADMIN) to manage its table; "
                    "run it as root or use --dry-run"
                )
            raise NftablesError(message)
        return output

    def _ref(self, **extra: Any) -> dict[str, Any]:
        return {"family": self.family, "table": self.table, **extra}

    # -- the table ------------------------------------------------------------------------------

    def _rules(self) -> list[dict[str, Any]]:
        rules = []
        for proto, name in (("ip", self.set4), ("ip6", self.set6)):
            expr = [_match({"payload": {"protocol": proto, "field": "saddr"}}, f"@{name}")]
            if self.ports:
                expr += [
                    _match({"meta": {"key": "l4proto"}}, {"set": ["tcp", "udp"]}),
                    _match({"payload": {"protocol": "th", "field": "dport"}},
                           {"set": list(self.ports)}),
                ]
            expr += [{"counter": None}, {"drop": None}]
            rules.append(expr)
        digest = hashlib.sha256(json.dumps(rules, sort_keys=True).encode()).hexdigest()[:12]
        return [
            {"rule": self._ref(chain=self.chain, expr=expr, comment=f"bansink {digest}")}
            for expr in rules
        ]

    def setup(self) -> None:
        """Create the table, sets and chain where missing; never touch set contents or other
        tables. The chain's rules are replaced atomically when they differ from the config."""
        if self._nft is None:
            self._nft = load_libnftables()
        if os.geteuid() != 0:
            raise BackendUnavailable(
                "bansink needs root (CAP_NET_ADMIN) to manage nftables; run it as root or use "
                "--dry-run"
            )
        sets = [
            {"add": {"set": self._ref(name=name, type=kind, flags=["timeout"])}}
            for name, kind in ((self.set4, "ipv4_addr"), (self.set6, "ipv6_addr"))
        ]
        chain = self._ref(name=self.chain, type="filter", hook="input", prio=self.priority,
                          policy="accept")
        try:
            self._run([{"add": {"table": self._ref(name=self.table)}}, *sets,
                       {"add": {"chain": chain}}])
        except NftablesError as exc:
            raise NftablesError(
                f"cannot create table {self.family} {self.table} ({exc}); if it was made by an "
                f"older config, remove it with `bansink nft remove`"
            ) from None
        wanted = self._rules()
        listed = self._run([{"list": {"chain": self._ref(name=self.chain)}}])
        have = [item["rule"].get("comment") for item in listed["nftables"] if "rule" in item]
        if have != [r["rule"]["comment"] for r in wanted]:
            self._run([{"flush": {"chain": self._ref(name=self.chain)}},
                       *({"add": r} for r in wanted)])

    def remove(self) -> bool:
        """Delete bansink's own table (and every ban in it); False if there was none."""
        if self._nft is None:
            self._nft = load_libnftables()
        listed = self._run([{"list": {"tables": {"family": self.family}}}])
        names = {item["table"]["name"] for item in listed["nftables"] if "table" in item}
        if self.table not in names:
            return False
        self._run([{"delete": {"table": self._ref(name=self.table)}}])
        return True

    # -- bans -----------------------------------------------------------------------------------

    def add(self, ban: BanDecision) -> None:
        self._pending[str(ban.ip)] = ban

    def _transaction(self, bans: Sequence[BanDecision]) -> list[dict[str, Any]]:
        commands: list[dict[str, Any]] = []
        for version, name in ((4, self.set4), (6, self.set6)):
            mine = [b for b in bans if b.ip.version == version]
            if not mine:
                continue
            values = [str(b.ip) for b in mine]
            placeholder = [{"elem": {"val": v, "timeout": 1}} for v in values]
            timed = [{"elem": {"val": str(b.ip), "timeout": max(1, round(b.bantime))}}
                     for b in mine]
            commands += [
                {"add": {"element": self._ref(name=name, elem=placeholder)}},
                {"delete": {"element": self._ref(name=name, elem=values)}},
                {"add": {"element": self._ref(name=name, elem=timed)}},
            ]
        return commands

    def commit(self) -> CommitResult:
        """Apply the queued bans, MAX_ELEMENTS_PER_TRANSACTION at a time (a million bans from
        a replay would otherwise be one multi-second netlink transaction)."""
        bans = tuple(self._pending.values())
        self._pending.clear()
        for start in range(0, len(bans), MAX_ELEMENTS_PER_TRANSACTION):
            chunk = bans[start : start + MAX_ELEMENTS_PER_TRANSACTION]
            commands = self._transaction(chunk)
            try:
                self._run(commands)
            except NftablesError as first:
                # e.g. the table was deleted under us (`nft flush ruleset`): rebuild, retry once
                try:
                    self.setup()
                    self._run(commands)
                except (NftablesError, BackendUnavailable) as exc:
                    return CommitResult(bans[start:],
                                        error=f"{first}; after re-creating the table: {exc}")
        return CommitResult(bans)
