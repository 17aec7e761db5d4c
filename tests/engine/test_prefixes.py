"""Prefix bans in the engine: IPv6 clients counted by their prefix, prefixes that hold a
protected address counted by address, and several bans inside a wider prefix making it one."""

from ipaddress import ip_address, ip_network

import pytest

from bansink.engine.jail import Jail, JailSettings
from bansink.engine.prefixes import PrefixSettings, PrefixWatch, inside, split_prefixes, wider_of


def jail(**kw) -> Jail:
    return Jail(JailSettings(name="mail", **{"maxretry": 3, "findtime": 60, **kw}))


def fail(j: Jail, ip: str, now: float):
    return j.observe(j.key_of(ip_address(ip)), now)


def test_addresses_of_one_ipv6_64_count_together_and_ban_the_prefix():
    j = jail()
    assert fail(j, "2001:db8:1:2::1", 0) is None
    assert fail(j, "2001:db8:1:2:aaaa::9", 1) is None
    ban = fail(j, "2001:db8:1:2:ffff:ffff:ffff:ffff", 2)
    assert ban is not None and str(ban.target) == "2001:db8:1:2::/64"
    assert fail(j, "2001:db8:1:2::77", 3) is None and j.held == 1  # the prefix is banned
    assert j.failures_of(ip_address("2001:db8:1:3::1"), 3) == 0  # the next /64 is another


def test_ipv4_is_counted_by_address_and_ipv6_prefix_128_by_address():
    j = jail(ipv6_prefix=128)
    for t, ip in enumerate(["2001:db8::1", "2001:db8::2", "2001:db8::3"]):
        assert fail(j, ip, t) is None
    assert j.key_of(ip_address("203.0.113.7")) == ip_address("203.0.113.7")
    assert str(jail(ipv6_prefix=56).key_of(ip_address("2001:db8:0:ff::1"))) == "2001:db8::/56"


def test_a_prefix_holding_a_protected_address_is_counted_by_address():
    j = jail()
    j.protect([ip_network("2001:db8:1:2::10/128"), ip_network("2001:db8:ffff::/48")])
    for t in range(3):
        assert fail(j, f"2001:db8:1:2::{t + 1}", t) is None  # three addresses, one failure each
    assert j.key_of(ip_address("2001:db8:1:2::1")) == ip_address("2001:db8:1:2::1")
    assert str(j.key_of(ip_address("2001:db8:1:3::1"))) == "2001:db8:1:3::/64"


def test_split_prefixes_only_lists_protections_narrower_than_the_prefix():
    split = split_prefixes([ip_network("2001:db8::5/128"), ip_network("2001:db8:1::/48"),
                            ip_network("192.0.2.0/24")], 64)
    assert split == {int(ip_address("2001:db8::")) >> 64}


def test_a_wider_ban_holds_the_bans_inside_it_until_it_ends():
    j = jail()
    j.remember(ip_network("203.0.113.0/24"), until=100)
    for t in range(3):
        assert fail(j, "203.0.113.9", t) is None
    assert j.held == 1
    j.expire(100)
    for t in range(101, 104):
        result = fail(j, "203.0.113.10", t)
    assert result is not None and str(result.target) == "203.0.113.10"
    j.remember(ip_network("203.0.113.0/24"), until=1000)
    j.forget(ip_network("203.0.113.0/24"))  # an unban of the network
    assert [fail(j, "203.0.113.11", t) for t in range(200, 203)][-1] is not None


@pytest.mark.parametrize(("target", "want"), [
    ("203.0.113.7", "203.0.113.0/24"), ("2001:db8:1:2::/64", "2001:db8:1::/48"),
    ("2001:db8:1:2::9", "2001:db8:1::/48"), ("203.0.0.0/16", None), ("2001:db8::/48", None),
])
def test_wider_of(target, want):
    found = wider_of(ip_network(target) if "/" in target else ip_address(target), 24, 48)
    assert (str(found) if found else None) == want


def test_inside():
    net = ip_network("2001:db8:1::/48")
    assert inside(ip_network("2001:db8:1:2::/64"), net)
    assert inside(ip_address("2001:db8:1::5"), net)
    assert not inside(ip_network("2001:db8::/32"), net)
    assert not inside(ip_address("203.0.113.1"), net)


def test_count_bans_within_the_window_widen_to_one_prefix():
    watch = PrefixWatch(PrefixSettings(count=3, window=100))
    a, b, c, d = (ip_address(f"198.51.100.{i}") for i in (1, 2, 3, 4))
    assert watch.banned(a, 0) is None
    assert watch.banned(b, 50) is None
    assert watch.banned(a, 60) is None  # the same address again is not another one
    assert watch.banned(c, 155) is None  # b (50) has left the window, a (60) has not
    assert watch.banned(ip_address("198.51.101.1"), 156) is None  # another /24
    found = watch.banned(d, 157)
    assert found is not None
    assert (str(found[0]), sorted(map(str, found[1]))) == (
        "198.51.100.0/24", ["198.51.100.1", "198.51.100.3", "198.51.100.4"])
    assert watch.banned(b, 158) is None  # counted afresh
    watch.expire(1000)
    assert len(watch) == 0


@pytest.mark.parametrize(("kw", "message"), [
    ({"count": 1, "window": 10}, "prefix.count"), ({"count": 2, "window": 0}, "prefix.window"),
    ({"count": 2, "window": 9, "ipv4": 32}, "prefix.ipv4"),
])
def test_prefix_settings_are_checked(kw, message):
    with pytest.raises(ValueError, match=message):
        PrefixSettings(**kw)


def test_a_prefix_key_is_as_slim_as_an_address_and_reads_as_its_network():
    key = jail().key_of(ip_address("2001:db8:1:2:aa::9"))
    assert str(key) == "2001:db8:1:2::/64" and f"{key}" == "2001:db8:1:2::/64"
    assert key == ip_address("2001:db8:1:2::") and not hasattr(key, "__dict__")
    assert key.network() == ip_network("2001:db8:1:2::/64")
