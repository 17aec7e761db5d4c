"""A listener a reload removes (retire) or changes (reconfigure), with real sockets on loopback,
on asyncio's loop and uvloop's: nothing a client sent is lost, nothing unanswered is answered."""

from __future__ import annotations

import asyncio
import socket

import pytest

from bansink.receiver.relp_listener import RelpListener
from bansink.receiver.tcp import TcpListener

from streams import LOOPS, OPEN, Intake, closed_by_server, settings, syslog_frames
from support import wait_until


class HeldIntake(Intake):
    """Acknowledges RELP frames only when told to (a journal that has not written them yet)."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list = []

    def on_reliable_message(self, message, transport: str, done, *, session: int) -> None:
        self.messages.append(message)
        self.held.append(done)

    def release(self) -> None:
        held, self.held = self.held, []
        for done in held:
            done()


def refused(address: tuple[str, int]) -> bool:
    """No listener there: the connection is refused (or, queued just before the listening
    socket was closed, reset)."""
    try:
        sock = socket.create_connection(address, timeout=2)
    except ConnectionRefusedError:
        return True
    with sock:
        return closed_by_server(sock, 2)


def opened(sock: socket.socket) -> None:
    sock.sendall(OPEN)
    sock.settimeout(5)
    data = b""
    while b"commands=syslog" not in data:
        data += sock.recv(65536)


def read_until_closed(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.mark.parametrize("serve", LOOPS, indirect=True)
def test_a_retired_relp_listener_answers_what_it_took_once_durable_then_says_serverclose(serve):
    intake = HeldIntake()
    served = serve(RelpListener("127.0.0.1", 0, intake=intake, **settings()))
    address = served.address
    client = socket.create_connection(address)
    opened(client)
    client.sendall(syslog_frames(2, 3))
    wait_until(lambda: served.call(lambda: len(intake.messages)) == 3, 5, "three frames taken")
    served.call(served.listener.stop_accepting)  # as a reload does at once, then retires
    retiring = asyncio.run_coroutine_threadsafe(served.listener.retire(5.0), served.loop)
    assert refused(address)
    client.sendall(syslog_frames(5, 1))  # after the goodbye began: never taken, never answered
    client.settimeout(0.3)
    with pytest.raises(TimeoutError):  # nothing is answered before it is durable
        client.recv(65536)
    served.call(intake.release)
    replies = read_until_closed(client)  # then our side of the connection ends
    assert replies.endswith(b"2 rsp 6 200 OK\n3 rsp 6 200 OK\n4 rsp 6 200 OK\n"
                            b"0 serverclose 0\n")
    assert b"5 rsp" not in replies
    client.close()  # as librelp does on serverclose
    retiring.result(5)
    assert len(intake.messages) == 3
    assert list(intake.ended.values()) == [False]  # its last frames may come again: a resend
    assert served.open_connections() == 0


@pytest.mark.parametrize("serve", LOOPS, indirect=True)
def test_a_retired_tcp_listener_says_fin_and_takes_what_the_client_still_sends(serve):
    intake = Intake()
    served = serve(TcpListener("127.0.0.1", 0, intake=intake, **settings()))
    address = served.address
    client = socket.create_connection(address)
    client.sendall(b"<13>Nov 21 10:00:00 h app: one\n")
    wait_until(lambda: served.call(lambda: len(intake.messages)) == 1, 5, "the first line")
    retiring = asyncio.run_coroutine_threadsafe(served.listener.retire(5.0), served.loop)
    client.settimeout(5)
    assert client.recv(1) == b""  # the FIN rsyslog's omfwd looks for before it sends
    assert refused(address)
    client.sendall(b"<13>Nov 21 10:00:01 h app: two, in flight\n")
    wait_until(lambda: served.call(lambda: len(intake.messages)) == 2, 5, "the line in flight")
    client.close()
    retiring.result(5)
    assert [m.msg for m in intake.messages] == ["one", "two, in flight"]
    assert served.open_connections() == 0


@pytest.mark.parametrize("serve", LOOPS, indirect=True)
def test_a_connection_that_does_not_end_is_closed_when_the_grace_runs_out(serve):
    intake = HeldIntake()
    served = serve(RelpListener("127.0.0.1", 0, intake=intake, **settings()))
    client = socket.create_connection(served.address)
    opened(client)
    client.sendall(syslog_frames(2, 1))
    wait_until(lambda: served.call(lambda: len(intake.messages)) == 1, 5, "the frame taken")
    served.run(served.listener.retire(0.2))  # never durable: the goodbye waits in vain
    assert read_until_closed(client) == b"0 serverclose 0\n"  # as when the daemon stops
    assert served.open_connections() == 0 and list(intake.ended.values()) == [False]


@pytest.mark.parametrize("serve", LOOPS, indirect=True)
def test_reconfigure_applies_the_caps_to_new_connections_and_keeps_the_open_ones(serve):
    intake = Intake()
    served = serve(TcpListener("127.0.0.1", 0, intake=intake, **settings(max_message_size=64)))
    kept = [socket.create_connection(served.address) for _ in range(2)]
    wait_until(lambda: served.open_connections() == 2, 5, "two connections")
    served.call(lambda: served.listener.reconfigure(
        max_message_size=2048, max_connections=1, max_connections_per_sender=1,
        idle_timeout=30.0, ssl_context=None, allowed_names=()))
    third = socket.create_connection(served.address)
    assert closed_by_server(third)  # over the lowered cap
    long_line = b"<13>Nov 21 10:00:00 h app: " + b"x" * 500 + b"\n"
    kept[0].sendall(long_line)  # an open connection keeps the size it started with
    wait_until(lambda: served.call(lambda: intake.dropped("oversized")) == 1, 5, "oversized")
    for sock in kept:
        sock.close()
    wait_until(lambda: served.open_connections() == 0, 5, "both closed")
    fresh = socket.create_connection(served.address)
    fresh.sendall(long_line)
    wait_until(lambda: served.call(lambda: len(intake.messages)) == 1, 5, "the long line")
    fresh.close()
