"""Ban decisions to the backend: batched commits, and the running bans kept until they end."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import UTC, datetime

import structlog

from bansink.actions.backend import BanBackend, CommitResult
from bansink.engine.addresses import IPAddress
from bansink.engine.jail import BanDecision

from .batching import TickBatcher
from .logs import Throttle

log = structlog.get_logger("bansink")


class Enforcer:
    """Batches ban decisions and commits them to the backend, one transaction per tick.

    It remembers the bans it enforced until they end, so that a table flushed or deleted behind
    bansink's back (`nft flush ruleset`, a firewall reload) is rebuilt with every running ban
    and its remaining time: found by `verify()` (the daemon calls it every second) or by a
    commit that had to re-create the table.
    """

    def __init__(self, backend: BanBackend, interval: float) -> None:
        self.backend = backend
        self._batcher: TickBatcher[BanDecision, CommitResult] = TickBatcher(
            interval, self._commit, self._report, "nft")
        self.bans = 0
        self.errors = 0
        self.rebuilds = 0
        self._running: dict[IPAddress, tuple[float, BanDecision]] = {}
        """address -> (monotonic end, decision) of every ban enforced and not yet over"""
        self._restoring: set[IPAddress] = set()
        self._retry: dict[IPAddress, BanDecision] = {}
        """bans a failed commit left out: tried again at the next verify"""
        self._restore_again = False
        self.throttle = Throttle(60.0)

    async def setup(self) -> None:
        await self._batcher.run_blocking(self.backend.setup)

    def ban(self, decision: BanDecision) -> None:
        self._batcher.put(decision)

    def _commit(self, batch: list[BanDecision]) -> CommitResult:
        for decision in batch:
            self.backend.add(decision)
        return self.backend.commit()

    def _report(self, batch: list[BanDecision], result: CommitResult | Exception) -> None:
        now, wall = asyncio.get_running_loop().time(), time.time()
        if isinstance(result, CommitResult) and result.rebuilt:
            self._rebuild("the table was missing when bans were committed")
        failed: tuple[BanDecision, ...] = ()
        if isinstance(result, Exception) or result.error is not None:
            failed = tuple(batch) if isinstance(result, Exception) else result.bans
            self._failed(failed, result.error if isinstance(result, CommitResult) else
                         repr(result), now)
        lost = {b.ip for b in failed}
        for b in batch:
            if b.ip in lost:
                continue
            self._running[b.ip] = (b.decided_at + b.bantime, b)
            if b.ip in self._restoring:
                self._restoring.discard(b.ip)
                continue
            self.bans += 1
            until = datetime.fromtimestamp(wall + b.bantime, UTC).isoformat(timespec="seconds")
            log.info("ban", ip=str(b.ip), jail=b.jail, count=b.failures, bantime=b.bantime,
                     until=until, latency_ms=round((now - b.decided_at) * 1000, 1))

    def _failed(self, failed: tuple[BanDecision, ...], error: str | None, now: float) -> None:
        """Bans that did not take effect are tried again at the next verify, not dropped."""
        self.errors += 1
        for b in failed:
            if b.ip in self._restoring:  # a running ban being put back: put them all back
                self._restoring.discard(b.ip)
                self._restore_again = True
            else:
                self._retry[b.ip] = b
        held = self.throttle.allow(("ban_failed",), now)
        if held is not None:
            log.error("ban_failed", bans=len(failed), ips=[str(b.ip) for b in failed[:20]],
                      error=error, suppressed=held, hint="retried every second")

    async def verify(self) -> None:
        """Check the backend's table is whole; if it was rebuilt, put the running bans back;
        try again what a failed commit left out."""
        try:
            problem = await self._batcher.run_blocking(self.backend.verify)
        except Exception as exc:  # e.g. nft refused the rebuild: try again next time
            held = self.throttle.allow(("nft_verify_failed",), asyncio.get_running_loop().time())
            if held is not None:
                log.error("nft_verify_failed", error=str(exc), suppressed=held)
            return
        if problem is not None or self._restore_again:
            self._restore_again = False
            self._rebuild(problem)
        if self._retry:
            now = asyncio.get_running_loop().time()
            retry, self._retry = self._retry, {}
            for b in retry.values():
                if b.decided_at + b.bantime - now >= 1:
                    self.ban(b)

    def _rebuild(self, problem: str | None) -> None:
        now = asyncio.get_running_loop().time()
        self.forget_ended(now)
        for ip, (end, decision) in self._running.items():
            self._restoring.add(ip)
            self.ban(dataclasses.replace(decision, bantime=end - now, decided_at=now))
        if problem is not None:
            self.rebuilds += 1
            log.error("nft_table_rebuilt", problem=problem, bans_restored=len(self._running))

    def forget_ended(self, now: float) -> None:
        """Drop bans that are over (at least 1 s left is needed for a new element)."""
        ended = [ip for ip, (end, _) in self._running.items() if end - now < 1]
        for ip in ended:
            del self._running[ip]

    def counters(self) -> dict[str, object]:
        return {"bans": self.bans, "bans_running": len(self._running), "ban_errors": self.errors,
                "nft_rebuilds": self.rebuilds}

    async def close(self) -> None:
        await self._batcher.close()
