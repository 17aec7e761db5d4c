import os
import sqlite3
import stat
from pathlib import Path

import pytest

from bansink.store.journal import (
    KEEP_ASIDE,
    SCHEMA_VERSION,
    Journal,
    JournalDamaged,
    JournalError,
    JournalRow,
)


def row(t: float, raw: bytes = b"<38>x") -> JournalRow:
    return JournalRow(t, "relp", "192.0.2.2", raw, b"d" * 16)


@pytest.fixture
def journal(tmp_path):
    j = Journal(tmp_path / "journal.db", retention=600, max_rows=5)
    j.open()
    yield j
    j.close()


def test_rows_survive_reopening_and_replay_in_order_from_a_time(journal, tmp_path):
    journal.append([row(1.0, b"a"), row(2.0, b"b")])
    journal.append([row(3.0, b"c")])
    journal.close()
    again = Journal(tmp_path / "journal.db", retention=600, max_rows=5)
    again.open()
    assert [r.raw for r in again.replay(since=2.0)] == [b"b", b"c"]
    assert again.stats()["journal_rows"] == 3 and again.stats()["journal_bytes"] > 0
    again.close()


def test_schema_version_is_recorded_and_a_newer_one_is_refused(journal, tmp_path):
    assert journal.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert journal.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    journal.close()
    db = sqlite3.connect(tmp_path / "journal.db")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(JournalError, match="newer"):
        Journal(tmp_path / "journal.db", retention=1, max_rows=1).open()


def test_prune_by_age_then_by_count(journal):
    journal.append([row(float(t)) for t in range(10)])
    # retention 600 s at now=605: rows 0..4 are too old; then at most 5 remain
    assert journal.prune(now=605.0) == 5
    assert [r.received_at for r in journal.replay(0)] == [5.0, 6.0, 7.0, 8.0, 9.0]
    journal.append([row(10.0), row(11.0)])
    assert journal.prune(now=605.0) == 2
    assert [r.received_at for r in journal.replay(0)] == [7.0, 8.0, 9.0, 10.0, 11.0]


def test_unusable_path_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(JournalError, match="file"):
        Journal(tmp_path / "file" / "journal.db", retention=1, max_rows=1).open()


def test_files_are_private_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        j = Journal(tmp_path / "new" / "state" / "journal.db", retention=600, max_rows=5)
        j.open()
        j.append([row(1.0)])
    finally:
        os.umask(old)
    for p in (tmp_path / "new", tmp_path / "new" / "state"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o700, p
    files = list((tmp_path / "new" / "state").iterdir())
    assert {f.name for f in files} >= {"journal.db", "journal.db-wal", "journal.db-shm"}
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    j.close()


def test_an_existing_world_readable_journal_is_made_private(tmp_path):
    path = tmp_path / "journal.db"
    j = Journal(path, retention=600, max_rows=5)
    j.open()
    j.close()
    path.chmod(0o644)
    j.open()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    j.close()


@pytest.mark.parametrize("garbage", [b"not a database at all" * 100,
                                     b"SQLite format 3\x00" + b"\xff" * 8192])
def test_a_damaged_file_at_start_is_reported_then_moved_aside_for_a_fresh_one(tmp_path, garbage):
    path = tmp_path / "journal.db"
    path.write_bytes(garbage)
    j = Journal(path, retention=600, max_rows=5)
    with pytest.raises(JournalDamaged):
        j.open()
    aside, salvaged = j.recover(since=0)
    assert aside is not None and ".damaged-" in aside and salvaged == 0
    assert Path(aside).read_bytes() == garbage
    j.append([row(1.0)])
    assert [r.received_at for r in j.replay(0)] == [1.0]
    j.close()


def test_an_overwritten_header_while_running_is_found_by_verify(journal, tmp_path):
    journal.append([row(1.0)])
    journal.verify()
    with open(tmp_path / "journal.db", "r+b") as f:
        f.write(b"\0" * 100)
    with pytest.raises(JournalDamaged, match="overwritten"):
        journal.verify()
    aside, _ = journal.recover(since=0)
    assert ".damaged-" in aside and (tmp_path / "journal.db").exists()
    journal.verify()


def test_an_append_into_a_deleted_file_is_not_reported_as_written(journal, tmp_path):
    (tmp_path / "journal.db").unlink()
    with pytest.raises(JournalDamaged, match="deleted") as caught:
        journal.append([row(1.0)])
    assert caught.value.committed  # in the deleted file: recover() salvages it
    aside, salvaged = journal.recover(since=0)
    assert aside is None and salvaged == 1
    assert [r.received_at for r in journal.replay(0)] == [1.0]


def test_a_failed_append_leaves_no_transaction_open(journal):
    journal.db.execute("PRAGMA query_only=1")
    with pytest.raises(sqlite3.OperationalError):
        journal.append([row(1.0)])
    journal.db.execute("PRAGMA query_only=0")
    journal.append([row(2.0)])  # BEGIN works again
    assert [r.received_at for r in journal.replay(0)] == [2.0]


def test_a_recovery_that_cannot_open_a_fresh_file_keeps_the_salvage_for_the_next_try(
        journal, tmp_path, monkeypatch):
    journal.append([row(1.0, b"kept")])
    (tmp_path / "journal.db").unlink()
    real_open = Journal.open

    def full_disk(self):
        raise JournalError("disk full")

    monkeypatch.setattr(Journal, "open", full_disk)
    with pytest.raises(JournalError):
        journal.recover(since=0)
    assert not journal.is_open
    monkeypatch.setattr(Journal, "open", real_open)
    journal.ensure_open()  # what the writer does before its next operation
    assert [r.raw for r in journal.replay(0)] == [b"kept"]


def test_only_the_newest_files_moved_aside_are_kept(journal, tmp_path):
    for _ in range(KEEP_ASIDE + 2):
        with open(tmp_path / "journal.db", "r+b") as f:
            f.write(b"\0" * 100)
        journal.recover(since=0)
    aside = sorted(p.name for p in tmp_path.glob("journal.db.damaged-*"))
    assert len([n for n in aside if n.endswith("Z")]) == KEEP_ASIDE
