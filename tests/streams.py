"""Stream listeners under test: each on an event loop of its own (asyncio's, and uvloop's when
installed) in a thread, driven with blocking sockets, delivering to a recording intake."""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from bansink.receiver.tcp import StreamListener

T = TypeVar("T")

try:
    import uvloop
except ImportError:  # the daemon uses uvloop where installed: test it where it is
    uvloop = None

LOOPS = [pytest.param(asyncio.new_event_loop, id="asyncio"),
         pytest.param(uvloop.new_event_loop if uvloop else None, id="uvloop",
                      marks=pytest.mark.skipif(uvloop is None, reason="uvloop not installed"))]


class Intake:
    """Keeps what the listeners deliver; answers RELP frames at once."""

    def __init__(self) -> None:
        self.messages: list = []
        self.drops: list = []
        self.sessions: dict[int, str] = {}
        self.ended: dict[int, bool] = {}

    def on_message(self, message, transport: str) -> None:
        self.messages.append(message)

    def on_reliable_message(self, message, transport: str, done, *, session: int) -> None:
        assert session in self.sessions
        self.messages.append(message)
        done()

    def relp_session_started(self, session: int, peer: str) -> None:
        self.sessions[session] = peer

    def relp_session_ended(self, session: int, peer: str, clean: bool) -> None:
        assert session in self.sessions and session not in self.ended
        self.ended[session] = clean

    def on_drop(self, dropped) -> None:
        self.drops.append(dropped)

    def dropped(self, reason: str) -> int:
        return sum(1 for d in self.drops if d.reason == reason)


class Served:
    """A listener started on an event loop running in a thread of its own."""

    def __init__(self, loop_factory: Callable[[], asyncio.AbstractEventLoop],
                 listener: StreamListener) -> None:
        self.loop = loop_factory()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.listener = listener
        self.run(listener.start())

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def call(self, fn: Callable[[], T]) -> T:
        """fn() on the loop's thread (listener state is only touched there)."""
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn())
            except BaseException as exc:
                done.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return done.result(10)

    @property
    def address(self) -> tuple[str, int]:
        return self.listener.address

    def open_connections(self) -> int:
        return self.call(lambda: len(self.listener._open))

    def stop(self) -> None:
        self.run(self.listener.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def admit_127_0_0_1(address: str) -> str | None:
    return address if address == "127.0.0.1" else None


def settings(**kw: Any) -> dict[str, Any]:
    return {"admit": admit_127_0_0_1, "max_message_size": 1024, "max_connections": 10,
            "max_connections_per_sender": 10, "idle_timeout": 30.0, **kw}


def closed_by_server(sock: socket.socket, timeout: float = 5.0) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, ssl.SSLError):
        return True
    except TimeoutError:
        return False


OFFERS = b"relp_version=0\ncommands=syslog"
OPEN = b"1 open %d %s\n" % (len(OFFERS), OFFERS)


def syslog_frames(first: int, count: int) -> bytes:
    return b"".join(b"%d syslog 5 <13>x\n" % txnr for txnr in range(first, first + count))


def relp_exchange(sock: socket.socket, frames: bytes) -> bytes:
    sock.sendall(frames)
    sock.settimeout(5)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data
