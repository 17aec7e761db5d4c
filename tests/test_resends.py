import asyncio
from types import SimpleNamespace

from bansink.resends import ResendGuard
from bansink.store.journal import Journal, JournalRow
from bansink.store.writer import JournalWriter

S = "192.0.2.2"


def take(guard: ResendGuard, session: int, digests: list[bytes]) -> list[bool]:
    """Feed frames of one session; True where a frame is taken for a resend."""
    found = []
    for d in digests:
        resend = guard.is_resend(session, d)
        if not resend:
            guard.took(session, d, counted=True)
        found.append(resend)
    return found


def broken_session(digests: list[bytes], window: int = 128, horizon: float = 600
                   ) -> ResendGuard:
    """A guard whose session 1 took `digests` and broke at 1.0; session 2 opened at 2.0."""
    guard = ResendGuard(window=window, horizon=horizon)
    guard.session_started(1, S, 0.0)
    take(guard, 1, digests)
    guard.session_ended(1, S, clean=False, now=1.0)
    guard.session_started(2, S, 2.0)
    return guard


def test_identical_frames_in_a_healthy_session_all_count():
    guard = ResendGuard(window=128, horizon=600)
    guard.session_started(1, S, 0.0)
    assert take(guard, 1, [b"same"] * 50) == [False] * 50
    guard.session_ended(1, S, clean=True, now=1.0)
    guard.session_started(2, S, 2.0)  # after a clean close nothing is resent
    assert take(guard, 2, [b"same"] * 3) == [False] * 3


def test_after_a_break_the_next_session_s_first_frames_that_were_taken_are_resends():
    guard = broken_session([b"a", b"b", b"c"], window=128, horizon=600)
    # librelp resends b and c (a's ack arrived), then d it never got through, then new ones
    assert take(guard, 2, [b"b", b"c", b"d", b"b", b"c"]) == [True, True, False, False, False]


def test_genuine_repeats_after_the_resends_count():
    guard = ResendGuard(window=128, horizon=600)
    guard.session_started(1, S, 0.0)
    take(guard, 1, [b"x"] * 5)
    guard.session_ended(1, S, clean=False, now=1.0)
    guard.session_started(2, S, 2.0)
    # two resends, then a new message: each remembered frame matches at most once
    assert take(guard, 2, [b"x", b"x", b"new", b"x"]) == [True, True, False, False]


def test_frames_that_count_toward_nothing_do_not_end_the_resends():
    guard = broken_session([b"a"], window=128, horizon=600)
    assert not guard.is_resend(2, b"cron line")
    guard.took(2, b"cron line", counted=False)
    assert guard.is_resend(2, b"a")


def test_only_the_window_and_the_horizon_are_remembered():
    guard = broken_session([b"a", b"b", b"c"], window=2, horizon=60)
    assert take(guard, 2, [b"a"]) == [False]  # older than the last 2 frames
    guard.session_ended(2, S, clean=False, now=3.0)
    guard.session_started(3, S, 100.0)  # past the horizon
    assert take(guard, 3, [b"b", b"c"]) == [False, False]
    assert guard.remembered == 2  # session 3's own tail


def test_other_senders_and_concurrent_sessions_are_unaffected():
    guard = ResendGuard(window=128, horizon=600)
    guard.session_started(1, S, 0.0)
    take(guard, 1, [b"a"])
    guard.session_started(2, "192.0.2.3", 0.0)
    guard.session_ended(1, S, clean=False, now=1.0)
    assert take(guard, 2, [b"a"]) == [False]  # another sender, another session


def test_a_failed_write_forgets_its_digests_so_the_resend_counts(tmp_path):
    guard = ResendGuard(window=128, horizon=600)

    async def scenario():
        journal = Journal(tmp_path / "j.db", retention=600, max_rows=1000)
        writer = JournalWriter(journal, interval=0.01, salvage_horizon=600,
                               unwritten=lambda row, session: guard.forget(session, row.peer,
                                                                           row.digest))
        await writer.open()
        guard.session_started(7, S, 0.0)
        guard.took(7, b"d1", counted=True)
        journal.db.execute("PRAGMA query_only=1")  # every write now fails (not damage)
        acked = []
        writer.put(JournalRow(1.0, "relp", S, b"x", b"d1"), lambda: acked.append(1), 7)
        await writer._batcher.close()
        journal.close()
        return writer, acked

    writer, acked = asyncio.run(scenario())
    assert writer.errors == 1 and writer.failing and acked == []  # never acknowledged
    guard.session_ended(7, S, clean=False, now=1.0)
    guard.session_started(8, S, 2.0)
    assert not guard.is_resend(8, b"d1")  # the resend is new, not a repeat


def test_a_resend_is_never_answered_when_a_row_before_it_failed_to_be_written(tmp_path):
    """The race the barrier guards: a session broke while its last frame was being written;
    the next session's resend of it matched; then that write failed."""
    guard = ResendGuard(window=128, horizon=600)
    writer = JournalWriter(Journal(tmp_path / "j.db", retention=600, max_rows=1000),
                           interval=0.01, salvage_horizon=600,
                           unwritten=lambda row, session: guard.forget(session, row.peer,
                                                                       row.digest))
    queued: list = []
    writer._batcher = SimpleNamespace(put=lambda item, urgent=True: queued.append(item))  # by hand
    acked: list[str] = []
    guard.session_started(1, S, 0.0)
    guard.took(1, b"d", counted=True)
    writer.put(JournalRow(1.0, "relp", S, b"x", b"d"), lambda: acked.append("original"), 1)
    guard.session_ended(1, S, clean=False, now=1.0)
    guard.session_started(2, S, 2.0)
    assert guard.is_resend(2, b"d")
    writer.put(None, lambda: acked.append("resend"), 2)  # the barrier, before the failure
    writer._written(queued[:1], OSError("disk full"))
    writer.put(JournalRow(3.0, "relp", S, b"y", b"e"), lambda: acked.append("later"), 2)
    writer._written(queued[1:], [])  # the next batch is written
    assert acked == ["later"]  # never "resend": its original is not on disk
    guard.session_ended(2, S, clean=False, now=3.0)
    guard.session_started(3, S, 4.0)
    assert not guard.is_resend(3, b"d")  # so the next resend of it counts and is stored
