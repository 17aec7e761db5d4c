"""The ban store: every ban with where it came from and the messages that caused it, the ban
history per address, and the admin's allow entries, in the journal's SQLite file.

Rows only: targets are text (an address or a CIDR network), times are wall-clock seconds. Each
function takes the connection and runs on the journal's writer thread; writes run inside the
writer's transactions (Journal.append's `operations`), after the messages of the same batch, so
a ban's own messages are in the file when it links them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import NamedTuple

_BAN_COLUMNS = ("id, target, jail, origin, failures, started_at, ends_at, lifted_at, lifted_by, "
                "step, note")


class BanRow(NamedTuple):
    id: int
    target: str
    jail: str
    origin: str
    failures: int
    started_at: float
    ends_at: float | None
    """None: until lifted."""
    lifted_at: float | None
    """When it was ended early (unban, allow), else None."""
    lifted_by: str | None
    step: int
    """How many earlier bans of the target made it longer (0: not escalated)."""
    note: str


class NewBan(NamedTuple):
    target: str
    jail: str
    origin: str
    failures: int
    started_at: float
    ends_at: float | None
    step: int = 0
    note: str = ""
    evidence_since: float | None = None
    """Link the messages that counted for `target` since then (its jail's findtime before the
    ban), the `failures` latest of them; None: none (a manual ban)."""


class AllowRow(NamedTuple):
    target: str
    created_at: float
    until: float | None
    """None: until disallowed."""
    note: str


class MessageRow(NamedTuple):
    id: int
    received_at: float
    transport: str
    peer: str
    raw: bytes
    service: str


def record_ban(db: sqlite3.Connection, ban: NewBan) -> int:
    """Store a ban (and link its messages); return its id."""
    cursor = db.execute(
        "INSERT INTO ban (target, jail, origin, failures, started_at, ends_at, step, note) "
        "VALUES (?,?,?,?,?,?,?,?)",
        (ban.target, ban.jail, ban.origin, ban.failures, ban.started_at, ban.ends_at, ban.step,
         ban.note))
    ban_id = cursor.lastrowid
    assert ban_id is not None
    if ban.evidence_since is not None and ban.failures > 0:
        db.execute(
            "INSERT OR IGNORE INTO ban_message (ban_id, message_id) SELECT ?, id FROM message "
            "WHERE address = ? AND received_at >= ? AND received_at <= ? "
            "ORDER BY id DESC LIMIT ?",
            (ban_id, ban.target, ban.evidence_since, ban.started_at + 1.0, ban.failures))
    return ban_id


_BANS_PER_STATEMENT = 1000
"""Bans written by one multi-row statement (8 parameters each, under SQLite's 32,766)."""


def record_bans(db: sqlite3.Connection, bans: Sequence[NewBan]) -> list[int]:
    """Store many bans (and link their messages), as record_ban does one by one, in a few
    statements: a burst of bans costs the writer thread two statements per 1,000 bans instead
    of two per ban (each statement takes the GIL back from a busy event loop). Returns their
    ids, in order."""
    ids: list[int] = []
    for start in range(0, len(bans), _BANS_PER_STATEMENT):
        chunk = bans[start : start + _BANS_PER_STATEMENT]
        # the next ids, as SQLite would choose them (max + 1: one writer, in its transaction)
        first = db.execute("SELECT coalesce(max(id), 0) + 1 FROM ban").fetchone()[0]
        numbered = range(first, first + len(chunk))
        db.execute(
            "INSERT INTO ban (id, target, jail, origin, failures, started_at, ends_at, step, "
            "note) VALUES " + ",".join(["(?,?,?,?,?,?,?,?,?)"] * len(chunk)),
            [value for ban_id, ban in zip(numbered, chunk, strict=True) for value in (
                ban_id, ban.target, ban.jail, ban.origin, ban.failures, ban.started_at,
                ban.ends_at, ban.step, ban.note)])
        ids += numbered
        linked = [(ban_id, ban) for ban_id, ban in zip(numbered, chunk, strict=True)
                  if ban.evidence_since is not None and ban.failures > 0]
        if linked:
            # per ban, its `failures` latest messages in its window: record_ban's query
            db.execute(
                "INSERT OR IGNORE INTO ban_message (ban_id, message_id) "
                "SELECT ban_id, message_id FROM (SELECT b.column1 AS ban_id, m.id AS message_id, "
                "b.column5 AS wanted, row_number() OVER (PARTITION BY b.column1 "
                "ORDER BY m.id DESC) AS n FROM (VALUES "
                + ",".join(["(?,?,?,?,?)"] * len(linked)) +
                ") AS b JOIN message m ON m.address = b.column2 AND m.received_at >= b.column3 "
                "AND m.received_at <= b.column4) WHERE n <= wanted",
                [value for ban_id, ban in linked for value in (
                    ban_id, ban.target, ban.evidence_since, ban.started_at + 1.0,
                    ban.failures)])
    return ids


def lift(db: sqlite3.Connection, target: str, at: float, by: str,
         jail: str | None = None) -> int:
    """End the running bans of `target` (of `jail`, or every jail's) at `at`; return how many."""
    sql = ("UPDATE ban SET lifted_at = ?, lifted_by = ? WHERE target = ? AND lifted_at IS NULL "
           "AND (ends_at IS NULL OR ends_at > ?)")
    params: tuple[object, ...] = (at, by, target, at)
    if jail is not None:
        sql += " AND jail = ?"
        params += (jail,)
    return db.execute(sql, params).rowcount


def lift_jails_except(db: sqlite3.Connection, jails: list[str], at: float) -> int:
    """End the running bans of jails that are no longer configured (their sets are gone)."""
    marks = ",".join("?" * len(jails))
    return db.execute(
        f"UPDATE ban SET lifted_at = ?, lifted_by = 'jail_removed' WHERE lifted_at IS NULL "
        f"AND (ends_at IS NULL OR ends_at > ?) AND jail NOT IN ({marks})",
        (at, at, *jails)).rowcount


def running(db: sqlite3.Connection, now: float,
            started_before: float | None = None) -> list[BanRow]:
    """Bans not lifted whose end is after `now` (of those, the ones started before
    `started_before`, if given), oldest first."""
    before = "" if started_before is None else " AND started_at < ?"
    return [BanRow(*row) for row in db.execute(
        f"SELECT {_BAN_COLUMNS} FROM ban WHERE lifted_at IS NULL "
        f"AND (ends_at IS NULL OR ends_at > ?){before} ORDER BY started_at, id",
        (now,) if started_before is None else (now, started_before))]


def lifted_since(db: sqlite3.Connection, since: float) -> list[BanRow]:
    """Bans lifted early at or after `since`: their earlier failures must not count again."""
    return [BanRow(*row) for row in db.execute(
        f"SELECT {_BAN_COLUMNS} FROM ban WHERE lifted_at >= ? ORDER BY lifted_at", (since,))]


def since(db: sqlite3.Connection, when: float) -> list[BanRow]:
    """Every ban started at or after `when` (the history repeat offenders are judged by)."""
    return [BanRow(*row) for row in db.execute(
        f"SELECT {_BAN_COLUMNS} FROM ban WHERE started_at >= ? ORDER BY started_at, id",
        (when,))]


def history(db: sqlite3.Connection, targets: list[str], limit: int = 1000) -> list[BanRow]:
    """Bans of any of `targets` (an address and the networks holding it), newest first."""
    marks = ",".join("?" * len(targets))
    return [BanRow(*row) for row in db.execute(
        f"SELECT {_BAN_COLUMNS} FROM ban WHERE target IN ({marks}) "
        f"ORDER BY started_at DESC, id DESC LIMIT ?", (*targets, limit))]


def evidence(db: sqlite3.Connection, ban_id: int) -> list[MessageRow]:
    """The messages linked to a ban, oldest first."""
    return [MessageRow(*row) for row in db.execute(
        "SELECT m.id, m.received_at, m.transport, m.peer, m.raw, m.service FROM ban_message b "
        "JOIN message m ON m.id = b.message_id WHERE b.ban_id = ? ORDER BY m.id", (ban_id,))]


def messages_of(db: sqlite3.Connection, keys: list[str], limit: int = 1000) -> list[MessageRow]:
    """The latest messages that counted for any of `keys` (an address, the IPv6 prefix it is
    counted by), oldest first."""
    marks = ",".join("?" * len(keys))
    rows = db.execute(
        f"SELECT id, received_at, transport, peer, raw, service FROM message "
        f"WHERE address IN ({marks}) ORDER BY received_at DESC, id DESC LIMIT ?",
        (*keys, limit)).fetchall()
    return [MessageRow(*row) for row in reversed(rows)]


def put_allow(db: sqlite3.Connection, entry: AllowRow) -> None:
    db.execute("INSERT OR REPLACE INTO allow (target, created_at, until, note) VALUES (?,?,?,?)",
               entry)


def remove_allow(db: sqlite3.Connection, target: str) -> bool:
    return db.execute("DELETE FROM allow WHERE target = ?", (target,)).rowcount > 0


def allows(db: sqlite3.Connection, now: float) -> list[AllowRow]:
    """Allow entries in force at `now` (timed ones that ran out are deleted)."""
    db.execute("DELETE FROM allow WHERE until IS NOT NULL AND until <= ?", (now,))
    return [AllowRow(*row) for row in db.execute(
        "SELECT target, created_at, until, note FROM allow ORDER BY created_at")]
