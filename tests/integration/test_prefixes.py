"""Prefix bans in the kernel: an IPv6 attacker's /64, and several banned addresses of one
network made one element of the jail's interval set (the narrower ones gone in the same
commit), seen through `nft list set`, a client's dropped SYN and `bansink explain`."""

from .test_control import ask, banned, fail
from lab import CLIENT4, CLIENT6, PORT, PROXY4_ATK, PROXY6_ATK, Lab
from support import connects, wait_until

WIDER = '"prefix.count" = 3\n"prefix.ipv6" = 64\nipv6_prefix = 128'


def test_three_banned_addresses_of_a_24_become_one_element_that_drops_its_neighbours(lab: Lab):
    lab.start(maxretry=2, jail=WIDER)
    assert connects(lab.client, CLIENT4, PROXY4_ATK, PORT)
    attackers = ["198.51.100.7", "198.51.100.8", "198.51.100.9"]
    fail(lab, attackers[0], 2)
    wait_until(lambda: banned(lab) == {attackers[0]}, 10, "the first address's ban")
    for ip in attackers[1:]:
        fail(lab, ip, 2)
    wait_until(lambda: banned(lab, "net4") == {"198.51.100.0/24"}, 10, "the /24")
    assert banned(lab) == set()  # the addresses' own bans are lifted
    assert not connects(lab.client, CLIENT4, PROXY4_ATK, PORT)  # it never failed a login
    (wide,) = ask(lab, "bans")["bans"]
    assert (wide["target"], wide["origin"]) == ("198.51.100.0/24", "escalation")
    explained = ask(lab, "explain", attackers[0])
    assert explained["banned"] and explained["running_bans"][0]["target"] == "198.51.100.0/24"
    own = [b for b in explained["bans"] if b["target"] == attackers[0]]
    assert [(b["lifted_by"], len(b["messages"])) for b in own] == [("prefix", 2)]


def test_an_ipv6_64_with_three_banned_addresses_becomes_one_element(lab: Lab):
    lab.start(maxretry=1, jail=WIDER)
    for i in (0xa, 0xb, 0xc):
        fail(lab, f"2001:db8:2::{i:x}", 1)
    wait_until(lambda: banned(lab, "net6") == {"2001:db8:2::/64"}, 10, "the /64")
    assert banned(lab, "ban6") == set()
    assert not connects(lab.client, CLIENT6, PROXY6_ATK, PORT)


def test_by_default_an_ipv6_attacker_is_banned_by_its_64_and_unbanned_by_its_address(lab: Lab):
    lab.start(maxretry=3)
    for i in (0xa, 0xb, 0xc):  # three addresses of one /64: one attacker
        fail(lab, f"2001:db8:2::{i:x}", 1)
    wait_until(lambda: banned(lab, "net6") == {"2001:db8:2::/64"}, 10, "the /64")
    explained = ask(lab, "explain", "2001:db8:2::a")
    assert len(explained["messages"]) == 3  # every line that counted for its /64
    answer = ask(lab, "unban", "2001:db8:2::b")
    assert answer["lifted"] == ["2001:db8:2::/64"]
    wait_until(lambda: banned(lab, "net6") == set(), 1, "the unban within 1 s")


def test_two_banned_64s_become_their_48_in_one_interval_set(lab: Lab):
    lab.start(maxretry=1, jail='"prefix.count" = 2')
    fail(lab, "2001:db8:2:1::1", 1)
    wait_until(lambda: banned(lab, "net6") == {"2001:db8:2:1::/64"}, 10, "the first /64")
    fail(lab, "2001:db8:2:2::1", 1)  # its /64 is replaced by the /48 in the same commit
    wait_until(lambda: banned(lab, "net6") == {"2001:db8:2::/48"}, 10, "the /48")
    assert not connects(lab.client, CLIENT6, PROXY6_ATK, PORT)
    assert not lab.daemon.lines("ban_failed")
