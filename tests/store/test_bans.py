"""The ban store, alone, on a real SQLite file: bans with the messages that caused them, lifts,
allow entries, and pruning that keeps a ban's evidence as long as its history."""

from bansink.store import bans
from bansink.store.journal import Journal, JournalRow

A, B = "203.0.113.7", "203.0.113.8"


def message(t: float, address: str, text: str) -> JournalRow:
    return JournalRow(t, "tcp", "192.0.2.2", text.encode(), b"", address, "roundcube")


def journal(tmp_path, **kw) -> Journal:
    j = Journal(tmp_path / "journal.db", retention=kw.get("retention", 600), max_rows=1000,
                history=kw.get("history", 86400))
    j.open()
    return j


def test_a_ban_links_the_latest_messages_of_its_address_within_findtime(tmp_path):
    j = journal(tmp_path)
    rows = [message(100, A, "old"), message(900, A, "a1"), message(950, B, "b1"),
            message(960, A, "a2"), message(970, A, "a3")]
    new = bans.NewBan(A, "roundcube", "jail", 2, 980.0, 4580.0, evidence_since=980 - 600)
    ids: list[int] = []
    j.append(rows, [lambda db: ids.append(bans.record_ban(db, new))])
    linked = [m.raw for m in bans.evidence(j.db, ids[0])]
    assert linked == [b"a2", b"a3"]  # the `failures` latest, of that address only
    (running,) = bans.running(j.db, 1000)
    assert (running.target, running.failures, running.ends_at) == (A, 2, 4580.0)
    assert [m.raw for m in bans.messages_of(j.db, [A])] == [b"old", b"a1", b"a2", b"a3"]


def test_a_lift_ends_a_running_ban_and_it_is_no_longer_running(tmp_path):
    j = journal(tmp_path)
    j.append([], [lambda db: bans.record_ban(db, bans.NewBan(A, "k", "jail", 3, 10, 100)),
                  lambda db: bans.record_ban(db, bans.NewBan(A, "m", "manual", 0, 10, None))])
    assert len(bans.running(j.db, 50)) == 2
    assert bans.lift(j.db, A, 60, "unban", jail="k") == 1
    assert [r.jail for r in bans.running(j.db, 61)] == ["m"]  # until lifted
    assert [(r.jail, r.lifted_by) for r in bans.lifted_since(j.db, 0)] == [("k", "unban")]
    assert bans.lift(j.db, A, 70, "unban") == 1
    assert bans.running(j.db, 71) == []
    assert [r.jail for r in bans.history(j.db, [A])] == ["m", "k"]  # newest first


def test_timed_allow_entries_end_by_themselves(tmp_path):
    j = journal(tmp_path)
    bans.put_allow(j.db, bans.AllowRow(A, 0, 100.0, "hotel"))
    bans.put_allow(j.db, bans.AllowRow("198.51.100.0/24", 0, None, "office"))
    assert [a.target for a in bans.allows(j.db, 50)] == [A, "198.51.100.0/24"]
    assert [a.target for a in bans.allows(j.db, 100)] == ["198.51.100.0/24"]
    assert bans.remove_allow(j.db, "198.51.100.0/24") and bans.allows(j.db, 100) == []


def test_pruning_keeps_a_bans_messages_as_long_as_its_history(tmp_path):
    j = journal(tmp_path, retention=600, history=86400)
    new = bans.NewBan(A, "roundcube", "jail", 1, 100.0, 200.0, evidence_since=0)
    j.append([message(100, A, "evidence"), message(100, B, "other")],
             [lambda db: bans.record_ban(db, new)])
    j.prune(100 + 700)  # past retention: the other message goes, the evidence stays
    assert [m.raw for m in bans.messages_of(j.db, [A])] == [b"evidence"]
    assert bans.messages_of(j.db, [B]) == []
    j.prune(200 + 86400 + 1)  # the ban's history is over: it goes, and its evidence with it
    assert bans.history(j.db, [A]) == [] and bans.messages_of(j.db, [A]) == []


def test_a_version_1_journal_is_upgraded_in_place_and_keeps_its_rows(tmp_path):
    import sqlite3

    from bansink.store.journal import _UPGRADES

    path = tmp_path / "journal.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(f"BEGIN; {_UPGRADES[1]} PRAGMA user_version=1; COMMIT;")
    db.execute("INSERT INTO message (received_at, transport, peer, raw, digest) VALUES "
               "(1.0, 'relp', '192.0.2.2', x'6869', x'00')")
    db.close()
    j = Journal(path, retention=600, max_rows=1000)
    j.open()
    assert j.db.execute("PRAGMA user_version").fetchone()[0] == 2
    (row,) = j.replay(0)
    assert (row.raw, row.address) == (b"hi", "")
    assert bans.running(j.db, 0) == []


def test_many_bans_recorded_at_once_are_stored_and_linked_as_one_by_one(tmp_path):
    rows = [message(100 + i, address, f"{address} {i}") for i in range(30)
            for address in (A, B, "2001:db8::1")]
    new = [bans.NewBan(A, "k", "jail", 2, 120.0, 500.0, evidence_since=110.0),
           bans.NewBan(B, "k", "escalation", 5, 125.0, 900.0, step=1, evidence_since=0.0),
           bans.NewBan(A, "m", "manual", 0, 126.0, None, note="hand"),
           bans.NewBan("2001:db8::1", "k", "jail", 40, 129.5, 600.0, evidence_since=50.0),
           bans.NewBan(B, "j", "jail", 1, 300.0, 900.0, evidence_since=200.0)]
    one, many = journal(tmp_path / "one"), journal(tmp_path / "many")
    ids_one: list[int] = []
    ids_many: list[int] = []
    one.append(rows, [lambda db: ids_one.extend(bans.record_ban(db, b) for b in new)])
    many.append(rows, [lambda db: bans.record_ban(db, new[0]),
                       lambda db: ids_many.extend(bans.record_bans(db, new[1:]))])
    assert ids_many == ids_one[1:] == [2, 3, 4, 5]
    assert bans.since(many.db, 0) == bans.since(one.db, 0)
    for ban_id in ids_one:
        assert bans.evidence(many.db, ban_id) == bans.evidence(one.db, ban_id)
    assert [len(bans.evidence(one.db, i)) for i in ids_one] == [2, 5, 0, 30, 0]


def test_running_bans_started_before_a_time(tmp_path):
    j = journal(tmp_path)
    j.append([], [lambda db: bans.record_bans(db, [
        bans.NewBan(A, "m", "manual", 0, 10, None), bans.NewBan(B, "k", "jail", 3, 50, 500),
        bans.NewBan(B, "m", "manual", 0, 60, 70)])])
    assert [r.started_at for r in bans.running(j.db, 65)] == [10, 50, 60]
    assert [r.started_at for r in bans.running(j.db, 65, started_before=50)] == [10]
    assert [r.started_at for r in bans.running(j.db, 80, started_before=61)] == [10, 50]
