"""Start-up: the journal's rows go back through the hub's judge at the times they were received,
so failure counts, running bans and RELP resend candidates are what they were before."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time
from collections import defaultdict, deque
from itertools import islice

import structlog

from bansink.engine.decisions import Ban
from bansink.engine.pipeline import Banned
from bansink.receiver.syslog import parse_syslog

from .hub import Hub
from .store.journal import JournalRow, is_damage
from .store.writer import JournalWriter

log = structlog.get_logger("bansink")

CHUNK = 10_000
"""Rows read at a time: a full store does not have to fit in memory at once."""


def replay(rows: list[JournalRow], hub: Hub, tails: defaultdict[str, deque[bytes]],
           mono_now: float, wall_now: float, counts_since: float) -> list[tuple[Ban, float]]:
    """Judge stored messages again at the times they were received (those since
    `counts_since`); collect into `tails` each RELP sender's last digests (its next session may
    resend them); return the bans still running, shortened by the time already passed, each
    with the wall-clock time it was decided at."""
    bans = []
    for row in rows:
        if row.digest:  # only RELP rows carry one
            tails[row.peer].append(row.digest)
        if row.received_at < counts_since:
            continue
        message = parse_syslog(row.raw, peer=row.peer, received_at=row.received_at)
        outcome = hub.judge(message, mono_now - (wall_now - row.received_at), quiet=True)
        if isinstance(outcome, Banned):
            for ban in outcome.bans:
                left = ban.bantime - (wall_now - row.received_at)
                if left >= 1:
                    bans.append((dataclasses.replace(ban, bantime=left, decided_at=mono_now),
                                 row.received_at))
    return bans


async def replay_journal(writer: JournalWriter, hub: Hub, *, findtime: float,
                         relp_dedupe: float) -> None:
    """Rebuild failure counts, running bans and the RELP resend candidates from the journal. A
    file that turns out damaged part-way is moved aside; what was read from it still counts."""
    loop = asyncio.get_running_loop()
    started, wall = loop.time(), time.time()
    tails: defaultdict[str, deque[bytes]] = defaultdict(lambda: deque(maxlen=hub.guard.window))
    count = banned = 0
    stats: dict[str, int] = {}
    try:
        rows = writer.journal.replay(wall - max(findtime, relp_dedupe))
        while chunk := await writer.run_blocking(lambda: list(islice(rows, CHUNK))):
            for ban, decided in replay(chunk, hub, tails, loop.time(), wall,
                                       counts_since=wall - findtime):
                hub.bans.ban(ban, started_at=decided)
                banned += 1
            count += len(chunk)
        stats = await writer.run_blocking(writer.journal.stats)
    except sqlite3.DatabaseError as exc:
        if not is_damage(exc):
            raise
        aside, _ = await writer.run_blocking(lambda: writer.journal.recover(wall))
        log.error("journal_recovered_from_damage", fault=str(exc), moved_to=aside,
                  replayed_before=count)
    # every session broke when bansink stopped: the senders' next sessions may resend
    for sender, digests in tails.items():
        hub.guard.restore(sender, digests, loop.time() + relp_dedupe)
    log.info("replayed", rows=count, bans=banned, tracked=hub.pipeline.tracked,
             seconds=round(loop.time() - started, 3), **stats)
