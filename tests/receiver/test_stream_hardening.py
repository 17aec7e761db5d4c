"""Hostile stream clients: a RELP client that never reads its replies, and TLS clients that
never finish (or never start) a handshake. Each listener runs on its own event loop thread
(asyncio's, and uvloop's when installed); the tests talk to it with blocking sockets."""

from __future__ import annotations

import os
import resource
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bansink.receiver.relp_listener import RelpListener
from bansink.receiver.syslog import SyslogMessage
from bansink.receiver.tcp import WRITE_BUFFER_HIGH, StreamListener, TcpListener
from bansink.receiver.tls import server_context

from streams import LOOPS, OPEN, Intake, closed_by_server, relp_exchange, settings, syslog_frames
from support import make_certificates, wait_until

# -- RELP: replies nobody reads --------------------------------------------------------------



@pytest.mark.parametrize("serve", LOOPS, indirect=True)
def test_relp_client_that_never_reads_replies_is_paused_and_memory_stays_bounded(serve):
    intake = Intake()
    served = serve(RelpListener("127.0.0.1", 0, intake=intake, **settings()))
    hog = socket.socket()
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # replies pile up at our end
    hog.connect(served.address)
    hog.sendall(OPEN)
    hog.settimeout(1.0)
    txnr, sent, blocked = 2, 0, False
    while sent < 64 * 2**20 and not blocked:  # 64 MiB of frames, or until bansink stops reading
        chunk = syslog_frames(txnr, 4000)
        txnr += 4000
        try:
            hog.sendall(chunk)
        except TimeoutError:
            blocked = True
        sent += len(chunk)
    (stream,) = served.call(lambda: list(served.listener._open))
    unsent, pauses = served.call(lambda: (stream.transport.get_write_buffer_size(),
                                          set(stream.pauses)))
    assert blocked, f"{sent} bytes sent and still read, {unsent} bytes of replies unsent"
    assert "writing" in pauses
    assert unsent < WRITE_BUFFER_HIGH + 512 * 1024

    other = socket.create_connection(served.address)  # an unrelated session is served
    replies = relp_exchange(other, OPEN + syslog_frames(2, 1) + b"3 close 0\n")
    assert replies.endswith(b"2 rsp 6 200 OK\n3 rsp 6 200 OK\n")
    other.close()
    hog.close()
    wait_until(lambda: len(intake.ended) == 2, 5, "both sessions to end")
    assert sorted(intake.ended.values()) == [False, True]  # the hog never said close
    assert served.open_connections() == 0


@pytest.mark.parametrize("serve", LOOPS, indirect=True)
def test_relp_sessions_are_numbered_and_their_end_reported_once(serve):
    intake = Intake()
    served = serve(RelpListener("127.0.0.1", 0, intake=intake, **settings()))
    clean = socket.create_connection(served.address)
    assert relp_exchange(clean, OPEN + syslog_frames(2, 3) + b"5 close 0\n").endswith(
        b"4 rsp 6 200 OK\n5 rsp 6 200 OK\n")
    cut = socket.create_connection(served.address)
    cut.sendall(OPEN + syslog_frames(2, 1))
    wait_until(lambda: len(intake.messages) == 4, 5, "the fourth message")
    cut.close()
    wait_until(lambda: len(intake.ended) == 2, 5, "both sessions to end")
    first, second = sorted(intake.sessions)
    assert intake.ended == {first: True, second: False}
    assert set(intake.sessions.values()) == {"127.0.0.1"}


# -- TLS: admission before the handshake -----------------------------------------------------

@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    return make_certificates(tmp_path_factory.mktemp("certs"), "DNS:localhost,IP:127.0.0.1")


def tls_listener(certs: Path, intake: Intake, cls: type[StreamListener] = TcpListener,
                 **kw: Any) -> StreamListener:
    context = server_context(str(certs / "server.pem"), str(certs / "server.key"),
                             str(certs / "ca.pem"))
    return cls("127.0.0.1", 0, intake=intake, ssl_context=context,
               allowed_names=["webmail.example"], transport_name="tls", **settings(**kw))


def tls_client(certs: Path, address: tuple[str, int], who: str = "client",
               source: str = "127.0.0.1") -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    context.load_cert_chain(str(certs / f"{who}.pem"), str(certs / f"{who}.key"))
    sock = socket.create_connection(address, timeout=5, source_address=(source, 0))
    return context.wrap_socket(sock, server_hostname="127.0.0.1")


def octet_counted(text: str) -> bytes:
    data = text.encode()
    return b"%d %s" % (len(data), data)


def fds_open() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def nofile_for_2000_sockets() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if min(want, soft if soft >= want else want) < 2200:
        pytest.skip("RLIMIT_NOFILE's hard limit is too low for 2,000 sockets")
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("serve", LOOPS, indirect=True)
def test_a_flood_of_idle_non_sender_connections_is_reset_at_accept_while_a_sender_delivers(
        serve, certs, nofile_for_2000_sockets):
    intake = Intake()
    served = serve(tls_listener(certs, intake, max_connections=50))
    before = fds_open()
    sender = tls_client(certs, served.address)
    delivered = threading.Event()

    def keep_delivering() -> None:
        for n in range(100):
            sender.sendall(octet_counted(f"<13>Nov 21 10:00:00 web app: msg {n}\n"))
            time.sleep(0.005)
        delivered.set()

    talking = threading.Thread(target=keep_delivering)
    talking.start()
    flood = []
    try:
        for _ in range(2000):
            flood.append(socket.create_connection(served.address, timeout=5,
                                                  source_address=("127.0.0.2", 0)))
        wait_until(lambda: intake.dropped("sender_not_allowed") == 2000, 10,
                   "2,000 non-sender connections refused")
        # bansink holds nothing for them: only the client ends are open in this process
        assert fds_open() <= before + len(flood) + 1 + 16
        assert served.open_connections() == 1
        # a non-sender never gets a handshake
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            tls_client(certs, served.address, source="127.0.0.2").recv(1)
    finally:
        talking.join(10)
        for sock in flood:
            sock.close()
    assert delivered.is_set()
    wait_until(lambda: len(intake.messages) == 100, 5, "the sender's 100 messages")
    assert all(isinstance(m, SyslogMessage) for m in intake.messages)
    assert intake.messages[-1].msg == "msg 99"
    assert {d.reason for d in intake.drops} == {"sender_not_allowed"}
    sender.close()


@pytest.mark.parametrize("serve", LOOPS, indirect=True)
def test_a_silent_client_holds_a_place_until_the_handshake_timeout(serve, certs):
    intake = Intake()
    served = serve(tls_listener(certs, intake, max_connections=1, handshake_timeout=0.5))
    silent = socket.create_connection(served.address)  # never sends a ClientHello
    started = time.monotonic()
    wait_until(lambda: served.open_connections() == 1, 5, "the silent connection admitted")
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):  # over the cap meanwhile
        tls_client(certs, served.address).recv(1)
    assert intake.dropped("too_many_connections") == 1
    assert closed_by_server(silent)
    assert 0.4 <= time.monotonic() - started < 5
    wait_until(lambda: intake.dropped("tls_handshake_failed") == 1, 5, "the handshake drop")
    assert served.open_connections() == 0
    client = tls_client(certs, served.address)  # the place is free again
    client.sendall(octet_counted("<13>Nov 21 10:00:00 web app: after\n"))
    wait_until(lambda: intake.messages, 5, "a message")
    client.close()
    silent.close()


@pytest.mark.parametrize("serve", LOOPS, indirect=True)
def test_plain_text_to_the_tls_port_is_a_failed_handshake(serve, certs):
    intake = Intake()
    served = serve(tls_listener(certs, intake))
    plain = socket.create_connection(served.address)
    plain.sendall(b"<13>Nov 21 10:00:00 web app: not tls\n")
    assert closed_by_server(plain)
    wait_until(lambda: intake.dropped("tls_handshake_failed") == 1, 5, "the handshake drop")
    assert intake.messages == []
    assert served.open_connections() == 0
    plain.close()


@pytest.mark.parametrize("serve", LOOPS, indirect=True)
def test_certificate_names_are_checked_after_the_handshake_and_relp_over_tls_works(serve,
                                                                                  certs):
    intake = Intake()
    served = serve(tls_listener(certs, intake, cls=RelpListener))
    stranger = tls_client(certs, served.address, who="stranger")
    assert closed_by_server(stranger)
    wait_until(lambda: intake.dropped("tls_peer_not_allowed") == 1, 5, "the stranger refused")
    client = tls_client(certs, served.address)
    replies = relp_exchange(client, OPEN + syslog_frames(2, 2) + b"4 close 0\n")
    assert replies.endswith(b"2 rsp 6 200 OK\n3 rsp 6 200 OK\n4 rsp 6 200 OK\n")
    client.close()  # TLS waits for the client's side of the shutdown
    wait_until(lambda: intake.ended, 5, "the session's end")
    assert list(intake.ended.values()) == [True] and len(intake.messages) == 2
    stranger.close()
