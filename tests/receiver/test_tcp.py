"""The TCP listener's limits, with real sockets on loopback."""

import asyncio

from bansink.receiver.syslog import SyslogMessage
from bansink.receiver.tcp import TcpListener

from support import Recorder


def admit_loopback(address: str) -> str | None:
    return address if address.startswith("127.") else None


async def listener(recorder: Recorder, **kw) -> TcpListener:
    settings = {"max_message_size": 1024, "max_connections": 10,
                "max_connections_per_sender": 10, "idle_timeout": 30.0, **kw}
    lst = TcpListener("127.0.0.1", 0, admit=admit_loopback, intake=recorder, **settings)
    await lst.start()
    return lst


async def closed_by_server(reader: asyncio.StreamReader, timeout: float = 5.0) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), timeout) == b""
    except ConnectionResetError:
        return True


def test_connections_over_the_per_sender_and_total_caps_are_closed_at_accept():
    async def scenario():
        rec = Recorder()
        lst = await listener(rec, max_connections=3, max_connections_per_sender=2)
        host, port = lst.address
        kept = [await asyncio.open_connection(host, port) for _ in range(2)]
        third_r, _ = await asyncio.open_connection(host, port)  # same sender, over its cap
        assert await closed_by_server(third_r)
        # another sender is allowed; a fourth connection is over the total cap
        other = await asyncio.open_connection(host, port, local_addr=("127.0.0.2", 0))
        fourth_r, _ = await asyncio.open_connection(host, port, local_addr=("127.0.0.3", 0))
        assert await closed_by_server(fourth_r)
        # the kept connections still work
        kept[0][1].write(b"<13>Nov 21 10:00:00 h app: still here\n")
        await kept[0][1].drain()
        for _ in range(200):
            if rec.messages:
                break
            await asyncio.sleep(0.01)
        for _, w in [*kept, other]:
            w.close()
        await lst.stop()
        return rec

    rec = asyncio.run(scenario())
    reasons = [d.reason for d in rec.drops]
    assert reasons == ["too_many_connections_from_sender", "too_many_connections"]
    assert isinstance(rec.messages[0], SyslogMessage) and rec.messages[0].msg == "still here"


def test_idle_connections_are_closed_and_active_ones_kept():
    async def scenario():
        rec = Recorder()
        lst = await listener(rec, idle_timeout=0.3)
        host, port = lst.address
        idle_r, _ = await asyncio.open_connection(host, port)
        busy_r, busy_w = await asyncio.open_connection(host, port)

        async def keep_talking():  # every 0.1 s, for longer than the idle timeout
            for _ in range(6):
                busy_w.write(b"<13>Nov 21 10:00:00 h app: tick\n")
                await busy_w.drain()
                await asyncio.sleep(0.1)

        talking = asyncio.create_task(keep_talking())
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await closed_by_server(idle_r)
        idle_for = loop.time() - start
        await talking
        assert not busy_r.at_eof()
        busy_w.close()
        await lst.stop()
        return rec, idle_for

    rec, idle_for = asyncio.run(scenario())
    assert 0.25 <= idle_for < 3
    assert [d.reason for d in rec.drops] == ["idle_timeout"]
    assert len(rec.messages) == 6


def test_senders_outside_the_allowlist_are_reset_at_accept():
    async def scenario():
        rec = Recorder()
        lst = TcpListener("127.0.0.1", 0, admit=lambda a: None, intake=rec, max_message_size=64,
                          max_connections=10, max_connections_per_sender=10, idle_timeout=30)
        await lst.start()
        reader, writer = await asyncio.open_connection(*lst.address)
        writer.write(b"<13>Nov 21 10:00:00 h app: x\n")
        closed = await closed_by_server(reader)
        writer.close()
        await lst.stop()
        return rec, closed

    rec, closed = asyncio.run(scenario())
    assert closed and rec.messages == []
    assert [d.reason for d in rec.drops] == ["sender_not_allowed"]
