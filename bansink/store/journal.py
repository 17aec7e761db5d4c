"""A durable record of the messages that counted toward bans (SQLite in WAL mode).

RELP acknowledges a message only once its row is committed here, and start-up replays the rows
still inside `findtime`, so failure counts survive a crash. Rows are written in batches: one
transaction (one fsync with synchronous=FULL) per batch, never one per message.

Faults are told apart, because each wants a different answer:
- JournalError: the journal cannot be used at all (a bad path, a newer schema): start-up stops.
- JournalDamaged: the file is corrupt, not a database, or was deleted or replaced while open:
  `recover()` moves what is left aside (or salvages the rows of a deleted file) and starts a
  fresh file at the same path; the kernel sets still hold the bans.
- anything else from sqlite3/OS (a full disk, an I/O error): passing; the caller retries.

Its files hold user names and client addresses: they are created 0600 in a 0700 directory,
whatever the umask, and an existing journal is made 0600 when opened.

Blocking: call it from one writer thread. It holds no locks of its own.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from itertools import chain
from pathlib import Path
from typing import NamedTuple

SCHEMA_VERSION = 2

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
    # the ban store (store/bans.py), and which address each message counted for
    2: """
        ALTER TABLE message ADD COLUMN address TEXT NOT NULL DEFAULT '';
        ALTER TABLE message ADD COLUMN service TEXT NOT NULL DEFAULT '';
        CREATE INDEX message_address ON message (address, received_at);
        CREATE TABLE ban (
            id INTEGER PRIMARY KEY,
            target TEXT NOT NULL,        -- an address or a network (CIDR)
            jail TEXT NOT NULL,
            origin TEXT NOT NULL,        -- jail, manual, escalation
            failures INTEGER NOT NULL,
            started_at REAL NOT NULL,    -- wall clock
            ends_at REAL,                -- wall clock; NULL: until lifted
            lifted_at REAL,              -- ended early (unban, allow), else NULL
            lifted_by TEXT,
            step INTEGER NOT NULL DEFAULT 0,  -- earlier bans it was escalated for
            note TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX ban_target ON ban (target, started_at);
        CREATE INDEX ban_running ON ban (ends_at) WHERE lifted_at IS NULL;
        CREATE TABLE ban_message (
            ban_id INTEGER NOT NULL,
            message_id INTEGER NOT NULL,
            PRIMARY KEY (ban_id, message_id)
        ) WITHOUT ROWID;
        CREATE INDEX ban_message_message ON ban_message (message_id);
        CREATE TABLE allow (
            target TEXT PRIMARY KEY,     -- an address or a network (CIDR)
            created_at REAL NOT NULL,
            until REAL,                  -- NULL: until disallowed
            note TEXT NOT NULL DEFAULT ''
        );
    """,
}


_ROWS_PER_INSERT = 1000  # 7,000 parameters, under SQLite's default limit of 32,766
_COLUMNS = "received_at, transport, peer, raw, digest, address, service"


@lru_cache(maxsize=8)
def _insert_sql(rows: int) -> str:
    values = ",".join(["(?,?,?,?,?,?,?)"] * rows)
    return f"INSERT INTO message ({_COLUMNS}) VALUES {values}"


class JournalRow(NamedTuple):
    """One stored message; a NamedTuple so that rows go to executemany as they are."""

    received_at: float
    transport: str
    peer: str
    raw: bytes
    digest: bytes
    address: str = ""
    """The client address it counted for (`bansink explain` finds it by this)."""
    service: str = ""
    """The source that read it."""


Operation = Callable[[sqlite3.Connection], object]
"""Work done in the same transaction as a batch of rows, after them (store/bans.py)."""


class JournalError(Exception):
    pass


class JournalDamaged(JournalError):
    """The file is corrupt, not a database, or no longer the one that was opened."""

    committed = False
    """True when found right after a commit: the rows went into the file that was deleted or
    replaced (recover() salvages them), so they must not be written again."""


_SQLITE_MAGIC = b"SQLite format 3\x00"
_DAMAGED_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB
_SIDE_FILES = ("-wal", "-shm")


def is_damage(exc: BaseException) -> bool:
    """True for sqlite3 errors that mean the file itself is damaged (not a full disk)."""
    return isinstance(exc, JournalDamaged) or (
        isinstance(exc, sqlite3.DatabaseError)
        and (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _DAMAGED_CODES)


def _private_file(path: Path) -> None:
    """Create path 0600 if missing (whatever the umask); make an existing one 0600."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _private_directory(path: Path) -> None:
    """Create missing directories 0700 (whatever the umask); existing ones are left as they are
    (journal.path may point into a shared directory)."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        directory.mkdir()
        os.chmod(directory, 0o700)


KEEP_ASIDE = 3
"""Damaged or replaced files moved aside that are kept (the newest); older ones are deleted,
so that a file damaged again and again cannot fill the disk."""


def _keep_newest(path: Path, keep: int) -> None:
    for kind in ("damaged", "replaced"):
        aside = sorted(path.parent.glob(f"{path.name}.{kind}-*[0-9TZ]"))
        for old in aside[:-keep]:
            for suffix in ("", *_SIDE_FILES):
                old.with_name(old.name + suffix).unlink(missing_ok=True)


def _roll_back(db: sqlite3.Connection) -> None:
    """End a failed transaction (a full disk) so that the next one can begin."""
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # SQLite rolled back itself


class Journal:
    def __init__(self, path: Path, *, retention: float, max_rows: int,
                 history: float = 30 * 86400.0) -> None:
        """`history`: how long ended bans are kept (and the messages that caused them)."""
        self.path = path
        self.retention = retention
        self.max_rows = max_rows
        self.history = history
        self._db: sqlite3.Connection | None = None
        self._fd: int | None = None  # the file as opened: tells deletion and replacement
        self._identity: tuple[int, int] | None = None  # its (device, inode)
        self._salvaged: list[JournalRow] = []  # read from a lost file, not yet written anew

    def open(self) -> None:
        """Open or create the journal; JournalDamaged if the file is not a sound journal."""
        if self._db is not None:
            return
        try:
            _private_directory(self.path.parent)
            _private_file(self.path)
            for suffix in _SIDE_FILES:
                side = self.path.with_name(self.path.name + suffix)
                if side.exists():
                    _private_file(side)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(f"{self.path}: {exc}") from None
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise JournalDamaged(f"{self.path}: quick_check: {check}")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise JournalError(f"{self.path}: schema version {version} is newer than this "
                                   f"bansink understands ({SCHEMA_VERSION})")
            for step in range(version + 1, SCHEMA_VERSION + 1):
                db.executescript(f"BEGIN; {_UPGRADES[step]} PRAGMA user_version={step}; COMMIT;")
            self._fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
            opened = os.fstat(self._fd)
            self._identity = (opened.st_dev, opened.st_ino)
        except (sqlite3.Error, OSError) as exc:
            db.close()
            if isinstance(exc, JournalError) or is_damage(exc):
                raise JournalDamaged(str(exc) if isinstance(exc, JournalError)
                                     else f"{self.path}: {exc}") from None
            raise JournalError(f"{self.path}: {exc}") from None
        self._db = db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._identity = None

    def _whereabouts(self, header: bool = True) -> str | None:
        """None while the path names the opened file (and, if asked, its header is SQLite's);
        else what happened: "deleted", "replaced" or "overwritten"."""
        if self._fd is None or self._identity is None:
            raise JournalError("journal is not open")
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return "deleted"
        if (now.st_dev, now.st_ino) != self._identity:
            return "replaced"
        if not header:
            return None
        read = os.pread(self._fd, len(_SQLITE_MAGIC), 0)
        return "overwritten" if read and read != _SQLITE_MAGIC else None

    def verify(self, header: bool = True) -> None:
        """Raise JournalDamaged if the path no longer names the file that was opened (deleted,
        replaced) or (with `header`) its header is no longer SQLite's. Cheap: a stat and a
        16-byte read."""
        fault = self._whereabouts(header)
        if fault is not None:
            raise JournalDamaged(f"{self.path} was {fault} while open")

    def recover(self, since: float) -> tuple[str | None, int]:
        """After JournalDamaged: start a fresh file at the path. A damaged file is moved aside
        (with its -wal and -shm) as `<name>.damaged-<UTC time>`; from a file that was deleted or
        replaced, the rows received since `since` are salvaged (the open connection still reads
        it) and a replacing file is moved aside as `<name>.replaced-<UTC time>`. Returns (where
        a file was moved, rows salvaged)."""
        fault = self._whereabouts() if self._identity is not None else None
        if fault in ("deleted", "replaced") and self._db is not None:
            try:
                self._salvaged = list(self.replay(since))
            except sqlite3.Error:
                pass
        salvaged = len(self._salvaged)
        self.close()  # checkpoints into the opened file and removes its -wal and -shm
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        aside = None
        if fault in ("deleted", "replaced"):
            if self.path.exists():
                aside = self.path.with_name(f"{self.path.name}.replaced-{stamp}")
                self.path.rename(aside)
        elif self.path.exists():
            aside = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
            for suffix in ("", *_SIDE_FILES):
                source = self.path.with_name(self.path.name + suffix)
                if source.exists():
                    source.rename(aside.with_name(aside.name + suffix))
        _keep_newest(self.path, KEEP_ASIDE)
        self.ensure_open()
        return (str(aside) if aside else None), salvaged

    @property
    def is_open(self) -> bool:
        return self._db is not None

    def ensure_open(self) -> None:
        """Open the file again if a recovery could not (a full disk, say), and write the rows
        salvaged from a lost file; each later operation retries this first."""
        self.open()
        if self._salvaged:
            self.append(self._salvaged)
            self._salvaged = []

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise JournalError("journal is not open")
        return self._db

    def append(self, rows: Sequence[JournalRow], operations: Sequence[Operation] = ()) -> None:
        """Commit rows, then `operations`, in one transaction; when this returns they are on
        disk.

        Multi-row INSERTs rather than executemany: executemany takes the GIL back for every
        row, which starves this (writer) thread while the event loop is busy; one statement
        per 1,000 rows needs it once per statement.
        """
        db = self.db
        db.execute("BEGIN")
        try:
            for start in range(0, len(rows), _ROWS_PER_INSERT):
                chunk = rows[start : start + _ROWS_PER_INSERT]
                db.execute(_insert_sql(len(chunk)), list(chain.from_iterable(chunk)))
            for operation in operations:
                operation(db)
            db.execute("COMMIT")
        except BaseException:
            _roll_back(db)
            raise
        # committed, but into the file at the path? (not into a deleted one: nothing may be
        # acknowledged that a restart would not find)
        try:
            self.verify(header=False)  # one stat: the writer thread takes the GIL back per call
        except JournalDamaged as exc:
            exc.committed = True
            raise

    def replay(self, since: float) -> Iterator[JournalRow]:
        """Rows received at or after `since` (wall clock), oldest first."""
        cursor = self.db.execute(
            f"SELECT {_COLUMNS} FROM message WHERE received_at >= ? ORDER BY id", (since,))
        for row in cursor:
            yield JournalRow(*row)

    def prune(self, now: float) -> int:
        """Drop rows older than `retention`, then the oldest past `max_rows`, except those that
        caused a ban still in the history; and bans that ended more than `history` ago. Return
        how many messages went."""
        db = self.db
        db.execute("BEGIN")
        try:
            db.execute("DELETE FROM ban WHERE coalesce(lifted_at, ends_at) < ?",
                       (now - self.history,))
            db.execute("DELETE FROM ban_message WHERE ban_id NOT IN (SELECT id FROM ban)")
            evidence = "id NOT IN (SELECT message_id FROM ban_message)"
            dropped = db.execute(f"DELETE FROM message WHERE received_at < ? AND {evidence}",
                                 (now - self.retention,)).rowcount
            dropped += db.execute(
                f"DELETE FROM message WHERE id <= (SELECT id FROM message ORDER BY id DESC "
                f"LIMIT 1 OFFSET ?) AND {evidence}", (self.max_rows,)).rowcount
            db.execute("COMMIT")
        except BaseException:
            _roll_back(db)
            raise
        return dropped

    def stats(self) -> dict[str, int]:
        rows = self.db.execute("SELECT count(*) FROM message").fetchone()[0]
        size = sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*"))
        return {"journal_rows": rows, "journal_bytes": size}
