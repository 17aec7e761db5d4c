"""The local-senders guard: over loopback, only the configured uids reach bansink's ports.

Everything runs in a namespace the test creates: its own lo, its own nftables, listeners in it,
and `logger` (what a local user would use) run in it as root or as `nobody`.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import pytest

from bansink.actions.nftables import NftablesSet

from support import Netns, namespaces

GUARDED, OTHER = 5514, 5515
AS_NOBODY = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")
HOSTS = ("127.0.0.1", "::1")


@pytest.fixture
def ns() -> Iterator[Netns]:
    with namespaces("guard") as (ns,):
        yield ns


def guarded(ns: Netns, uids: list[int] | None = None, **kw) -> NftablesSet:
    backend = NftablesSet(local_ports=[("udp", GUARDED), ("tcp", GUARDED)],
                          local_uids=[0] if uids is None else uids, **kw)
    ns.in_namespace(backend.setup)
    return backend


class Listener:
    """A dual-stack UDP socket and TCP listener on one port, made inside the namespace."""

    def __init__(self, ns: Netns, port: int) -> None:
        self.udp, self.tcp = ns.in_namespace(self._open, port)

    @staticmethod
    def _open(port: int) -> tuple[socket.socket, socket.socket]:
        made = []
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            s = socket.socket(socket.AF_INET6, kind)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.bind(("::", port))
            s.settimeout(5)
            made.append(s)
        made[1].listen()
        return made[0], made[1]

    def datagram(self) -> bytes:
        return self.udp.recv(4096)

    def stream(self) -> bytes:
        conn, _ = self.tcp.accept()
        with conn:
            conn.settimeout(5)
            return conn.recv(4096)

    def close(self) -> None:
        self.udp.close()
        self.tcp.close()


def logger(ns: Netns, host: str, port: int, transport: str, text: str,
           as_nobody: bool) -> subprocess.CompletedProcess:
    prefix = AS_NOBODY if as_nobody else ()
    return ns.run(*prefix, "logger", "-n", host, "-P", str(port), transport, text, check=False)


def connect_errno(ns: Netns, host: str, port: int) -> str:
    """What a plain connect() by `nobody` gets, and how fast (Debian's python3 as any user)."""
    code = ("import socket, sys, time\n"
            "s = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)\n"
            "s.settimeout(5); t = time.monotonic()\n"
            "try: s.connect((sys.argv[1], int(sys.argv[2]))); print('connected')\n"
            "except OSError as exc: print(type(exc).__name__, round(time.monotonic() - t, 3))\n")
    return ns.run(*AS_NOBODY, "/usr/bin/python3", "-c", code, host, str(port)).stdout.decode()


@pytest.mark.parametrize("host", HOSTS)
def test_root_reaches_the_guarded_port_and_nobody_does_not(ns: Netns, host: str):
    guarded(ns)
    listener = Listener(ns, GUARDED)
    try:
        assert logger(ns, host, GUARDED, "-d", "root-udp", as_nobody=False).returncode == 0
        assert listener.datagram().endswith(b"root-udp")
        assert logger(ns, host, GUARDED, "-T", "root-tcp", as_nobody=False).returncode == 0
        assert listener.stream().rstrip().endswith(b"root-tcp")

        logger(ns, host, GUARDED, "-d", "nobody-udp", as_nobody=True)
        # datagrams on one socket arrive in order: the next one is root's marker, so nobody's
        # datagram (sent before it) was never delivered
        logger(ns, host, GUARDED, "-d", "root-marker", as_nobody=False)
        assert listener.datagram().endswith(b"root-marker")

        tcp = logger(ns, host, GUARDED, "-T", "nobody-tcp", as_nobody=True)
        assert tcp.returncode != 0 and b"failed to connect" in tcp.stderr
        refused, seconds = connect_errno(ns, host, GUARDED).split()
        assert refused == "ConnectionRefusedError" and float(seconds) < 1  # a reset, not a hang
        listener.tcp.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.stream()  # nothing got through to accept()
    finally:
        listener.close()
    counters = ns.run("nft", "list", "chain", "inet", "bansink", "local_senders").stdout.decode()
    assert "counter packets 0 " not in counters  # both rules rejected something


@pytest.mark.parametrize("host", HOSTS)
def test_other_ports_are_open_to_every_local_user(ns: Netns, host: str):
    guarded(ns)
    listener = Listener(ns, OTHER)
    try:
        logger(ns, host, OTHER, "-d", "nobody-udp", as_nobody=True)
        assert listener.datagram().endswith(b"nobody-udp")
        assert logger(ns, host, OTHER, "-T", "nobody-tcp", as_nobody=True).returncode == 0
        assert listener.stream().rstrip().endswith(b"nobody-tcp")
    finally:
        listener.close()


def test_packets_without_a_socket_pass_even_to_the_guarded_port(ns: Netns):
    # no uid may send to the port, not even root; a root client bound to that port connects to
    # a closed one, and the kernel's RST (no socket: `meta skuid` matches nothing) must reach it
    guarded(ns, uids=[12345])

    def connect_from_guarded_port() -> str:
        with socket.socket() as s:
            s.bind(("127.0.0.1", GUARDED))
            s.settimeout(3)
            try:
                s.connect(("127.0.0.1", OTHER))
            except OSError as exc:
                return type(exc).__name__
            return "connected"

    assert ns.in_namespace(connect_from_guarded_port) == "ConnectionRefusedError"
    assert logger(ns, "127.0.0.1", GUARDED, "-T", "root", as_nobody=False).returncode != 0


def test_guard_rules_are_idempotent_replaced_on_change_and_removed_when_off(ns: Netns):
    guarded(ns)
    first = ns.nft_json("list", "chain", "inet", "bansink", "local_senders")
    guarded(ns)
    assert ns.nft_json("list", "chain", "inet", "bansink", "local_senders") == first
    chain = next(i["chain"] for i in first["nftables"] if "chain" in i)
    assert (chain["type"], chain["hook"], chain["prio"]) == ("filter", "output", -10)

    guarded(ns, uids=[0, 104])
    text = ns.run("nft", "list", "chain", "inet", "bansink", "local_senders").stdout.decode()
    assert text.count("meta skuid != { 0, 104 }") == 2
    # the default reject, icmpx port-unreachable, lists as plain `reject`
    assert 'oifname "lo" udp dport 5514' in text and " reject comment" in text
    assert 'oifname "lo" tcp dport 5514' in text and "reject with tcp reset" in text

    ns.in_namespace(NftablesSet().setup)  # the guard is off in this config
    listed = ns.nft_json("list", "table", "inet", "bansink")["nftables"]
    assert [i["chain"]["name"] for i in listed if "chain" in i] == ["input"]


@pytest.mark.parametrize("kw", [
    {"local_ports": [("sctp", 514)], "local_uids": [0]},
    {"local_ports": [("udp", 0)], "local_uids": [0]},
    {"local_ports": [("udp", 514)], "local_uids": []},
])
def test_a_guard_that_cannot_work_is_refused(kw):
    with pytest.raises(ValueError, match="local_"):
        NftablesSet(**kw)


def test_without_uids_or_ports_there_is_no_guard():
    assert not NftablesSet(local_ports=[("udp", 514)]).guarded
    assert not NftablesSet(local_uids=[0]).guarded
    assert NftablesSet(local_ports=[("udp", 514)], local_uids=[0]).guarded
