"""The journal's writer: rows batched into one transaction per tick on a thread of its own,
callbacks (RELP acknowledgements) run once their rows are on disk, and faults survived."""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Callable
from typing import NamedTuple, TypeVar

import structlog

from bansink.batching import TickBatcher
from bansink.memory import TRIM_INTERVAL, release_memory

from .journal import Journal, JournalDamaged, JournalRow, Operation, is_damage

log = structlog.get_logger("bansink")

Done = Callable[[], None]
T = TypeVar("T")
Note = tuple[str, dict[str, object]]
"""A log entry from the writer thread, logged on the event loop: (event, fields)."""


class _Item(NamedTuple):
    row: JournalRow | None
    done: Done | None
    session: int
    seq: int
    operation: Operation | None = None
    records: int = 0
    """store records the operation writes (what `ban_records_lost` counts)"""


_new_item = tuple.__new__


class JournalWriter:
    """Batches journal rows: one transaction per tick; `done` callbacks run after the commit.

    A callback without a row is a barrier: it runs once everything put before it is on disk,
    and never when a row put before it failed to be written (the barrier answers a RELP resend,
    which may be the resend of that very row).

    Faults never stop the daemon (bans go on being enforced; RELP senders keep what is not
    acknowledged and send it again):
    - a failing write (a full disk) is logged once, retried with the next batch, and its
      recovery is logged;
    - a damaged, deleted or replaced file is logged, moved aside or salvaged, and replaced by a
      fresh one, and the batch is written into that (Journal.recover);
    - housekeeping (checks, pruning) goes through the same paths.
    """

    def __init__(self, journal: Journal, interval: float, *, salvage_horizon: float,
                 unwritten: Callable[[JournalRow, int], None] = lambda row, session: None,
                 max_pending: int = 100_000, patience: float = 0.0) -> None:
        """`patience`: how long rows nobody waits for (UDP, TCP) may be held to be written with
        later ones (TickBatcher); a row with a `done` (RELP) or an operation is written at the
        next tick, with everything held before it."""
        self.journal = journal
        self.unwritten = unwritten
        """Told of each row a failed write lost (with its session): its resend must count."""
        self.salvage_horizon = salvage_horizon
        self._batcher: TickBatcher[_Item, list[Note]] = TickBatcher(
            interval, self._write, self._written, "journal", patience=patience)
        self.max_pending = max_pending
        self.pending = 0
        self.rows = 0
        self.commits = 0
        self.errors = 0
        self.skipped = 0
        self.recoveries = 0
        self.failing: str | None = None
        """What the last failed operation said, until one succeeds again."""
        self._seq = 0
        self._trimmed_at = -math.inf
        """wall-clock time of the last release_memory()"""
        self._broken: list[tuple[int, int]] = []
        """(first failed row, first item put after the failure was known): barriers between
        them are never answered"""

    async def open(self) -> list[Note]:
        """Open the journal; a damaged one is moved aside and a fresh one started (what
        happened is returned as log entries)."""
        return await self._batcher.run_blocking(lambda: self._guarded(self.journal.open))

    def put(self, row: JournalRow | None, done: Done | None, session: int = 0) -> None:
        """Queue a row (and/or a callback for when it and all before it are on disk).

        A row nobody waits for (UDP, TCP: no acknowledgement was promised) is skipped, and
        counted, while `max_pending` rows wait: under an overload the disk must not turn into
        unbounded memory. RELP rows always queue; the senders' windows bound them.
        """
        if done is None and self.pending >= self.max_pending:
            self.skipped += 1
            return
        self.pending += row is not None
        self._seq += 1
        # built as a tuple is: the NamedTuple's constructor is a Python call (230 against
        # 140 ns, once per row)
        self._batcher.put(_new_item(_Item, (row, done, session, self._seq, None, 0)),
                          urgent=done is not None)

    def put_operation(self, operation: Operation, records: int = 1) -> None:
        """Queue work for the writer's next transaction, after the rows put before it (a ban's
        record links the messages that caused it); `records`: how many store records it
        writes. Lost, and logged, if that write fails."""
        self._seq += 1
        self._batcher.put(_Item(None, None, 0, self._seq, operation, records))

    # -- on the writer thread ----------------------------------------------------------------

    def _guarded(self, operation: Callable[[], object]) -> list[Note]:
        """Run a journal operation; if the file turns out damaged, deleted or replaced, recover
        and run it once more on the fresh file. Other errors propagate."""
        try:
            self.journal.ensure_open()
            operation()
            return []
        except (JournalDamaged, sqlite3.DatabaseError) as exc:
            if not is_damage(exc):
                raise
            fault, done = str(exc), getattr(exc, "committed", False)
        aside, salvaged = self.journal.recover(time.time() - self.salvage_horizon)
        if not done:
            operation()
        return [("journal_recovered_from_damage",
                 {"fault": fault, "moved_to": aside, "salvaged_rows": salvaged})]

    def _write(self, batch: list[_Item]) -> list[Note]:
        rows = [item.row for item in batch if item.row is not None]
        operations = [item.operation for item in batch if item.operation is not None]
        if not rows and not operations:
            return []
        return self._guarded(lambda: self.journal.append(rows, operations))

    def _housekeeping(self, now: float, prune: bool) -> list[Note]:
        notes = self._guarded(self.journal.verify)
        if prune:
            notes += self._guarded(lambda: self.journal.prune(now))
        if not now - TRIM_INTERVAL < self._trimmed_at <= now:
            self._trimmed_at = now
            release_memory()  # what the rows and bans took since, SQLite's and libnftables'
        return notes

    # -- back on the event loop --------------------------------------------------------------

    def _report(self, notes: list[Note] | Exception, wrote: bool = True) -> bool:
        """Log what an operation did; True if it succeeded. Only rows written end a run of
        failures (a check, or a prune with nothing to delete, needs no space)."""
        if isinstance(notes, Exception):
            self.errors += 1
            if self.failing is None:
                self.failing = repr(notes)
                log.error("journal_failed", error=self.failing,
                          hint="bans are still enforced; RELP messages stay unacknowledged "
                               "(their senders keep them) until writing works again")
            return False
        for event, fields in notes:
            self.recoveries += 1
            log.error(event, **fields)
        if wrote and self.failing is not None:
            log.info("journal_writing_again", failed=self.failing)
            self.failing = None
        return True

    def _written(self, batch: list[_Item], result: list[Note] | Exception) -> None:
        rows = sum(item.row is not None for item in batch)
        self.pending -= rows
        if not self._report(result, wrote=rows > 0):
            lost = sum(item.records for item in batch if item.operation is not None)
            if lost:
                log.error("ban_records_lost", records=lost,
                          hint="the bans are enforced; the store misses them until restart")
            # nothing is acknowledged: RELP senders keep the messages and resend them, and the
            # resends must be taken as new, not as repeats of what was never stored
            for item in batch:
                if item.row is not None:
                    self.unwritten(item.row, item.session)
            self._broken.append((batch[0].seq, self._seq + 1))
            return
        self.commits += 1
        broken = self._broken
        for item in batch:
            self.rows += item.row is not None
            if item.done is not None and not (
                    item.row is None and any(lo < item.seq < hi for lo, hi in broken)):
                item.done()
        if broken:  # ranges whose every item has been through are done with
            self._broken = [(lo, hi) for lo, hi in broken if hi > batch[-1].seq]

    async def housekeeping(self, now: float, *, prune: bool) -> None:
        """Check the file is still sound and where it was, then (if asked) prune old rows;
        survive any fault. `now` is wall-clock time."""
        try:
            notes: list[Note] | Exception = await self._batcher.run_blocking(
                lambda: self._housekeeping(now, prune))
        except Exception as exc:
            notes = exc
        self._report(notes, wrote=False)

    def counters(self) -> dict[str, object]:
        return {"journal_rows": self.rows, "journal_commits": self.commits,
                "journal_errors": self.errors, "journal_skipped": self.skipped,
                "journal_pending": self.pending, "journal_recoveries": self.recoveries}

    async def run_blocking(self, fn: Callable[[], T]) -> T:
        return await self._batcher.run_blocking(fn)

    async def close(self) -> None:
        """Write what is queued, then close the file."""
        await self._batcher.close()
        self.journal.close()
