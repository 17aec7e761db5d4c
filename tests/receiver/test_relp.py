import random

import pytest

from bansink.receiver.relp import (
    CLOSED,
    NEED_DATA,
    SERVERCLOSE,
    RelpClose,
    RelpOpen,
    RelpProtocolError,
    RelpRejected,
    RelpSession,
    RelpSyslog,
    State,
)

# what rsyslog 8.2302 / librelp 1.11 omrelp sends (FACTS.md, captured)
OPEN = (b"1 open 86 relp_version=0\nrelp_software=librelp,1.11.0,http://librelp.adiscon.com\n"
        b"commands=syslog\n")
MSG = b"<38>2026-08-22T10:00:00+00:00 webmail roundcube: msg 1"


def syslog(txnr: int, msg: bytes = MSG) -> bytes:
    return b"%d syslog %d %s\n" % (txnr, len(msg), msg)


def events(session: RelpSession, data: bytes, chunk: int | None = None) -> list:
    out = []
    step = chunk or max(1, len(data))
    for i in range(0, len(data), step):
        session.receive_data(data[i : i + step])
        while (e := session.next_event()) not in (NEED_DATA, CLOSED):
            out.append(e)
    return out


@pytest.fixture(params=[None, 1, 5], ids=["whole", "byte", "5"])
def chunk(request):
    return request.param


def test_open_is_answered_with_relp_version_0_and_syslog(chunk):
    s = RelpSession(software="bansink,0.1.0,x")
    (opened,) = events(s, OPEN, chunk)
    assert isinstance(opened, RelpOpen) and opened.offers["relp_version"] == "0"
    assert opened.offers["commands"] == "syslog"
    reply = b"200 OK\nrelp_version=0\nrelp_software=bansink,0.1.0,x\ncommands=syslog"
    assert s.data_to_send() == b"1 rsp %d %s\n" % (len(reply), reply)
    assert s.state is State.OPEN


def test_pipelined_frames_are_answered_in_order_only_once_acknowledged(chunk):
    s = RelpSession()
    got = events(s, OPEN + syslog(2) + syslog(3) + syslog(4) + b"5 close 0\n", chunk)
    assert [type(e) for e in got] == [RelpOpen, RelpSyslog, RelpSyslog, RelpSyslog, RelpClose]
    assert got[1].message == MSG
    assert s.data_to_send().startswith(b"1 rsp ")
    s.ack(3)  # durable out of order: nothing may overtake 2
    assert s.data_to_send() == b""
    s.ack(2)
    assert s.data_to_send() == b"2 rsp 6 200 OK\n3 rsp 6 200 OK\n"
    s.ack(4)
    assert s.data_to_send() == b"4 rsp 6 200 OK\n5 rsp 6 200 OK\n"
    assert s.finished and s.unanswered == 0


def test_syslog_before_open_is_refused_and_ends_the_session():
    s = RelpSession()
    (rejected,) = events(s, syslog(1))
    assert isinstance(rejected, RelpRejected) and rejected.reason == "session not open"
    assert s.data_to_send() == b"1 rsp 20 500 session not open\n"
    assert s.finished


def test_unknown_command_is_refused_and_the_session_goes_on():
    s = RelpSession()
    got = events(s, OPEN + b"2 starttls 0\n" + syslog(3))
    assert isinstance(got[1], RelpRejected) and got[1].command == "starttls"
    assert isinstance(got[2], RelpSyslog)
    s.ack(3)
    assert s.data_to_send().endswith(b"2 rsp 25 500 command not supported\n3 rsp 6 200 OK\n")


def test_out_of_sequence_txnr_is_refused_and_ends_the_session():
    s = RelpSession()
    got = events(s, OPEN + syslog(3))
    assert isinstance(got[1], RelpRejected) and "out of sequence" in got[1].reason
    assert b"3 rsp" in s.data_to_send() and s.finished


def test_open_without_syslog_command_or_version_is_refused():
    for offers in (b"relp_version=0\ncommands=foo", b"commands=syslog"):
        s = RelpSession()
        (rejected,) = events(s, b"1 open %d %s\n" % (len(offers), offers))
        assert isinstance(rejected, RelpRejected) and s.finished


@pytest.mark.parametrize(
    "frame, reason",
    [
        (b"x syslog 3 abc\n", "malformed frame header"),
        (b"2 sys-log 3 abc\n", "malformed frame header"),
        (b"2 syslog abc\n", "malformed frame header"),
        (b"2 syslog 5 abc\n3 syslog 1 x\n", "DATALEN does not match"),
        (b"2 syslog 3 abcX", "no LF trailer"),
        (b"2 syslog 3abc\n", "missing SP"),
        (b"2 close 0X", "missing LF"),
        (b"2 syslog 999999 " + b"a" * 10, "over the maximum"),
        (b"1234567890 syslog 1 a\n", "malformed frame header"),
    ],
)
def test_frames_that_cannot_be_delimited_raise_and_leave_the_session_in_error(frame, reason):
    s = RelpSession(max_frame_size=1024)
    events(s, OPEN)
    s.data_to_send()
    with pytest.raises(RelpProtocolError, match=reason):
        events(s, frame)
    assert s.state is State.ERROR and s.finished
    assert s.next_event() is CLOSED


def test_truncated_frame_at_eof_is_an_error_but_clean_eof_is_closed():
    s = RelpSession()
    events(s, OPEN + syslog(2)[:10])
    s.receive_data(b"")
    with pytest.raises(RelpProtocolError, match="truncated"):
        s.next_event()
    clean = RelpSession()
    events(clean, OPEN)
    clean.receive_data(b"")
    assert clean.next_event() is CLOSED


def test_txnr_wraps_from_999999999_to_1():
    s = RelpSession()
    events(s, OPEN)
    s._last_txnr = 999_999_999
    (e,) = events(s, syslog(1))
    assert isinstance(e, RelpSyslog) and e.txnr == 1


def test_serverclose_hint_is_txnr_0():
    assert SERVERCLOSE == b"0 serverclose 0\n"


def test_random_garbage_only_ever_raises_relp_protocol_error():
    rng = random.Random(20514)
    alphabet = b"0123456789 syslogcpen\n"
    for _ in range(500):
        data = OPEN + bytes(rng.choice(alphabet) for _ in range(rng.randrange(1, 80)))
        for step in (None, 1):
            s = RelpSession(max_frame_size=64)
            try:
                events(s, data, step)
            except RelpProtocolError:
                assert s.state is State.ERROR


@pytest.mark.parametrize("ending", [b"2 close 0\n", b"2 syslog 3 abcX"], ids=["close", "error"])
def test_input_after_close_or_a_framing_error_is_dropped_not_buffered(ending):
    s = RelpSession()
    try:
        events(s, OPEN + ending)
    except RelpProtocolError:
        pass
    assert s.finished
    for _ in range(160):
        s.receive_data(b"x" * 65536)
        assert s.next_event() is CLOSED
    assert len(s._buf) == 0


def test_a_retired_session_answers_what_it_took_then_says_serverclose_and_reads_no_more():
    session = RelpSession()
    taken = events(session, OPEN + syslog(2) + syslog(3))
    assert [type(e) for e in taken] == [RelpOpen, RelpSyslog, RelpSyslog]
    session.receive_data(syslog(4))  # read, not yet handled: never answered, resent
    session.ack(2)
    session.retire()
    assert session.next_event() is CLOSED and session.finished
    assert session.data_to_send().endswith(b"2 rsp 6 200 OK\n")  # 3 is still being written
    assert session.unanswered == 1
    session.receive_data(syslog(5))  # dropped
    session.ack(3)
    assert session.data_to_send() == b"3 rsp 6 200 OK\n" + SERVERCLOSE
    assert session.unanswered == 0 and session.data_to_send() == b""
    assert session.next_event() is CLOSED


def test_a_session_retired_before_its_open_just_ends():
    session = RelpSession()
    session.retire()
    assert session.finished and session.data_to_send() == b""
