"""Keeping what counted: the journal writer, RELP resend detection, and replay at start-up."""

from __future__ import annotations

import dataclasses
import hashlib
from collections import OrderedDict
from collections.abc import Callable

import structlog

from bansink.engine.jail import BanDecision
from bansink.engine.pipeline import Banned, SecurityPipeline
from bansink.receiver.syslog import SyslogMessage, parse_syslog

from .batching import TickBatcher
from .journal import Journal, JournalRow

log = structlog.get_logger("bansink")

Done = Callable[[], None]


def digest_of(message: SyslogMessage) -> bytes:
    return hashlib.blake2b(message.peer.encode() + b"\0" + message.raw, digest_size=16).digest()


class RecentDigests:
    """Digests of the last `max_entries` RELP messages seen within `horizon` seconds.

    librelp resends, byte for byte, the frames that were unanswered when a connection broke: at
    most its window (128 by default, 1024 at most in practice) per connection, the most recent
    ones. So a repeat of the same sender and bytes among the recent messages is a resend. The
    cost: about 100 bytes per remembered message (10 MB at the default cap), and two genuinely
    identical messages from one sender (same timestamp to the second, same user) count once.
    """

    def __init__(self, horizon: float, max_entries: int = 100_000) -> None:
        self.horizon, self.max_entries = horizon, max_entries
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self._inserts = 0

    def seen(self, digest: bytes, at: float) -> bool:
        """True if digest is remembered; otherwise remember it and return False."""
        seen = self._seen
        if digest in seen:
            return True
        seen[digest] = at
        if len(seen) > self.max_entries:
            seen.popitem(last=False)
        self._inserts += 1
        if self._inserts % 1024 == 0:  # forget what is past the horizon, now and then
            horizon = at - self.horizon
            while seen and next(iter(seen.values())) < horizon:
                seen.popitem(last=False)
        return False

    def forget(self, digest: bytes) -> None:
        """The message with this digest was not kept after all: its resend must count."""
        self._seen.pop(digest, None)


class JournalWriter:
    """Batches journal rows: one transaction per tick; `done` callbacks run after the commit.

    A callback without a row is a barrier: it runs once everything put before it is on disk.
    """

    def __init__(self, journal: Journal, interval: float, recent: RecentDigests,
                 max_pending: int = 100_000) -> None:
        self.journal = journal
        self.recent = recent
        self._batcher: TickBatcher[tuple[JournalRow | None, Done | None], None] = TickBatcher(
            interval, self._write, self._written, "journal")
        self.max_pending = max_pending
        self.pending = 0
        self.rows = 0
        self.commits = 0
        self.errors = 0
        self.skipped = 0

    async def open(self) -> None:
        await self._batcher.run_blocking(self.journal.open)

    def put(self, row: JournalRow | None, done: Done | None) -> None:
        """Queue a row (and/or a callback for when it and all before it are on disk).

        A row nobody waits for (UDP, TCP: no acknowledgement was promised) is skipped, and
        counted, while `max_pending` rows wait: under an overload the disk must not turn into
        unbounded memory. RELP rows always queue; the senders' windows bound them.
        """
        if done is None and self.pending >= self.max_pending:
            self.skipped += 1
            return
        self.pending += row is not None
        self._batcher.put((row, done))

    def _write(self, batch: list[tuple[JournalRow | None, Done | None]]) -> None:
        rows = [row for row, _ in batch if row is not None]
        if rows:
            self.journal.append(rows)

    def _written(self, batch: list[tuple[JournalRow | None, Done | None]],
                 result: Exception | None) -> None:
        self.pending -= sum(row is not None for row, _ in batch)
        if isinstance(result, Exception):
            # nothing is acknowledged: RELP senders keep the messages and resend them, and the
            # resends must be taken as new, not as repeats of what was never stored
            for row, _ in batch:
                if row is not None and row.digest:
                    self.recent.forget(row.digest)
            self.errors += 1
            log.error("journal_failed", rows=len(batch), error=repr(result))
            return
        self.commits += 1
        for row, done in batch:
            self.rows += row is not None
            if done is not None:
                done()

    async def run_blocking(self, fn: Callable[[], object]) -> object:
        return await self._batcher.run_blocking(fn)

    async def close(self) -> None:
        """Write what is queued, then close the file."""
        await self._batcher.close()
        self.journal.close()


def replay(rows: list[JournalRow], pipeline: SecurityPipeline, recent: RecentDigests,
           mono_now: float, wall_now: float, counts_since: float) -> list[BanDecision]:
    """Feed stored messages back through the pipeline at the times they were received (those
    since `counts_since`; older RELP rows only refill the resend memory); return the bans still
    running, shortened by the time already passed."""
    bans = []
    for row in rows:
        if row.transport.startswith("relp"):
            recent.seen(row.digest, row.received_at)
        if row.received_at < counts_since:
            continue
        message = parse_syslog(row.raw, peer=row.peer, received_at=row.received_at)
        if not isinstance(message, SyslogMessage):
            continue
        outcome = pipeline.handle(message, mono_now - (wall_now - row.received_at))
        if type(outcome) is Banned:
            left = outcome.decision.bantime - (wall_now - row.received_at)
            if left >= 1:
                bans.append(dataclasses.replace(outcome.decision, bantime=left,
                                                decided_at=mono_now))
    return bans


def journal_row(message: SyslogMessage, transport: str, digest: bytes) -> JournalRow:
    return JournalRow(message.received_at, transport, message.peer, message.raw, digest)


