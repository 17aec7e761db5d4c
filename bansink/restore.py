"""Start-up: the store's running bans are enforced again with their remaining time, the jails
hold the failures that led to them (and to bans lifted since), the admin's allow entries are in
force, and afterwards (once the journal is replayed) the kernel's sets are reconciled: an
element that is no running ban is reported and removed."""

from __future__ import annotations

import asyncio
import math
import time

import structlog

from bansink.engine.addresses import parse_address
from bansink.engine.decisions import MANUAL_JAIL, Ban, Origin, Target
from bansink.engine.escalation import BanRecord

from .bans import AdminError, BanBook, Entry, parse_target
from .store import bans as store
from .store.writer import JournalWriter

log = structlog.get_logger("bansink")

RESTORE_CHUNK = 10_000
"""Running bans handed to the enforcer at a time (and rows between two turns of the event
loop): the first are committed on its thread while the rest are read. The enforcer gets them
all before the book and the jails learn of them: 100,000 bans were all in the kernel 1 s sooner
(measured with bench/bans.py)."""


async def restore_bans(book: BanBook, journal: JournalWriter, *, findtime: float) -> None:
    """Before the journal's replay: put back the running bans and the allow entries; make each
    jail hold the failures of addresses it banned (so that the replay does not ban them again)
    or that were unbanned since `findtime` ago (so that failures from before the unban do not
    count again)."""
    loop = asyncio.get_running_loop()
    wall, mono = time.time(), loop.time()

    def read() -> tuple[list[store.BanRow], list[store.BanRow], list[store.AllowRow],
                        list[store.BanRow]]:
        db = journal.journal.db
        horizon = wall - book.horizon
        history = store.since(db, horizon)
        # the running bans: those in the history, and any older (one read of 100,000 rows
        # instead of two)
        running = store.running(db, wall, started_before=horizon) + [
            row for row in history
            if row.lifted_at is None and (row.ends_at is None or row.ends_at > wall)]
        return running, store.lifted_since(db, wall - findtime), store.allows(db, wall), history

    running, lifted, allows, history = await journal.run_blocking(read)
    targets: dict[str, Target] = {}

    def target_of(text: str) -> Target:
        """The stored text as a target, each text parsed once (history and running bans
        repeat them), addresses with the engine's parser (ipaddress' took 2.3 s for 200,000
        rows); raises AdminError."""
        found = targets.get(text)
        if found is None:
            found = targets[text] = parse_address(text) or parse_target(text)
        return found

    for allow in allows:
        try:
            book.allowed[parse_target(allow.target)] = allow
        except AdminError as exc:
            log.error("store_row_unreadable", table="allow", error=str(exc))
    book.apply_allowed()
    jails = {jail.settings.name: jail for jail in book.pipeline.jails}
    for row in lifted:
        jail = jails.get(row.jail)
        if jail is not None and row.lifted_at is not None and row.lifted_by != "prefix":
            try:
                jail.remember(target_of(row.target), mono - (wall - row.lifted_at))
            except AdminError:
                continue
    restored: list[Ban] = []
    rows: list[store.BanRow] = []  # each restored ban's row
    gone: set[str] = set()
    origins = {origin.value: origin for origin in Origin}
    for row in running:
        if row.jail != MANUAL_JAIL and row.jail not in jails:
            gone.add(row.jail)
            continue
        try:
            target = target_of(row.target)
            origin = origins.get(row.origin) or Origin(row.origin)
        except (AdminError, ValueError) as exc:
            log.error("store_row_unreadable", table="ban", id=row.id, error=str(exc))
            continue
        left = math.inf if row.ends_at is None else row.ends_at - wall
        if left < 1:
            continue
        restored.append(Ban(target=target, origin=origin, jail=row.jail, failures=row.failures,
                            bantime=left, decided_at=mono))
        rows.append(row)
        if len(restored) % RESTORE_CHUNK == 0:
            book.enforcer.restore(restored[-RESTORE_CHUNK:],
                                  [row.target for row in rows[-RESTORE_CHUNK:]])
            await asyncio.sleep(0)  # the commit thread takes them while the rest are read
    rest = len(restored) - len(restored) % RESTORE_CHUNK  # those not handed over yet
    book.enforcer.restore(restored[rest:], [row.target for row in rows[rest:]])
    # the book and the jails learn of them once the enforcer has them all (nothing is received
    # yet); the loop is let run now and then, so that the commit thread keeps getting batches
    for i, (ban, row) in enumerate(zip(restored, rows, strict=True), 1):
        if i % RESTORE_CHUNK == 0:
            await asyncio.sleep(0)
        end = mono + ban.bantime
        book.entries[(row.jail, ban.target)] = Entry(row.started_at, end, row.id, row.step,
                                                     row.note)
        holders = jails.values() if row.jail == MANUAL_JAIL else [jails[row.jail]]
        for jail in holders:
            jail.remember(ban.target, end)
    if gone:
        kept = [*jails, MANUAL_JAIL]
        book.write(lambda db: store.lift_jails_except(db, kept, wall))
        log.warning("bans_of_removed_jails_ended", jails=sorted(gone))
    for i, row in enumerate(history, 1):
        if i % RESTORE_CHUNK == 0:
            await asyncio.sleep(0)
        try:
            target = target_of(row.target)
        except AdminError:
            continue
        record = BanRecord(row.jail, row.started_at,
                           row.lifted_at or (math.inf if row.ends_at is None else row.ends_at))
        records = book.history.get(target)
        if records is None:
            book.history[target] = [record]
        else:
            records.append(record)
    book.recall_prefixes()
    log.info("bans_restored", bans=len(restored), allow_entries=len(book.allowed),
             seconds=round(loop.time() - mono, 3))


async def remove_strays(book: BanBook) -> None:
    """After the replay: remove what bansink's sets hold beyond the running bans (added by
    hand, or left by a ban that was lifted while bansink was stopped)."""
    enforcer = book.enforcer
    keep = enforcer.running_keys()
    try:
        strays = await enforcer.run_blocking(lambda: enforcer.backend.remove_strays(keep))
    except Exception as exc:  # the sets are still enforced; the strays stay until they expire
        log.error("nft_strays_not_removed", error=str(exc))
        return
    if strays:
        log.warning("nft_strays_removed", count=len(strays),
                    elements=[f"{name} {target}" for name, target in strays[:20]],
                    hint="bansink owns its sets: add bans with `bansink ban`")
