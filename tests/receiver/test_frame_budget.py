"""A stream handles at most FRAME_BUDGET frames per pass of the event loop: a read burst does not
hold back timers (the nft commit a ban waits for) or other connections, and nothing read is
lost or reordered, whatever ends the connection or pauses its reading."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from typing import Any

import pytest

from bansink.receiver.relp_listener import RelpListener
from bansink.receiver.tcp import FRAME_BUDGET, TcpListener

from streams import LOOPS, OPEN, Intake, closed_by_server, relp_exchange, settings, syslog_frames
from support import wait_until


class TickingIntake(Intake):
    """Notes, for every message, how many passes the loop had made (a call_soon ticker)."""

    def __init__(self) -> None:
        super().__init__()
        self.ticks = 0
        self.tick_of: list[int] = []
        self.log: list[str] = []

    def start_ticking(self) -> None:
        def tick() -> None:
            self.ticks += 1
            if self.ticking:
                asyncio.get_running_loop().call_soon(tick)

        self.ticking = True
        asyncio.get_running_loop().call_soon(tick)

    def on_message(self, message, transport: str) -> None:
        super().on_message(message, transport)
        self.tick_of.append(self.ticks)

    def on_reliable_message(self, message, transport: str, done, *, session: int) -> None:
        super().on_reliable_message(message, transport, done, session=session)
        self.tick_of.append(self.ticks)
        self.log.append("message")

    def relp_session_ended(self, session: int, peer: str, clean: bool) -> None:
        super().relp_session_ended(session, peer, clean)
        self.log.append("ended")

    def most_per_pass(self) -> int:
        return max(Counter(self.tick_of).values())


def lf_frames(count: int) -> bytes:
    return b"".join(b"<13>Nov 21 10:00:00 h app: n %d\n" % i for i in range(count))


@pytest.mark.parametrize("serve", LOOPS, indirect=True)
def test_a_burst_is_handled_a_budget_per_pass_in_order_and_all_of_it_before_the_close(serve):
    intake = TickingIntake()
    served = serve(TcpListener("127.0.0.1", 0, intake=intake, **settings()))
    served.call(intake.start_ticking)
    count = 20_000
    sock = socket.create_connection(served.address)
    sock.sendall(lf_frames(count) + b"<13>Nov 21 10:00:00 h app: last, no LF at EOF")
    sock.shutdown(socket.SHUT_WR)  # EOF while most of the burst is still buffered
    assert closed_by_server(sock)
    sock.close()
    # the server closes only once everything it read was handled
    messages = served.call(lambda: list(intake.messages))
    assert [m.msg for m in messages] == [f"n {i}" for i in range(count)] + ["last, no LF at EOF"]
    served.call(lambda: setattr(intake, "ticking", False))
    # per pass of the loop: the last budget of one read and, once reading resumed, the first
    # budget of the next read (uvloop calls both in one iteration)
    assert intake.most_per_pass() <= 2 * FRAME_BUDGET
    assert len(set(intake.tick_of)) >= count // (2 * FRAME_BUDGET)  # the loop ran all along
    assert served.call(lambda: len(served.listener._open)) == 0


@pytest.mark.parametrize("serve", LOOPS, indirect=True)
def test_a_pipelined_relp_burst_is_handled_a_budget_per_pass_and_fully_answered(serve):
    intake = TickingIntake()
    served = serve(RelpListener("127.0.0.1", 0, intake=intake, **settings()))
    served.call(intake.start_ticking)
    count = 3000
    sock = socket.create_connection(served.address)
    replies = relp_exchange(sock, OPEN + syslog_frames(2, count) + b"%d close 0\n" % (count + 2))
    sock.close()
    assert replies.count(b" rsp 6 200 OK\n") == count + 1  # every syslog frame, and the close
    wait_until(lambda: served.call(lambda: intake.ended), 5, "the session to end")
    served.call(lambda: setattr(intake, "ticking", False))
    assert len(intake.messages) == count
    assert intake.most_per_pass() <= 2 * FRAME_BUDGET
    assert list(intake.ended.values()) == [True]


# -- a stream driven by hand: pause reasons and the end of a connection ----------------------

class FakeTransport:
    def __init__(self) -> None:
        self.reading = True
        self.closing = False
        self.aborted = False
        self.written = b""

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else None

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True

    def write(self, data: bytes) -> None:
        self.written += data


async def settle(until, passes: int = 10_000) -> None:
    for _ in range(passes):
        if until():
            return
        await asyncio.sleep(0)
    raise AssertionError("the stream did not get through its backlog")


def test_backlog_and_write_backpressure_pause_reading_together_and_resume_it_together():
    async def scenario() -> None:
        intake = Intake()
        lst = TcpListener("127.0.0.1", 0, intake=intake, **settings())
        stream = lst.stream(lst)
        transport = FakeTransport()
        stream.connection_made(transport)

        # backpressure first, then a burst: the backlog ends, reading stays paused for writing
        stream.pause_writing()
        stream.data_received(lf_frames(1000))
        assert len(intake.messages) == FRAME_BUDGET and stream.pauses == {"writing", "backlog"}
        await settle(lambda: len(intake.messages) == 1000)
        await settle(lambda: "backlog" not in stream.pauses)
        assert not transport.reading
        stream.resume_writing()
        assert transport.reading

        # a burst first, then backpressure that ends during it: reading waits for the backlog
        stream.data_received(lf_frames(1000))
        assert not transport.reading
        stream.pause_writing()
        stream.resume_writing()
        assert not transport.reading and stream.pauses == {"backlog"}
        await settle(lambda: len(intake.messages) == 2000)
        await settle(lambda: not stream.pauses)
        assert transport.reading and not transport.closing

    asyncio.run(scenario())


def test_frames_read_before_a_reset_are_all_handled_before_the_session_ends():
    async def scenario() -> TickingIntake:
        intake = TickingIntake()
        lst = RelpListener("127.0.0.1", 0, intake=intake, **settings())
        stream = lst.stream(lst)
        transport = FakeTransport()
        stream.connection_made(transport)
        lst._open.add(stream)
        stream.data_received(OPEN + syslog_frames(2, 1000))
        assert len(intake.messages) < 1000 and not transport.reading
        stream.connection_lost(ConnectionResetError())
        assert len(intake.messages) == 1000
        await asyncio.sleep(0)  # the pass that was scheduled finds nothing left
        return intake

    intake = asyncio.run(scenario())
    assert intake.log == ["message"] * 1000 + ["ended"]
    assert list(intake.ended.values()) == [False]


def test_a_stopping_listener_leaves_the_backlog_unhandled():
    async def scenario() -> Intake:
        intake = Intake()
        lst = TcpListener("127.0.0.1", 0, intake=intake, **settings())
        stream = lst.stream(lst)
        stream.connection_made(FakeTransport())
        stream.data_received(lf_frames(1000))
        await lst.stop()
        for _ in range(10):
            await asyncio.sleep(0)
        stream.connection_lost(None)
        return intake

    assert len(asyncio.run(scenario()).messages) == FRAME_BUDGET


def test_an_intake_that_fails_in_a_later_pass_ends_the_connection():
    class Failing(Intake):
        def on_message(self, message, transport: str) -> None:
            if len(self.messages) == FRAME_BUDGET + 10:
                raise RuntimeError("intake bug")
            super().on_message(message, transport)

    async def scenario() -> tuple[FakeTransport, list[dict]]:
        errors: list[dict] = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
        lst = TcpListener("127.0.0.1", 0, intake=Failing(), **settings())
        stream = lst.stream(lst)
        transport = FakeTransport()
        stream.connection_made(transport)
        stream.data_received(lf_frames(1000))
        await settle(lambda: transport.closing)
        return transport, errors

    transport, errors = asyncio.run(scenario())
    assert transport.aborted
    assert [type(e.get("exception")) for e in errors] == [RuntimeError]
