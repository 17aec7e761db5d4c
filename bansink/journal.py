"""A durable record of the messages that counted toward bans (SQLite in WAL mode).

RELP acknowledges a message only once its row is committed here, and start-up replays the rows
still inside `findtime`, so failure counts survive a crash. Rows are written in batches: one
transaction (one fsync with synchronous=FULL) per batch, never one per message.

Blocking: call it from one writer thread. It holds no locks of its own.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from functools import lru_cache
from itertools import chain
from pathlib import Path
from typing import NamedTuple

SCHEMA_VERSION = 1

_UPGRADES: dict[int, str] = {
    # from version N-1 to N
    1: """
        CREATE TABLE message (
            id INTEGER PRIMARY KEY,
            received_at REAL NOT NULL,   -- wall clock, seconds since the epoch
            transport TEXT NOT NULL,
            peer TEXT NOT NULL,
            raw BLOB NOT NULL,           -- the syslog message as received
            digest BLOB NOT NULL         -- of peer and raw: finds RELP resends after a crash
        );
        CREATE INDEX message_received_at ON message (received_at);
    """,
}


_ROWS_PER_INSERT = 1000  # 5,000 parameters, under SQLite's default limit of 32,766


@lru_cache(maxsize=8)
def _insert_sql(rows: int) -> str:
    values = ",".join(["(?,?,?,?,?)"] * rows)
    return f"INSERT INTO message (received_at, transport, peer, raw, digest) VALUES {values}"


class JournalRow(NamedTuple):
    """One stored message; a NamedTuple so that rows go to executemany as they are."""

    received_at: float
    transport: str
    peer: str
    raw: bytes
    digest: bytes


class JournalError(Exception):
    pass


class Journal:
    def __init__(self, path: Path, *, retention: float, max_rows: int) -> None:
        self.path = path
        self.retention = retention
        self.max_rows = max_rows
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise JournalError(f"{self.path}: schema version {version} is newer than this "
                                   f"bansink understands ({SCHEMA_VERSION})")
            for step in range(version + 1, SCHEMA_VERSION + 1):
                db.executescript(f"BEGIN; {_UPGRADES[step]} PRAGMA user_version={step}; COMMIT;")
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(f"{self.path}: {exc}") from None
        self._db = db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise JournalError("journal is not open")
        return self._db

    def append(self, rows: Sequence[JournalRow]) -> None:
        """Commit rows in one transaction; when this returns they are on disk.

        Multi-row INSERTs rather than executemany: executemany takes the GIL back for every
        row, which starves this (writer) thread while the event loop is busy; one statement
        per 1,000 rows needs it once per statement.
        """
        db = self.db
        db.execute("BEGIN")
        for start in range(0, len(rows), _ROWS_PER_INSERT):
            chunk = rows[start : start + _ROWS_PER_INSERT]
            db.execute(_insert_sql(len(chunk)), list(chain.from_iterable(chunk)))
        db.execute("COMMIT")

    def replay(self, since: float) -> Iterator[JournalRow]:
        """Rows received at or after `since` (wall clock), oldest first."""
        cursor = self.db.execute(
            "SELECT received_at, transport, peer, raw, digest FROM message "
            "WHERE received_at >= ? ORDER BY id", (since,))
        for row in cursor:
            yield JournalRow(*row)

    def prune(self, now: float) -> int:
        """Drop rows older than `retention`, then the oldest past `max_rows`; return how many."""
        db = self.db
        db.execute("BEGIN")
        dropped = db.execute("DELETE FROM message WHERE received_at < ?",
                             (now - self.retention,)).rowcount
        dropped += db.execute(
            "DELETE FROM message WHERE id <= (SELECT id FROM message ORDER BY id DESC "
            "LIMIT 1 OFFSET ?)", (self.max_rows,)).rowcount
        db.execute("COMMIT")
        return dropped

    def stats(self) -> dict[str, int]:
        rows = self.db.execute("SELECT count(*) FROM message").fetchone()[0]
        size = sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*"))
        return {"journal_rows": rows, "journal_bytes": size}
