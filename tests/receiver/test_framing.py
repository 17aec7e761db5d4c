import random

import pytest

from bansink.receiver.framing import CLOSED, NEED_DATA, FrameDropped, Rfc6587Framer, SyslogFrame


def drain(framer: Rfc6587Framer) -> list:
    events = []
    while (event := framer.next_event()) not in (NEED_DATA, CLOSED):
        events.append(event)
    return events


def feed(data: bytes, chunk: int | None = None, *, eof: bool = True, **kw) -> list:
    """Feed whole, or `chunk` bytes at a time, collecting events; optionally send EOF."""
    framer = Rfc6587Framer(**kw)
    events = []
    step = chunk or max(1, len(data))
    for i in range(0, len(data), step):
        framer.receive_data(data[i : i + step])
        events += drain(framer)
    if eof:
        framer.receive_data(b"")
        events += drain(framer)
        assert framer.next_event() is CLOSED
    return events


def frames(events: list) -> list[bytes]:
    return [e.data for e in events if isinstance(e, SyslogFrame)]


@pytest.fixture(params=[None, 1, 3, 7], ids=["whole", "byte", "3", "7"])
def chunk(request):
    return request.param


# the octet-counted frame rsyslog sends with RSYSLOG_SyslogProtocol23Format (FACTS.md, captured)
RSYSLOG_OCTET = (
    b'105 <38>1 2026-08-22T10:00:00+00:00 webmail roundcube - - -  Login failed: '
    b'client_ip=203.0.113.7, user="bob"\n'
)


def test_octet_counted_frame_with_trailing_lf_inside_the_count(chunk):
    assert frames(feed(RSYSLOG_OCTET * 2, chunk)) == [RSYSLOG_OCTET[4:-1]] * 2


def test_lf_frames_and_crlf(chunk):
    data = b"<13>one\n<13>two\r\n\n<13>three\n"
    assert frames(feed(data, chunk)) == [b"<13>one", b"<13>two", b"<13>three"]


def test_framing_is_detected_per_frame(chunk):
    data = b"<13>lf\n11 <13>counted" + b"<13>lf again\n" + b"5 <13>x"
    assert frames(feed(data, chunk)) == [b"<13>lf", b"<13>counted", b"<13>lf again", b"<13>x"]


def test_digit_led_frame_without_count_is_lf_framed(chunk):
    data = b"2026-11-21 starts with a date\n12x <13>not a count\n"
    assert frames(feed(data, chunk)) == [b"2026-11-21 starts with a date", b"12x <13>not a count"]


def test_last_lf_frame_without_lf_is_delivered_at_eof(chunk):
    assert frames(feed(b"<13>a\n<13>tail", chunk)) == [b"<13>a", b"<13>tail"]


def test_truncated_octet_frame_at_eof_is_dropped_not_delivered(chunk):
    events = feed(b"50 <13>short", chunk)
    assert frames(events) == []
    assert [type(e) for e in events] == [FrameDropped]
    assert events[0].reason == "truncated at EOF"


def test_octet_count_over_max_frame_size_is_dropped_and_stream_resyncs(chunk):
    big = b"x" * 100
    data = b"100 " + big + b"6 <13>ok" + b"<13>next\n"
    events = feed(data, chunk, max_frame_size=64)
    assert events[0] == FrameDropped("oversized", 100)
    assert frames(events) == [b"<13>ok", b"<13>next"]


def test_lf_frame_over_max_frame_size_is_dropped_and_stream_resyncs(chunk):
    data = b"<13>" + b"y" * 200 + b"\n<13>after\n"
    events = feed(data, chunk, max_frame_size=64)
    drops = [e for e in events if isinstance(e, FrameDropped)]
    assert drops == [FrameDropped("oversized", 204)]
    assert frames(events) == [b"<13>after"]


def test_zero_count_is_dropped():
    events = feed(b"0 <13>next\n")
    assert events[0] == FrameDropped("empty octet-counted frame", 0)
    assert frames(events) == [b"<13>next"]


def test_buffer_stays_bounded_while_discarding():
    framer = Rfc6587Framer(max_frame_size=1024)
    framer.receive_data(b"999999999 ")
    assert isinstance(framer.next_event(), FrameDropped)
    for _ in range(1000):
        framer.receive_data(b"z" * 4096)
        assert framer.next_event() is NEED_DATA
        assert len(framer.trailing_data) == 0


def test_receive_after_eof_is_a_bug():
    framer = Rfc6587Framer()
    framer.receive_data(b"")
    with pytest.raises(RuntimeError):
        framer.receive_data(b"x")


def test_random_garbage_never_raises_and_is_fully_consumed():
    rng = random.Random(6587)
    alphabet = b"0123456789 <>\n\r\x00ab"
    for _ in range(300):
        data = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 300)))
        whole = feed(data, None, max_frame_size=32)
        assert feed(data, 1, max_frame_size=32) == whole
        for event in whole:
            if isinstance(event, SyslogFrame):
                assert 0 < len(event.data) <= 32
