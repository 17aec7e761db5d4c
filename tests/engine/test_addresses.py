"""engine.addresses: the fast text of an address is exactly ipaddress' text."""

import random
from ipaddress import IPv4Address, IPv6Address, ip_address

from bansink.engine.addresses import address_text, parse_address, v4_address, v6_address
from bansink.engine.prefixes import prefix_of


def _zero_patterns(rng: random.Random) -> list[IPv6Address]:
    """Every pattern of zero and non-zero groups (runs of zeros of each length, at each place,
    ties between equal runs), with random and small non-zero values."""
    found = []
    values = (1, 0xF, 0x10, 0xFFFF)
    for mask in range(256):
        groups = [0 if mask >> i & 1 else rng.choice((*values, rng.randrange(1, 1 << 16)))
                  for i in range(8)]
        found.append(IPv6Address(sum(g << (16 * (7 - i)) for i, g in enumerate(groups))))
    return found


def test_address_text_is_ipaddress_text():
    rng = random.Random(5952)
    addresses: list[IPv4Address | IPv6Address] = _zero_patterns(rng)
    addresses += [IPv6Address(rng.getrandbits(128)) for _ in range(20_000)]
    addresses += [IPv6Address(rng.getrandbits(128) >> rng.randrange(128)) for _ in range(5_000)]
    addresses += [IPv4Address(rng.getrandbits(32)) for _ in range(5_000)]
    addresses += [ip_address(text) for text in (
        "::", "::1", "::ffff:192.0.2.1", "::192.0.2.1", "::ffff:0:192.0.2.1", "64:ff9b::192.0.2.1",
        "2001:db8::", "2001:db8:0:0:1::1", "2001:0:0:1::1", "fe80::1%eth0", "0.0.0.0",
        "255.255.255.255", "::ffff:0:0", "1::", "0:0:0:0:0:1:0:0")]
    for address in addresses:
        assert address_text(address) == str(address), repr(address)


def test_a_prefix_is_written_with_its_length():
    rng = random.Random(64)
    for _ in range(2_000):
        address = IPv6Address(rng.getrandbits(128))
        for length in (48, 56, 64, 96, 112):
            prefix = prefix_of(address, length)
            assert str(prefix) == f"{IPv6Address(int(prefix))}/{length}"
            assert str(prefix) == str(prefix.network())


def test_parsed_addresses_keep_their_text():
    for text in ("2001:db8::7", "192.0.2.1", "::ffff:198.51.100.2", "2001:DB8:0:0::1"):
        parsed = parse_address(text)
        assert parsed is not None and address_text(parsed) == str(parsed)


def test_addresses_built_without_checks_are_ipaddress_addresses():
    rng = random.Random(4291)
    for _ in range(5_000):
        v4, v6 = rng.getrandbits(32), rng.getrandbits(128) >> rng.randrange(128)
        for fast, slow in ((v4_address(v4), IPv4Address(v4)), (v6_address(v6), IPv6Address(v6))):
            assert fast == slow and hash(fast) == hash(slow) and str(fast) == str(slow)
            assert type(fast) is type(slow) and int(fast) == int(slow)
            assert fast.scope_id is None if isinstance(fast, IPv6Address) else True
            assert {fast: 1}[slow] == 1 and not fast < slow and not slow < fast
    assert prefix_of(IPv6Address("2001:db8::1"), 64) == IPv6Address("2001:db8::")
    assert hash(prefix_of(IPv6Address("2001:db8::1"), 64)) == hash(IPv6Address("2001:db8::"))
