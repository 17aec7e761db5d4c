"""Bans to the backend: batched commits, and the running bans kept until they end."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv6Address
from typing import NamedTuple, TypeVar

import structlog

from bansink.actions.backend import BanBackend, CommitResult
from bansink.actions.layout import Layout
from bansink.engine.addresses import text_of
from bansink.engine.decisions import Ban, Target

from .batching import TickBatcher
from .logs import Throttle

log = structlog.get_logger("bansink")
T = TypeVar("T")

_Key = tuple[str, Target]
"""A ban's place: (jail, target). One address can be banned by several jails, each in its own
set pair with its own end."""


def _key(ban: Ban) -> _Key:
    return ban.jail, ban.target


class Lift(NamedTuple):
    """The early end of a ban: `jail`'s ban of `target`, or every jail's (None)."""

    target: Target
    jail: str | None
    reason: str

BAN_LINES_UP_TO = 64
"""New bans per commit up to which each gets its own `ban` line; a larger commit (a burst of
attackers) logs `bans` lines listing the targets instead: the per-ban line and its timestamp
were 37 % of the event loop's time per ban in a burst of 100,000 (cProfile). At debug level
every ban gets its `ban` line."""
BAN_LINE_TARGETS = 1000
"""Targets listed in one `bans` line at most (a longer group is split into several lines)."""


def _until(wall: float, bantime: float) -> str:
    return (datetime.fromtimestamp(wall + bantime, UTC).isoformat(timespec="seconds")
            if math.isfinite(bantime) else "lifted")


INLINE_COMMIT = 64
"""Bans per commit up to which the commit runs on the event loop (well under a millisecond
with libnftables) instead of its thread, where it waited for the GIL behind a busy reader:
ban latency p99 under a 100,000-line burst 75-117 ms on the thread, 33-46 ms inline
(measured); larger batches (a replay, a rebuild) stay on the thread."""


class Enforcer:
    """Batches bans and commits them to the backend, one transaction per tick.

    It remembers the bans it enforced until they end, so that a table flushed or deleted behind
    bansink's back (`nft flush ruleset`, a firewall reload) is rebuilt with every running ban
    and its remaining time: found by `verify()` (the daemon calls it every second) or by a
    commit that had to re-create the table.
    """

    def __init__(self, backend: BanBackend, interval: float) -> None:
        self.backend = backend
        self._batcher: TickBatcher[Ban | Lift, CommitResult] = TickBatcher(
            interval, self._commit, self._report, "nft", inline_up_to=INLINE_COMMIT)
        self.bans = 0
        self.lifts = 0
        self.errors = 0
        self.rebuilds = 0
        self._running: dict[_Key, tuple[float, Ban, str]] = {}
        """(jail, target) -> (monotonic end, ban, str(target)) of every ban enforced and not yet
        over (the text for the admin's lists: 100,000 str() calls were a third of a status)"""
        self._restoring: set[_Key] = set()
        self._retry: dict[_Key, Ban] = {}
        """bans a failed commit left out: tried again at the next verify"""
        self._lift_retry: list[Lift] = []
        self._restore_again = False
        self._throttle = Throttle(60.0)
        self.on_commit: Callable[[float], None] | None = None
        """Told the seconds each ban/unban transaction took, on the thread that ran it."""
        self.on_enforced: Callable[[Ban, float], None] | None = None
        """Told of each new ban (not one put back) once its transaction is through, with
        the seconds since it was decided (`Ban.decided_at`)."""

    async def run_blocking(self, fn: Callable[[], T]) -> T:
        """Blocking backend work on the commit thread, in order with the commits."""
        return await self._batcher.run_blocking(fn)

    async def setup(self) -> None:
        await self._batcher.run_blocking(self.backend.setup)

    async def configure(self, layout: Layout) -> None:
        """Apply another layout (a reload): jails' set pairs and ports, rate limits. Running
        bans of jails that are gone end with their sets; those of the other jails are put back
        if their set was re-created (a jail that left the shared pair for its own)."""
        self.backend.configure(layout)
        try:
            await self._batcher.run_blocking(self.backend.setup)
        except Exception as exc:  # verify() finds what is missing and tries again every second
            log.error("nft_configure_failed", error=str(exc), hint="tried again every second")
        jails = {scope.name for scope in layout.jails}
        gone = [key for key, (_, ban, _) in self._running.items()
                if jails and ban.jail not in jails]
        for key in gone:
            del self._running[key]
        self._rebuild(None)

    def ban(self, ban: Ban) -> None:
        self._batcher.put(ban)

    def restore(self, bans: list[Ban], texts: Sequence[str] | None = None) -> None:
        """Put back bans that were running before (the store's, at start): enforced with their
        remaining time, not logged or counted as new. `texts`: str() of each ban's target,
        when known."""
        for i, ban in enumerate(bans):
            key = _key(ban)
            text = texts[i] if texts is not None else text_of(ban.target)
            self._running[key] = (ban.decided_at + ban.bantime, ban, text)
            self._restoring.add(key)
            self.ban(ban)

    def lift(self, target: Target, jail: str | None, reason: str) -> list[Ban]:
        """End `jail`'s ban of `target` (None: every jail's) now; return the running bans
        that ended."""
        if jail is not None:
            found = self._running.get((jail, target))
            ended = [found[1]] if found is not None else []
        else:
            ended = [ban for (_, t), (_, ban, _) in self._running.items() if t == target]
        for ban in ended:
            key = _key(ban)
            del self._running[key]
            self._restoring.discard(key)
        for key in [key for key in self._retry if key[1] == target
                    and (jail is None or key[0] == jail)]:
            del self._retry[key]
        self._batcher.put(Lift(target, jail, reason))
        return ended

    def running(self) -> Iterator[tuple[float, Ban]]:
        """(monotonic end, ban) of every ban enforced and not over (math.inf: until lifted)."""
        return iter([(end, ban) for end, ban, _ in self._running.values()])

    def listing(self) -> list[tuple[float, Ban, str]]:
        """(monotonic end, ban, str(target)) of every ban enforced and not over."""
        return list(self._running.values())

    def running_keys(self) -> set[_Key]:
        return set(self._running)

    def _commit(self, batch: list[Ban | Lift]) -> CommitResult:
        started = time.perf_counter()
        for item in batch:
            if isinstance(item, Lift):
                self.backend.delete(item.target, item.jail)
            else:
                self.backend.add(item)
        result = self.backend.commit()
        if self.on_commit is not None:
            self.on_commit(time.perf_counter() - started)
        return result

    def _report(self, batch: list[Ban | Lift], result: CommitResult | Exception) -> None:
        now, wall = asyncio.get_running_loop().time(), time.time()
        if isinstance(result, CommitResult) and result.rebuilt:
            self._rebuild("the table was missing when bans were committed")
        failed: tuple[Ban, ...] = ()
        if isinstance(result, Exception) or result.error is not None:
            failed = (tuple(b for b in batch if isinstance(b, Ban))
                      if isinstance(result, Exception) else result.bans)
            refused = result.refused if isinstance(result, CommitResult) else ()
            self._failed(failed, refused, result.error if isinstance(result, CommitResult) else
                         repr(result), now)
        lost = {_key(b) for b in failed}
        unlifted = (set(result.deletes) if isinstance(result, CommitResult) and not result.ok
                    else {item.target for item in batch} if isinstance(result, Exception)
                    else set())
        running, restoring = self._running, self._restoring
        new: list[Ban] = []
        added: set[_Key] = set()
        for b in batch:
            if isinstance(b, Lift):
                if b.target in unlifted:
                    self._lift_retry.append(b)
                    continue
                self.lifts += 1
                # a ban of the same tick that this lift ended (a prefix ban replacing it)
                for key in [k for k in added if k[1] == b.target and b.jail in (None, k[0])]:
                    added.discard(key)
                    self._running.pop(key, None)
                log.info("unban", target=str(b.target), jail=b.jail, reason=b.reason)
                continue
            key = b.jail, b.target
            if lost and key in lost:
                continue
            added.add(key)
            if restoring and key in restoring:  # running already, with its text (restore())
                restoring.discard(key)
                continue
            running[key] = (b.decided_at + b.bantime, b, text_of(b.target))
            new.append(b)
        self.bans += len(new)
        if self.on_enforced is not None:
            for b in new:
                self.on_enforced(b, now - b.decided_at)
        if len(new) <= BAN_LINES_UP_TO or log.is_enabled_for(logging.DEBUG):
            for b in new:
                self._log_ban(b, now, wall)
        else:
            self._log_bans(new, now, wall)

    @staticmethod
    def _log_ban(b: Ban, now: float, wall: float) -> None:
        target = text_of(b.target)
        # `ip` for an address, as operators' searches and the tests read it; `target` always
        address = {"ip": target} if isinstance(b.target, IPv4Address | IPv6Address) else {}
        log.info("ban", **address, target=target, origin=b.origin.value, jail=b.jail,
                 count=b.failures, bantime=b.bantime, until=_until(wall, b.bantime),
                 latency_ms=round((now - b.decided_at) * 1000, 1))

    @staticmethod
    def _log_bans(new: list[Ban], now: float, wall: float) -> None:
        """A large commit's new bans: one `bans` line per jail, origin, count and bantime (and
        per BAN_LINE_TARGETS of them), listing the targets (at debug level each gets its `ban`
        line instead)."""
        groups: dict[tuple[str, str, int, float], list[Ban]] = {}
        for b in new:
            groups.setdefault((b.jail, b.origin.value, b.failures, b.bantime), []).append(b)
        for (jail, origin, count, bantime), bans in groups.items():
            until = _until(wall, bantime)
            for start in range(0, len(bans), BAN_LINE_TARGETS):
                part = bans[start : start + BAN_LINE_TARGETS]
                # decided in order: the first waited longest
                log.info("bans", bans=len(part), targets=[text_of(b.target) for b in part],
                         jail=jail, origin=origin, count=count, bantime=bantime, until=until,
                         latency_ms=round((now - part[0].decided_at) * 1000, 1),
                         latency_ms_min=round((now - part[-1].decided_at) * 1000, 1))

    def _failed(self, failed: tuple[Ban, ...], refused: tuple[Target, ...], error: str | None,
                now: float) -> None:
        """Bans that did not take effect are tried again at the next verify, not dropped;
        except those the backend can never apply (`refused`), which are dropped."""
        self.errors += 1
        never = set(refused)
        for b in failed:
            key = _key(b)
            if b.target in never:
                self._restoring.discard(key)
            elif key in self._restoring:  # a running ban being put back: put all back
                self._restoring.discard(key)
                self._restore_again = True
            else:
                self._retry[key] = b
        held = self._throttle.allow(("ban_failed",), now)
        if held is not None:
            log.error("ban_failed", bans=len(failed),
                      targets=[str(b.target) for b in failed[:20]], error=error,
                      suppressed=held, hint="retried every second, except what the backend "
                                            "refused (it cannot apply those)")

    async def verify(self) -> None:
        """Check the backend's table is whole; if it was rebuilt, put the running bans back;
        try again what a failed commit left out."""
        try:
            problem = await self._batcher.run_blocking(self.backend.verify)
        except Exception as exc:  # e.g. nft refused the rebuild: try again next time
            held = self._throttle.allow(("nft_verify_failed",), asyncio.get_running_loop().time())
            if held is not None:
                log.error("nft_verify_failed", error=str(exc), suppressed=held)
            return
        if problem is not None or self._restore_again:
            self._restore_again = False
            self._rebuild(problem)
        if self._lift_retry:
            lifts, self._lift_retry = self._lift_retry, []
            for lift in lifts:
                self._batcher.put(lift)
        if self._retry:
            now = asyncio.get_running_loop().time()
            retry, self._retry = self._retry, {}
            for b in retry.values():
                if b.decided_at + b.bantime - now >= 1:
                    self.ban(b)

    def _rebuild(self, problem: str | None) -> None:
        now = asyncio.get_running_loop().time()
        self.forget_ended(now)
        for key, (end, ban, _) in self._running.items():
            self._restoring.add(key)
            self.ban(dataclasses.replace(ban, bantime=end - now, decided_at=now))
        if problem is not None:
            self.rebuilds += 1
            log.error("nft_table_rebuilt", problem=problem, bans_restored=len(self._running))

    def forget_ended(self, now: float) -> None:
        """Drop bans that are over (at least 1 s left is needed for a new element)."""
        ended = [key for key, (end, *_) in self._running.items() if end - now < 1]
        for key in ended:
            del self._running[key]

    def counters(self) -> dict[str, object]:
        return {"bans": self.bans, "bans_running": len(self._running), "unbans": self.lifts,
                "ban_errors": self.errors, "nft_rebuilds": self.rebuilds}

    async def close(self) -> None:
        await self._batcher.close()
