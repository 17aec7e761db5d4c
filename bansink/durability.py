"""Keeping what counted: the journal writer, RELP resend detection, and replay at start-up."""

from __future__ import annotations

import dataclasses
import hashlib
import sqlite3
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable
from typing import NamedTuple, TypeVar

import structlog

from bansink.engine.jail import BanDecision
from bansink.engine.pipeline import Banned, SecurityPipeline
from bansink.receiver.syslog import SyslogMessage, parse_syslog

from .batching import TickBatcher
from .journal import Journal, JournalDamaged, JournalRow, is_damage

log = structlog.get_logger("bansink")

Done = Callable[[], None]
T = TypeVar("T")
Note = tuple[str, dict[str, object]]
"""A log entry from the writer thread, logged on the event loop: (event, fields)."""


def digest_of(message: SyslogMessage) -> bytes:
    return hashlib.blake2b(message.peer.encode() + b"\0" + message.raw, digest_size=16).digest()


class _Probe:
    __slots__ = ("checked", "sender")

    def __init__(self, sender: str) -> None:
        self.sender = sender
        self.checked = 0


class ResendGuard:
    """Tells librelp's resends from genuine repeats, per RELP session.

    When a connection breaks, librelp resends every frame it holds unacknowledged (at most its
    window) as the first frames of its next session, in their order, with new TXNRs. Of those,
    the ones this side had already taken (acknowledged but the ack lost, or still being
    written) are resends; the rest are new. So a frame is a resend only when:
    - its session is the sender's next one after a session of that sender broke (ended
      without a clean `close`), or after a restart (every session broke);
    - it is among that session's first `window` frames, before its first counted frame that is
      not a resend;
    - its digest (sender and bytes) is one of the last `window` frames the broken session
      took, each matching at most once, within `horizon` seconds of the break.
    Identical messages within one healthy session (a user typing the same wrong password twice
    in a second) always count. The one ambiguity left is inherent: right after a break, a new
    message byte-identical to one the broken session took last is taken for its resend.
    """

    def __init__(self, window: int, horizon: float) -> None:
        self.window, self.horizon = window, horizon
        self._tails: dict[int, deque[bytes]] = {}
        """session -> digests of the last `window` frames it took"""
        self._candidates: dict[str, tuple[Counter[bytes], float]] = {}
        """sender -> (digests that its next sessions may resend, until when)"""
        self._probing: dict[int, _Probe] = {}
        """session -> its probe, while its first frames may be resends"""

    def session_started(self, session: int, sender: str, now: float) -> None:
        self._tails[session] = deque(maxlen=self.window)
        found = self._candidates.get(sender)
        if found is not None:
            if found[1] < now:
                del self._candidates[sender]
            else:
                self._probing[session] = _Probe(sender)

    def is_resend(self, session: int, digest: bytes) -> bool:
        """True if this frame resends one already taken: answer it, count nothing."""
        probe = self._probing.get(session)
        if probe is None:
            return False
        found = self._candidates.get(probe.sender)
        if found is None or probe.checked >= self.window:
            del self._probing[session]
            return False
        probe.checked += 1
        digests = found[0]
        if digests[digest] <= 0:
            return False
        digests[digest] -= 1
        if digests[digest] == 0:
            del digests[digest]
            if not digests:
                del self._candidates[probe.sender]
        return True

    def took(self, session: int, digest: bytes, counted: bool) -> None:
        """The session took this frame (it is acknowledged once kept). The first counted frame
        that is not a resend ends the resends; frames that count toward nothing do not (they
        leave no journal row, so after a restart they are not among the candidates)."""
        tail = self._tails.get(session)
        if tail is not None:
            tail.append(digest)
        if counted:
            self._probing.pop(session, None)

    def forget(self, session: int, sender: str, digest: bytes) -> None:
        """The frame was not kept after all (a failed write): its resend must count, also when
        its session already broke and its digest waits among the candidates."""
        tail = self._tails.get(session)
        if tail is not None and digest in tail:
            tail.remove(digest)
            return
        found = self._candidates.get(sender)
        if found is not None and found[0][digest] > 0:
            found[0][digest] -= 1

    def session_ended(self, session: int, sender: str, clean: bool, now: float) -> None:
        tail = self._tails.pop(session, None)
        self._probing.pop(session, None)
        if not clean and tail:
            self.restore(sender, tail, now + self.horizon)

    def restore(self, sender: str, digests: Iterable[bytes], until: float) -> None:
        """Digests that the sender's next sessions may resend (after a break, or from the
        journal after a restart)."""
        found = self._candidates.get(sender)
        counter = found[0] if found is not None else Counter()
        counter.update(digests)
        if counter:
            self._candidates[sender] = (counter, until)

    def expire(self, now: float) -> None:
        for sender in [s for s, (_, until) in self._candidates.items() if until < now]:
            del self._candidates[sender]

    @property
    def remembered(self) -> int:
        return sum(map(len, self._tails.values())) + sum(
            c.total() for c, _ in self._candidates.values())


class _Item(NamedTuple):
    row: JournalRow | None
    done: Done | None
    session: int
    seq: int


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

    def __init__(self, journal: Journal, interval: float, guard: ResendGuard,
                 *, salvage_horizon: float, max_pending: int = 100_000) -> None:
        self.journal = journal
        self.guard = guard
        self.salvage_horizon = salvage_horizon
        self._batcher: TickBatcher[_Item, list[Note]] = TickBatcher(
            interval, self._write, self._written, "journal")
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
        self._batcher.put(_Item(row, done, session, self._seq))

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
        return self._guarded(lambda: self.journal.append(rows)) if rows else []

    def _housekeeping(self, now: float, prune: bool) -> list[Note]:
        notes = self._guarded(self.journal.verify)
        return notes + self._guarded(lambda: self.journal.prune(now)) if prune else notes

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
            # nothing is acknowledged: RELP senders keep the messages and resend them, and the
            # resends must be taken as new, not as repeats of what was never stored
            for item in batch:
                if item.row is not None and item.row.digest:
                    self.guard.forget(item.session, item.row.peer, item.row.digest)
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

    async def run_blocking(self, fn: Callable[[], T]) -> T:
        return await self._batcher.run_blocking(fn)

    async def close(self) -> None:
        """Write what is queued, then close the file."""
        await self._batcher.close()
        self.journal.close()


def replay(rows: list[JournalRow], pipeline: SecurityPipeline,
           tails: defaultdict[str, deque[bytes]], mono_now: float, wall_now: float,
           counts_since: float) -> list[BanDecision]:
    """Feed stored messages back through the pipeline at the times they were received (those
    since `counts_since`); collect into `tails` each RELP sender's last digests (its next
    session may resend them); return the bans still running, shortened by the time already
    passed."""
    bans = []
    for row in rows:
        if row.digest:  # only RELP rows carry one
            tails[row.peer].append(row.digest)
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
