import asyncio
import os
import time

from bansink.store.journal import Journal, JournalRow
from bansink.store.writer import JournalWriter

S = "192.0.2.2"


def test_writer_skips_unacknowledged_rows_when_backed_up_but_never_reliable_ones(tmp_path):
    async def scenario():
        journal = Journal(tmp_path / "j.db", retention=600, max_rows=1000)
        writer = JournalWriter(journal, interval=0.01, salvage_horizon=600, max_pending=2)
        await writer.open()
        acked = []
        row = JournalRow(1.0, "tcp", S, b"x", b"")
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


def test_a_journal_deleted_while_running_is_recreated_with_its_rows_before_any_ack(tmp_path):
    path = tmp_path / "j.db"

    async def scenario():
        writer = JournalWriter(Journal(path, retention=600, max_rows=1000), interval=0.01,
                               salvage_horizon=600)
        await writer.open()
        acked: list[int] = []
        now = time.time()
        for i in range(400):
            writer.put(JournalRow(now - 1, "relp", S, b"m%d" % i, b"d"), lambda: None)
        await writer._batcher.close()
        os.unlink(path)  # behind bansink's back
        writer._batcher = type(writer._batcher)(0.01, writer._write, writer._written, "j")
        writer.put(JournalRow(now, "relp", S, b"after", b"d"), lambda: acked.append(1))
        await writer.close()
        return writer, acked

    writer, acked = asyncio.run(scenario())
    assert acked == [1] and writer.recoveries == 1
    again = Journal(path, retention=600, max_rows=1000)
    again.open()
    raws = [r.raw for r in again.replay(0)]
    again.close()
    assert len(raws) == 401 and raws[-1] == b"after"  # the 400 acknowledged rows were salvaged


def test_housekeeping_hands_freed_memory_back_at_most_every_trim_interval(tmp_path,
                                                                          monkeypatch):
    from bansink.memory import TRIM_INTERVAL, release_memory
    from bansink.store import writer as module

    assert release_memory() in (True, False)  # glibc's malloc_trim, or nothing to call
    trims: list[float] = []
    monkeypatch.setattr(module, "release_memory", lambda: trims.append(1) or True)

    async def main():
        writer = JournalWriter(Journal(tmp_path / "j.db", retention=600, max_rows=1000),
                               interval=0.01, salvage_horizon=600)
        await writer.open()
        for now in (1000.0, 1001.0, 1000 + TRIM_INTERVAL - 0.5, 1000 + TRIM_INTERVAL, 5.0):
            await writer.housekeeping(now, prune=now == 1001.0)
        await writer.close()

    asyncio.run(main())
    assert len(trims) == 3  # the first time, TRIM_INTERVAL later, and after the clock went back


def test_a_failed_write_counts_the_ban_records_it_lost(tmp_path):
    import sqlite3

    from structlog.testing import capture_logs

    def full(db):
        raise sqlite3.OperationalError("database or disk is full")

    async def main():
        writer = JournalWriter(Journal(tmp_path / "j.db", retention=600, max_rows=1000),
                               interval=0.01, salvage_horizon=600)
        await writer.open()
        with capture_logs() as logs:
            writer.put_operation(full, records=3)  # a tick's bans, written together
            writer.put_operation(lambda db: None)
            await writer.close()
        return logs

    [lost] = [e for e in asyncio.run(main()) if e["event"] == "ban_records_lost"]
    assert lost["records"] == 4


def test_rows_nobody_waits_for_wait_for_patience_a_relp_row_takes_them_along(tmp_path):
    async def scenario():
        loop = asyncio.get_running_loop()
        journal = Journal(tmp_path / "j.db", retention=600, max_rows=1000)
        writer = JournalWriter(journal, interval=0.002, salvage_horizon=600, patience=0.5)
        await writer.open()
        row = JournalRow(1.0, "tcp", S, b"x", b"")
        writer.put(row, None)
        writer.put(row, None)
        started = loop.time()
        while loop.time() - started < 0.1:
            await asyncio.sleep(0.002)
        before = (writer.rows, writer.commits)
        acked: list[float] = []
        writer.put(row._replace(transport="relp"), lambda: acked.append(loop.time()))
        while not acked:
            await asyncio.sleep(0.001)
        await writer.close()
        return before, (writer.rows, writer.commits), acked[0] - started

    before, after, acked_after = asyncio.run(scenario())
    assert before == (0, 0)  # the TCP rows were held
    assert after == (3, 1)  # and went to disk in the RELP row's commit
    assert acked_after < 0.4
