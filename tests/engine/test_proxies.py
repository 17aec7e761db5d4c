from ipaddress import ip_address

import pytest

from bansink.engine.addresses import NetworkSet
from bansink.engine.proxies import resolve_client

TRUSTED = NetworkSet(["10.0.0.0/8", "2001:db8:ffff::/48"])


@pytest.mark.parametrize(
    "chain, expected",
    [
        (("203.0.113.7",), "203.0.113.7"),
        (("203.0.113.7", "10.0.0.1"), "203.0.113.7"),
        (("203.0.113.7", "10.0.0.2", "10.0.0.1"), "203.0.113.7"),
        # a client-supplied (spoofed) left-most entry is not believed: the first untrusted
        # hop from the right is the client
        (("198.51.100.9", "203.0.113.7", "10.0.0.1"), "203.0.113.7"),
        (("198.51.100.9", "not-an-ip", "203.0.113.7", "10.0.0.1"), "203.0.113.7"),
        (("2001:db8::7", "2001:db8:ffff::1"), "2001:db8::7"),
        (("::ffff:203.0.113.7",), "203.0.113.7"),
        ((" 203.0.113.7 ",), "203.0.113.7"),
    ],
)
def test_first_untrusted_hop_from_the_right(chain, expected):
    assert resolve_client(chain, TRUSTED) == ip_address(expected)


@pytest.mark.parametrize(
    "chain",
    [
        (),
        ("UNKNOWN",),
        ("203.0.113.7", "10.0.0.2", "garbage"),  # an unreadable hop where we must read
        ("203.0.113.7:4443",),
        ("fe80::1%eth0",),
    ],
)
def test_unresolvable_chains_give_none(chain):
    assert resolve_client(chain, TRUSTED) is None


def test_network_set_membership_and_mapped_v4():
    nets = NetworkSet(["192.0.2.0/24", "::1/128"])
    assert ip_address("192.0.2.200") in nets
    assert ip_address("192.0.3.1") not in nets
    assert ip_address("::1") in nets
    assert ip_address("::2") not in nets
    assert not NetworkSet([])


@pytest.mark.parametrize("chain, expected", [(("10.0.0.1",), "10.0.0.1"),
                                             (("10.0.0.5", "10.0.0.1"), "10.0.0.5")])
def test_all_trusted_chain_gives_the_left_most_proxy_for_the_caller_to_refuse(chain, expected):
    ip = resolve_client(chain, TRUSTED)
    assert ip == ip_address(expected) and ip in TRUSTED
