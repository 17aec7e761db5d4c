from ipaddress import ip_address

import pytest

from bansink.engine.addresses import NetworkSet
from bansink.engine.events import MalformedEvent, NotMatched
from bansink.engine.jail import JailSettings
from bansink.engine.pipeline import Banned, Counted, Ignored, Protections, SecurityPipeline
from bansink.receiver.syslog import parse_syslog


def pipeline(maxretry: int = 2) -> SecurityPipeline:
    return SecurityPipeline(
        JailSettings(name="roundcube", maxretry=maxretry, findtime=600, bantime=3600),
        Protections(
            trusted_proxies=NetworkSet(["10.0.0.0/8"]),
            ignoreip=NetworkSet(["127.0.0.0/8", "198.51.100.0/24"]),
            senders=NetworkSet(["192.0.2.0/24"]),
        ),
    )


def line(client: str, user: str = "bob", extra: str = "") -> bytes:
    return (f'<38>Aug 22 10:00:00 webmail roundcube: Login failed: client_ip="{client}", '
            f'host="imap", user="{user}", code=0{extra}').encode()


def handle(p: SecurityPipeline, raw: bytes, now: float = 0.0):
    return p.handle(parse_syslog(raw, peer="192.0.2.2", received_at=0.0), now)


def test_attacker_is_counted_then_banned():
    p = pipeline()
    first = handle(p, line("203.0.113.7"))
    assert isinstance(first, Counted) and first.ip == ip_address("203.0.113.7")
    second = handle(p, line("203.0.113.7"), 1.0)
    assert isinstance(second, Banned) and second.decision.ip == ip_address("203.0.113.7")
    assert p.counts == {"Counted": 1, "Banned": 1}


def test_ipv4_mapped_ipv6_counts_as_ipv4():
    p = pipeline()
    handle(p, line("::ffff:203.0.113.7"))
    banned = handle(p, line("203.0.113.7"))
    assert isinstance(banned, Banned) and banned.decision.ip == ip_address("203.0.113.7")


@pytest.mark.parametrize(
    "client, reason",
    [
        ("10.1.2.3", "trusted_proxy"),
        ("127.0.0.1", "ignoreip"),
        ("198.51.100.20", "ignoreip"),
        ("192.0.2.9", "sender"),
        ("UNKNOWN", "unresolvable"),
    ],
)
def test_protected_or_unresolvable_addresses_are_never_banned(client, reason):
    p = pipeline(maxretry=1)
    outcome = handle(p, line(client))
    assert isinstance(outcome, Ignored) and outcome.reason == reason
    assert p.jail.tracked == 0


def test_a_client_ip_that_is_a_trusted_proxy_is_not_banned_whatever_forwarded_for_says():
    # the plugin resolves the client behind its own proxies; bansink reads client_ip only
    p = pipeline(maxretry=1)
    raw = (b'<38>Aug 22 10:00:00 webmail roundcube: Login failed: client_ip="10.0.0.2", '
           b'forwarded_for="198.51.100.99, 203.0.113.50, 10.0.0.1", user="u", code=0')
    outcome = handle(p, raw)
    assert isinstance(outcome, Ignored) and outcome.reason == "trusted_proxy"


def test_hostile_user_name_never_moves_the_ban():
    p = pipeline(maxretry=1)
    forged = line("203.0.113.7", user='x", client_ip="203.0.113.66')
    assert isinstance(handle(p, forged), MalformedEvent)
    escaped = line("203.0.113.7", user="x', client_ip='203.0.113.66")
    outcome = handle(p, escaped)
    assert isinstance(outcome, Banned) and outcome.decision.ip == ip_address("203.0.113.7")


def test_unrelated_messages_are_not_matched():
    assert isinstance(handle(pipeline(), b"<13>Aug 22 10:00:00 host cron: hello"), NotMatched)
