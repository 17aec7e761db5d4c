import asyncio

from bansink.config import parse_config
from bansink.daemon import build_pipeline
from bansink.durability import JournalWriter, RecentDigests, replay
from bansink.journal import Journal, JournalRow

RAW = (b'<38>Aug 22 10:00:00 web roundcube: Login failed: client_ip="203.0.113.7", '
       b'user="u{}", code=0')


def test_resend_memory_finds_repeats_and_is_capped_by_count_and_time():
    recent = RecentDigests(horizon=60, max_entries=3)
    assert not recent.seen(b"a", 0.0)
    assert recent.seen(b"a", 1.0)
    for d in (b"b", b"c", b"d"):
        assert not recent.seen(d, 2.0)
    assert not recent.seen(b"a", 3.0)  # pushed out by the count cap
    old = RecentDigests(horizon=60)
    old.seen(b"x", 0.0)
    for i in range(1024):  # the time horizon is enforced every 1024 inserts
        old.seen(i.to_bytes(4, "big"), 100.0)
    assert not old.seen(b"x", 100.0)


def test_writer_skips_unacknowledged_rows_when_backed_up_but_never_reliable_ones(tmp_path):
    async def scenario():
        journal = Journal(tmp_path / "j.db", retention=600, max_rows=1000)
        writer = JournalWriter(journal, interval=0.01, recent=RecentDigests(60), max_pending=2)
        await writer.open()
        acked = []
        row = JournalRow(1.0, "tcp", "192.0.2.2", b"x", b"")
        writer.put(row, None)
        writer.put(row, None)
        writer.put(row, None)  # a third unacknowledged row while two wait: skipped
        writer.put(row._replace(transport="relp"), lambda: acked.append("relp"))
        writer.put(None, lambda: acked.append("barrier"))
        await writer.close()
        return writer, acked

    writer, acked = asyncio.run(scenario())
    assert writer.skipped == 1 and writer.rows == 3 and writer.pending == 0
    assert acked == ["relp", "barrier"]  # in order, after the commit


def test_replay_rebuilds_counts_and_shortens_bans_by_the_time_passed():
    pipeline = build_pipeline(parse_config({"jail": {"maxretry": 2, "bantime": 100}}))
    wall = 10_000.0
    rows = [JournalRow(wall - 30, "relp", "127.0.0.1", RAW.replace(b"{}", b"1"), b"d1"),
            JournalRow(wall - 20, "relp", "127.0.0.1", RAW.replace(b"{}", b"2"), b"d2")]
    recent = RecentDigests(horizon=600)
    bans = replay(rows, pipeline, recent, mono_now=500.0, wall_now=wall, counts_since=wall - 600)
    assert [(str(b.ip), round(b.bantime)) for b in bans] == [("203.0.113.7", 80)]
    assert recent.seen(b"d1", wall)  # resends of replayed RELP rows are recognised


def test_a_failed_write_forgets_its_digests_so_the_resend_counts(tmp_path):
    async def scenario():
        journal = Journal(tmp_path / "j.db", retention=600, max_rows=1000)
        recent = RecentDigests(60)
        writer = JournalWriter(journal, interval=0.01, recent=recent)
        await writer.open()
        journal.close()  # every write now fails
        acked = []
        assert not recent.seen(b"d1", 1.0)
        writer.put(JournalRow(1.0, "relp", "192.0.2.2", b"x", b"d1"), lambda: acked.append(1))
        await writer._batcher.close()
        return writer, recent, acked

    writer, recent, acked = asyncio.run(scenario())
    assert writer.errors == 1 and acked == []  # never acknowledged
    assert not recent.seen(b"d1", 2.0)  # the resend is new, not a repeat
