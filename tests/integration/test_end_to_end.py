"""Syslog in, nftables ban out: real rsyslogd and logger as senders, real nft in namespaces."""

import textwrap

import pytest

from lab import CLIENT4, CLIENT6, PORT, PROXY4, PROXY4_ATK, PROXY6, Lab, Rsyslog, login_failed
from support import Netns, wait_until

ATTACKER, BELOW, FORGED = "203.0.113.7", "203.0.113.8", "203.0.113.66"


def scenario() -> list[str]:
    """BELOW stays under maxretry (3), a forged user name names FORGED, ATTACKER crosses it last:
    once ATTACKER is banned, everything before it on the same ordered path has been handled."""
    forged = login_failed(BELOW, user=f'x", client_ip="{FORGED}')
    return [login_failed(BELOW), login_failed(BELOW), forged, forged, forged,
            *(login_failed(ATTACKER, user=f"u{i}") for i in range(3))]


def assert_only_attacker_banned(lab: Lab, bantime: int = 3600) -> None:
    wait_until(lambda: ATTACKER in lab.proxy.set_elements(), 15, f"{ATTACKER} in ban4")
    elements = lab.proxy.set_elements()
    assert set(elements) == {ATTACKER}
    assert elements[ATTACKER]["timeout"] == bantime
    assert bantime - 30 <= elements[ATTACKER]["expires"] <= bantime
    ban = lab.daemon.lines("ban")
    assert [(b["ip"], b["jail"], b["count"]) for b in ban] == [(ATTACKER, "roundcube", 3)]
    assert lab.daemon.lines("malformed_event")  # the forged lines were seen and refused


OMFWD = {
    "udp": 'action(type="omfwd" target="{t}" port="{p}" protocol="udp")',
    "tcp-lf-traditional": 'action(type="omfwd" target="{t}" port="{p}" protocol="tcp")',
    "tcp-lf-forwardformat": 'action(type="omfwd" target="{t}" port="{p}" protocol="tcp" '
                            'template="RSYSLOG_ForwardFormat")',
    "tcp-octet-protocol23": 'action(type="omfwd" target="{t}" port="{p}" protocol="tcp" '
                            'TCP_Framing="octet-counted" '
                            'template="RSYSLOG_SyslogProtocol23Format")',
    "tcp6-octet-protocol23": 'action(type="omfwd" target="{t6}" port="{p}" protocol="tcp" '
                             'TCP_Framing="octet-counted" '
                             'template="RSYSLOG_SyslogProtocol23Format")',
}


@pytest.mark.parametrize("forward", list(OMFWD))
def test_rsyslog_forwarding_bans_exactly_the_attackers_over_the_threshold(lab: Lab, forward):
    lab.start()
    rsyslog = Rsyslog(lab.sender, lab.tmp,
                      OMFWD[forward].format(t=PROXY4, t6=PROXY6, p=PORT))
    for message in scenario():
        rsyslog.log(message)
    assert_only_attacker_banned(lab)


LOGGER = {
    "udp-rfc5424": (PROXY4, ["--udp"]),
    "udp-rfc3164": (PROXY4, ["--udp", "--rfc3164"]),
    "tcp-octet-count": (PROXY4, ["--tcp", "--octet-count"]),
    "tcp-lf": (PROXY4, ["--tcp"]),
    "tcp6-rfc3164": (PROXY6, ["--tcp", "--rfc3164"]),
    "udp6-rfc5424": (PROXY6, ["--udp"]),
}


@pytest.mark.parametrize("path", list(LOGGER))
def test_logger_straight_to_bansink(lab: Lab, path):
    lab.start()
    target, flags = LOGGER[path]
    for message in scenario():
        lab.sender.run("logger", "-n", target, "-P", str(PORT), *flags, "-t", "roundcube", message)
    assert_only_attacker_banned(lab)


def connects(ns: Netns, host: str, port: int) -> bool:
    code = ns.run("python3", "-c", "import socket,sys; s=socket.socket(); s.settimeout(0.3);"
                  f"sys.exit(s.connect_ex(({host!r}, {port})))", check=False).returncode
    return code == 0


def test_banned_client_is_dropped_until_its_ban_expires(lab: Lab):
    lab.start(bantime="3s")
    assert connects(lab.client, PROXY4_ATK, PORT)  # the client reaches the proxy
    for _ in range(3):
        lab.sender.run("logger", "-n", PROXY4, "-P", str(PORT), "--tcp", "-t", "roundcube",
                       login_failed(CLIENT4))
    wait_until(lambda: CLIENT4 in lab.proxy.set_elements(), 10, "client banned")
    assert not connects(lab.client, PROXY4_ATK, PORT)
    rules = lab.proxy.nft_json("list", "chain", "inet", "bansink", "input")["nftables"]
    counters = [e["counter"] for i in rules if "rule" in i for e in i["rule"]["expr"]
                if "counter" in e]
    assert counters[0]["packets"] >= 1  # the ban4 rule dropped the SYN(s)
    wait_until(lambda: connects(lab.client, PROXY4_ATK, PORT), 10, "ban to expire")
    assert CLIENT4 not in lab.proxy.set_elements()


def test_ipv6_client_and_ipv4_mapped_addresses(lab: Lab):
    lab.start()
    mapped = "::ffff:203.0.113.9"
    for client in (CLIENT6, CLIENT6, CLIENT6, mapped, mapped, "203.0.113.9"):
        lab.sender.run("logger", "-n", PROXY4, "-P", str(PORT), "--tcp", "--octet-count",
                       "-t", "roundcube", login_failed(client))
    wait_until(lambda: "203.0.113.9" in lab.proxy.set_elements("bansink", "ban4"), 10, "mapped")
    # an IPv6 client is banned by its /64 (ipv6_prefix): its neighbour 2001:db8:2::1 too
    assert set(lab.proxy.set_elements("bansink", "net6")) == {"2001:db8:2::/64"}
    assert set(lab.proxy.set_elements("bansink", "ban6")) == set()
    assert not connects(lab.client, "2001:db8:2::1", PORT)


def test_sender_outside_the_allowlist_bans_nobody(lab: Lab):
    lab.start()
    for transport in ("--udp", "--tcp"):
        for _ in range(4):
            lab.client.run("logger", "-n", PROXY4_ATK, "-P", str(PORT), transport, "-t",
                           "roundcube", login_failed(BELOW), check=False)
    wait_until(lambda: {d["transport"] for d in lab.daemon.lines("drop")
                        if d["reason"] == "sender_not_allowed" and d["peer"] == CLIENT4}
               == {"udp", "tcp"}, 10, "drops from the client logged on both transports")
    for _ in range(3):
        lab.sender.run("logger", "-n", PROXY4, "-P", str(PORT), "--udp", "-t", "roundcube",
                       login_failed(ATTACKER))
    wait_until(lambda: ATTACKER in lab.proxy.set_elements(), 10, "attacker banned")
    assert set(lab.proxy.set_elements()) == {ATTACKER}


def test_hostile_stream_does_not_kill_the_connection_or_the_daemon(lab: Lab):
    lab.start()
    script = textwrap.dedent(f"""
        import socket
        s = socket.create_connection(({PROXY4!r}, {PORT}))
        good = b'<38>Aug 22 10:00:00 web roundcube: {login_failed(ATTACKER)}'
        s.sendall(b'20000 ' + b'x' * 20000)                  # oversized counted frame
        s.sendall(b'garbage without pri\\n' + b'<38>' + b'y' * 9000 + b'\\n')
        s.sendall(b'<38>Aug 22 10:00:00 web roundcube: Login failed: client_ip="1.2.3.4\\n')
        for _ in range(3):
            s.sendall(str(len(good)).encode() + b' ' + good)
        s.close()
    """)
    lab.sender.run("python3", "-c", script)
    wait_until(lambda: ATTACKER in lab.proxy.set_elements(), 10, "ban after garbage")
    drops = {d["reason"] for d in lab.daemon.lines("drop")}
    assert "oversized" in drops
    assert lab.daemon.lines("malformed_syslog") and lab.daemon.lines("malformed_event")
    assert lab.daemon.proc.poll() is None
    assert lab.daemon.stop() == 0
