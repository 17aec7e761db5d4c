"""The UDP listener (asyncio-dgram) with real datagrams on loopback."""

import asyncio
import socket

from bansink.receiver.syslog import MalformedSyslog, SyslogMessage
from bansink.receiver.udp import UdpListener

from support import Recorder


def run(admit, datagrams: list[bytes], expect: int) -> Recorder:
    async def scenario():
        rec = Recorder()
        lst = UdpListener("127.0.0.1", 0, admit=admit, intake=rec, max_message_size=512,
                          receive_buffer=1 << 20)
        await lst.start()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for d in datagrams:
                s.sendto(d, lst.address)
        for _ in range(500):
            if len(rec.messages) + len(rec.drops) >= expect:
                break
            await asyncio.sleep(0.01)
        await lst.stop()
        return rec

    return asyncio.run(scenario())


def test_messages_malformed_and_oversized_datagrams():
    rec = run(lambda a: a, [b"<13>Nov 21 10:00:00 h app: one", b"x" * 600, b"not syslog",
                            b"<13>1 - h app - - - two\n"], expect=4)
    assert [type(m) for m in rec.messages] == [SyslogMessage, MalformedSyslog, SyslogMessage]
    assert [m.msg for m in rec.messages if isinstance(m, SyslogMessage)] == ["one", "two"]
    assert [(d.reason, d.size, d.transport) for d in rec.drops] == [("oversized", 600, "udp")]


def test_datagrams_from_senders_not_allowed_are_dropped_unparsed():
    rec = run(lambda a: None, [b"<13>Nov 21 10:00:00 h app: one"] * 3, expect=3)
    assert rec.messages == []
    assert [(d.reason, d.peer) for d in rec.drops] == [("sender_not_allowed", "127.0.0.1")] * 3


def test_a_burst_read_past_the_transport_loses_nothing_and_keeps_the_drop_sizes():
    """Datagrams that wait in the socket are read directly after each one asyncio delivers:
    all of a burst arrive, a malformed one is passed on as such, an oversized one is dropped
    with its whole size."""
    burst = [b"<13>Nov 21 10:00:00 h app: m%d" % i for i in range(1000)]
    burst[500] = b"y" * 4000
    burst[700] = b"\x00<999>not syslog"
    rec = run(lambda a: a, burst, expect=1000)
    good = [m for m in rec.messages if isinstance(m, SyslogMessage)]
    assert sorted(int(m.msg[1:]) for m in good) == [i for i in range(1000) if i not in (500, 700)]
    assert [type(m) for m in rec.messages].count(MalformedSyslog) == 1  # counted, not fatal
    assert [(d.reason, d.size) for d in rec.drops] == [("oversized", 4000)]
