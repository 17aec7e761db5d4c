"""Connection rate limits against the real kernel, inside a namespace each test creates.

Server and clients are addresses on the namespace's own lo (the input hook sees loopback
traffic): each client binds its source address, so one namespace holds several sources.
"""

from __future__ import annotations

import re
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bansink.actions.layout import Layout
from bansink.actions.nftables import NftablesSet, load_libnftables
from bansink.actions.ratelimit import (
    MAX_TRACKED,
    SET_PREFIX,
    RateLimit,
    ratelimit_sets_and_rules,
)

from support import Listener, Netns, connects, family_of, namespaces, wait_until

SERVER4, CLIENT4, OTHER4, TRUSTED4 = "192.0.2.1", "192.0.2.2", "192.0.2.4", "198.51.100.7"
SERVER6, CLIENT6, OTHER6, TRUSTED6 = "2001:db8::1", "2001:db8::2", "2001:db8::4", "2001:db8:e::7"
SMTP, IMAP, DNS = 2525, 1143, 5353
QUICK = 0.5  # seconds a dropped connect or ping waits before it counts as dropped


def smtp(connections: int = 4, window: float = 60) -> RateLimit:
    return RateLimit("smtp", "tcp", (SMTP,), connections, window)


@pytest.fixture
def ns() -> Iterator[Netns]:
    with namespaces("ratelimit") as (ns,):
        for addr in (SERVER4, CLIENT4, OTHER4, TRUSTED4):
            ns.ip("addr", "add", f"{addr}/32", "dev", "lo")
        for addr in (SERVER6, CLIENT6, OTHER6, TRUSTED6):
            ns.ip("addr", "add", f"{addr}/128", "dev", "lo", "nodad")
        ns.run("sysctl", "-qw", "net.ipv4.ping_group_range=0 0")  # ping sockets, this netns only
        yield ns


def nft(ns: Netns, commands: list[dict[str, Any]]) -> None:
    def run() -> None:
        rc, _, error = load_libnftables().json_cmd({"nftables": commands})
        assert rc == 0, error
    ns.in_namespace(run)


def table(family: str = "inet") -> list[dict[str, Any]]:
    return [{"add": {"table": {"family": family, "name": "bansink"}}},
            {"add": {"chain": {"family": family, "table": "bansink", "name": "input",
                               "type": "filter", "hook": "input", "prio": -10,
                               "policy": "accept"}}}]


def setup(ns: Netns, *limits: RateLimit, exempt4: tuple[str, ...] = (),
          exempt6: tuple[str, ...] = ()) -> None:
    """bansink's own setup() with these limits: table and chain, the sets that are missing,
    the rules (replaced), and the sets the config no longer names (removed)."""
    backend = NftablesSet(layout=Layout(ratelimits=limits, exempt=exempt4 + exempt6))
    ns.in_namespace(backend.setup)


@pytest.fixture
def listening(ns: Netns) -> Iterator[None]:
    listener = Listener(ns, SMTP, IMAP)
    yield
    listener.close()


def pings(ns: Netns, source: str, server: str) -> bool:
    """One echo request from `source` (a ping socket): True when the reply comes back."""
    def attempt() -> bool:
        v6 = ":" in source
        proto, request = (socket.IPPROTO_ICMPV6, 128) if v6 else (socket.IPPROTO_ICMP, 8)
        with socket.socket(family_of(source), socket.SOCK_DGRAM, proto) as s:
            s.settimeout(QUICK)
            s.bind((source, 0))
            s.sendto(struct.pack("!BBHHH", request, 0, 0, 0, 1) + b"bansink", (server, 0))
            try:
                reply = s.recv(1024)
            except TimeoutError:
                return False
            return reply[0] == (129 if v6 else 0)
    return ns.in_namespace(attempt)


def dropped(ns: Netns, set_name: str) -> int:
    """Packets counted by the rule that feeds `set_name`."""
    listed = ns.nft_json("list", "chain", "inet", "bansink", "input")["nftables"]
    for item in listed:
        expr = item.get("rule", {}).get("expr", [])
        if any(e.get("set", {}).get("set") == f"@{set_name}" for e in expr):
            return next(e["counter"]["packets"] for e in expr if "counter" in e)
    raise AssertionError(f"no rule feeds {set_name}")


# -- what it builds ------------------------------------------------------------------------------

def test_sets_and_rules_per_limit_and_ip_version():
    icmp = RateLimit("ping", "icmp", (), 4, 60)
    sets, rules = ratelimit_sets_and_rules("inet", "bansink", "input", [smtp(), icmp],
                                           ["198.51.100.0/24"], [])
    assert [s["add"]["set"]["name"] for s in sets] == [
        "ratelimit_smtp_4in60s_ip", "ratelimit_smtp_4in60s_ip6",
        "ratelimit_ping_4in60s_ip", "ratelimit_ping_4in60s_ip6"]
    first = sets[0]["add"]["set"]
    assert (first["type"], first["timeout"], first["size"]) == ("ipv4_addr", 60, MAX_TRACKED)
    assert first["stmt"] == [{"limit": {"rate": 1, "per": "day", "burst": 4, "inv": True}}]
    assert len(rules) == 4
    assert all(rule[-2:] == [{"counter": None}, {"drop": None}] for rule in rules)
    assert rules[0][-3] == {"set": {"op": "add", "set": "@ratelimit_smtp_4in60s_ip",
                                    "elem": {"payload": {"protocol": "ip", "field": "saddr"}}}}


def test_a_single_ip_version_family_gets_only_its_sets():
    sets, rules = ratelimit_sets_and_rules("ip6", "bansink", "input", [smtp()], [], [])
    assert [s["add"]["set"]["name"] for s in sets] == ["ratelimit_smtp_4in60s_ip6"]
    assert len(rules) == 1
    assert ratelimit_sets_and_rules("inet", "bansink", "input", [], [], []) == ([], [])


def test_exempt_networks_are_collapsed_so_the_same_networks_give_the_same_rule():
    def exempt_match(exempt4: list[str]) -> Any:
        _, rules = ratelimit_sets_and_rules("ip", "bansink", "input", [smtp()], exempt4, [])
        return [e for e in rules[0] if e.get("match", {}).get("op") == "!="]

    merged = exempt_match(["198.51.100.0/25", "198.51.100.128/25", "198.51.100.7", "192.0.2.9"])
    assert merged == exempt_match(["192.0.2.9/32", "198.51.100.0/24"])
    assert merged[0]["match"]["right"] == {"set": [
        "192.0.2.9", {"prefix": {"addr": "198.51.100.0", "len": 24}}]}


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "SMTP"}, "use 1-32 of"),
    ({"name": "a" * 33}, "use 1-32 of"),
    ({"protocol": "sctp"}, "is not one of tcp, udp, icmp"),
    ({"ports": ()}, "tcp needs at least one port"),
    ({"ports": (0,)}, "port 0 is not 1-65535"),
    ({"ports": (25, "143")}, "port '143' is not 1-65535"),
    ({"protocol": "icmp"}, "icmp has no ports"),
    ({"connections": 0}, "connections must be a positive integer"),
    ({"window": 1.5}, "window must be whole seconds"),
    ({"window": 86400}, "window must be whole seconds"),
])
def test_a_rate_limit_that_exists_is_valid(kwargs: dict[str, Any], message: str):
    fields: dict[str, Any] = {"name": "smtp", "protocol": "tcp", "ports": (25,),
                              "connections": 4, "window": 60, **kwargs}
    with pytest.raises(ValueError, match=message):
        RateLimit(**fields)


def test_ports_are_kept_sorted_and_once():
    assert RateLimit("mail", "tcp", (143, 25, 143), 4, 60.0).ports == (25, 143)


@pytest.mark.parametrize("args, message", [
    (("bridge", [smtp()], [], []), "rate limits need inet, ip or ip6"),
    (("inet", [smtp(), smtp(5)], [], []), "named twice: smtp"),
    (("inet", [smtp()], ["2001:db8::/32"], []), "exempt4: 2001:db8::/32 is not an IPv4"),
    (("inet", [smtp()], [], ["nonsense"]), "exempt6: 'nonsense' is not an address"),
])
def test_bad_arguments_say_what_is_wrong(args: tuple, message: str):
    family, limits, exempt4, exempt6 = args
    with pytest.raises(ValueError, match=message):
        ratelimit_sets_and_rules(family, "bansink", "input", limits, exempt4, exempt6)


# -- against the kernel --------------------------------------------------------------------------

def test_the_table_reads_well_in_nft_list_ruleset(ns: Netns):
    limits = (RateLimit("mail", "tcp", (25, 143, 110), 4, 60), RateLimit("ping", "icmp", (), 6, 5))
    setup(ns, *limits, exempt4=("198.51.100.0/24", "192.0.2.9"))
    text = ns.run("nft", "list", "ruleset").stdout.decode()
    print(text)
    # (`flags dynamic,timeout`: nft adds it to a set made in one batch with its rule)
    assert re.search(r"set ratelimit_mail_4in60s_ip {\n\t\ttype ipv4_addr\n\t\tsize 65536\n"
                     r"(\t\tflags dynamic,timeout\n)?"
                     r"\t\tlimit rate over 1/day burst 4 packets\n\t\ttimeout 1m\n\t}", text)
    assert "limit rate over 1/day burst 6 packets\n\t\ttimeout 5s\n" in text
    assert ("tcp dport { 25, 110, 143 } ct state new ip saddr != { 192.0.2.9, 198.51.100.0/24 } "
            "add @ratelimit_mail_4in60s_ip { ip saddr } counter packets 0 bytes 0 drop") in text
    assert ("tcp dport { 25, 110, 143 } ct state new add @ratelimit_mail_4in60s_ip6 { ip6 saddr } "
            "counter packets 0 bytes 0 drop") in text
    assert ("icmpv6 type echo-request add @ratelimit_ping_6in5s_ip6 { ip6 saddr } "
            "counter packets 0 bytes 0 drop") in text


@pytest.mark.parametrize("client, other, server", [(CLIENT4, OTHER4, SERVER4),
                                                   (CLIENT6, OTHER6, SERVER6)])
def test_the_fifth_connection_in_the_window_is_dropped_and_counted(
        ns: Netns, listening: None, client: str, other: str, server: str):
    setup(ns, smtp(4, 60))
    assert [connects(ns, client, server, SMTP) for _ in range(5)] == [True] * 4 + [False]
    version = "ip6" if ":" in client else "ip"
    assert dropped(ns, f"ratelimit_smtp_4in60s_{version}") == 1
    assert connects(ns, client, server, IMAP)  # another port: not limited
    assert connects(ns, other, server, SMTP)  # another address: a bucket of its own
    assert not connects(ns, client, server, SMTP)
    assert dropped(ns, f"ratelimit_smtp_4in60s_{version}") == 2


@pytest.mark.parametrize("trusted, server", [(TRUSTED4, SERVER4), (TRUSTED6, SERVER6)])
def test_an_exempt_address_is_never_limited(ns: Netns, listening: None, trusted: str,
                                            server: str):
    setup(ns, smtp(2, 60), exempt4=("198.51.100.0/24",), exempt6=("2001:db8:e::/48",))
    assert all(connects(ns, trusted, server, SMTP) for _ in range(6))
    client = CLIENT6 if ":" in trusted else CLIENT4
    assert [connects(ns, client, server, SMTP) for _ in range(3)] == [True, True, False]


def test_the_window_starts_at_the_first_connection_and_retries_do_not_extend_it(
        ns: Netns, listening: None):
    setup(ns, smtp(2, 2))
    start = time.monotonic()
    assert [connects(ns, CLIENT4, SERVER4, SMTP) for _ in range(3)] == [True, True, False]
    # keep knocking: with `add` (not `update`) the dropped attempts leave the timeout alone
    wait_until(lambda: connects(ns, CLIENT4, SERVER4, SMTP), timeout=6, what="a new window")
    assert 1.5 < time.monotonic() - start < 4
    assert [connects(ns, CLIENT4, SERVER4, SMTP) for _ in range(2)] == [True, False]


@pytest.mark.parametrize("client, server", [(CLIENT4, SERVER4), (CLIENT6, SERVER6)])
def test_the_fifth_ping_is_dropped(ns: Netns, client: str, server: str):
    setup(ns, RateLimit("ping", "icmp", (), 4, 60))
    assert [pings(ns, client, server) for _ in range(5)] == [True] * 4 + [False]
    version = "ip6" if ":" in client else "ip"
    assert dropped(ns, f"ratelimit_ping_4in60s_{version}") == 1


def test_udp_counts_new_flows(ns: Netns):
    setup(ns, RateLimit("dns", "udp", (DNS,), 4, 60))

    def exchange() -> list[bytes]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
            server.bind((SERVER4, DNS))
            server.settimeout(5)
            for n in range(5):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # a new flow each
                    s.bind((CLIENT4, 0))
                    s.sendto(b"%d" % n, (SERVER4, DNS))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((OTHER4, 0))
                s.sendto(b"marker", (SERVER4, DNS))
            # datagrams on one socket arrive in order: the marker comes right after the fourth
            return [server.recv(64) for _ in range(5)]
    assert ns.in_namespace(exchange) == [b"0", b"1", b"2", b"3", b"marker"]
    assert dropped(ns, "ratelimit_dns_4in60s_ip") == 1


def test_a_full_set_lets_new_addresses_through(ns: Netns, listening: None,
                                               monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("bansink.actions.ratelimit.MAX_TRACKED", 1)
    setup(ns, smtp(2))
    assert connects(ns, CLIENT4, SERVER4, SMTP)  # the one address the set can hold
    assert all(connects(ns, OTHER4, SERVER4, SMTP) for _ in range(4))  # untracked: not limited
    assert [connects(ns, CLIENT4, SERVER4, SMTP) for _ in range(2)] == [True, False]


@pytest.mark.parametrize("sets_first", [False, True])
def test_setting_up_again_adds_only_the_missing_sets(ns: Netns, listening: None,
                                                     sets_first: bool):
    # a set made in one batch with its rule comes out `flags dynamic`, one made alone does not:
    # both work, and neither is added again
    if sets_first:
        nft(ns, [*table(), *ratelimit_sets_and_rules("inet", "bansink", "input", [smtp(2)],
                                                     [], [])[0]])
    setup(ns, smtp(2))
    listed = ns.run("nft", "list", "set", "inet", "bansink", "ratelimit_smtp_2in60s_ip").stdout
    assert (b"dynamic" in listed) is not sets_first
    assert connects(ns, CLIENT4, SERVER4, SMTP)
    setup(ns, smtp(2))  # the rules are replaced, the sets and their elements stay
    assert [connects(ns, CLIENT4, SERVER4, SMTP) for _ in range(2)] == [True, False]


def test_a_changed_limit_gets_new_sets_and_the_old_ones_go(ns: Netns, listening: None):
    setup(ns, smtp(4, 60))
    assert [connects(ns, CLIENT4, SERVER4, SMTP) for _ in range(2)] == [True, True]
    setup(ns, smtp(2, 60))
    names = {i["set"]["name"] for i in ns.nft_json("list", "sets", "inet")["nftables"]
             if "set" in i and i["set"]["name"].startswith(SET_PREFIX)}
    assert names == {"ratelimit_smtp_2in60s_ip", "ratelimit_smtp_2in60s_ip6"}
    assert [connects(ns, CLIENT4, SERVER4, SMTP) for _ in range(3)] == [True, True, False]
