import sqlite3

import pytest

from bansink.journal import SCHEMA_VERSION, Journal, JournalError, JournalRow


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
