from ipaddress import ip_address

import pytest

from bansink.engine.addresses import NetworkSet
from bansink.engine.decisions import Origin
from bansink.engine.events import (
    NOT_MATCHED,
    EventKind,
    MalformedEvent,
    NotMatched,
    SecurityEvent,
)
from bansink.engine.jail import JailSettings
from bansink.engine.pipeline import (
    Banned,
    Counted,
    Ignored,
    JailSpec,
    Protections,
    SecurityPipeline,
)
from bansink.engine.proxies import resolve_client
from bansink.engine.sources import registry
from bansink.engine.sources.roundcube import roundcube_event
from bansink.receiver.syslog import SyslogMessage, parse_syslog

PROTECTIONS = Protections(
    trusted_proxies=NetworkSet(["10.0.0.0/8"]),
    ignoreip=NetworkSet(["127.0.0.0/8", "198.51.100.0/24"]),
    senders=NetworkSet(["192.0.2.0/24"]),
)


def settings(name: str = "roundcube", maxretry: int = 2, findtime: float = 600) -> JailSettings:
    return JailSettings(name=name, maxretry=maxretry, findtime=findtime, bantime=3600)


def pipeline(maxretry: int = 2) -> SecurityPipeline:
    return SecurityPipeline([JailSpec(settings(maxretry=maxretry), ("roundcube-security_log",))],
                            PROTECTIONS)


def line(client: str, user: str = "bob", extra: str = "") -> bytes:
    return (f'<38>Aug 22 10:00:00 webmail roundcube: Login failed: client_ip="{client}", '
            f'host="imap", user="{user}", code=0{extra}').encode()


def handle(p: SecurityPipeline, raw: bytes, now: float = 0.0):
    return p.handle(parse_syslog(raw, peer="192.0.2.2", received_at=0.0), now)


def test_attacker_is_counted_then_banned():
    p = pipeline()
    first = handle(p, line("203.0.113.7"))
    assert isinstance(first, Counted) and first.key == ip_address("203.0.113.7")
    second = handle(p, line("203.0.113.7"), 1.0)
    assert isinstance(second, Banned)
    [ban] = second.bans
    assert (ban.target, ban.origin, ban.jail, ban.failures) == (
        ip_address("203.0.113.7"), Origin.JAIL, "roundcube", 2)
    assert p.counts == {"Counted": 1, "Banned": 1}


def test_ipv4_mapped_ipv6_counts_as_ipv4():
    p = pipeline()
    handle(p, line("::ffff:203.0.113.7"))
    banned = handle(p, line("203.0.113.7"))
    assert isinstance(banned, Banned) and banned.bans[0].target == ip_address("203.0.113.7")


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
    assert p.tracked == 0


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
    assert isinstance(outcome, Banned) and outcome.bans[0].target == ip_address("203.0.113.7")


def test_unrelated_messages_are_not_matched():
    assert isinstance(handle(pipeline(), b"<13>Aug 22 10:00:00 host cron: hello"), NotMatched)


def test_the_registry_names_the_roundcube_plugin_source():
    assert registry["roundcube-security_log"] is roundcube_event


# A second application, for the wiring tests: "Auth failed for <ip>".
def other_app(message: SyslogMessage) -> SecurityEvent | NotMatched | MalformedEvent:
    if not message.msg.startswith("Auth failed for "):
        return NOT_MATCHED
    return SecurityEvent(EventKind.LOGIN_FAILED, "other", (message.msg.split()[-1],), None, None,
                         None, message.peer, message.msg)


SOURCES = {**registry, "other": other_app}
OTHER = b"<38>Aug 22 10:00:00 mail other: Auth failed for 203.0.113.7"


def test_each_jail_counts_only_what_the_sources_it_names_report():
    p = SecurityPipeline([JailSpec(settings("webmail"), ("roundcube-security_log",)),
                          JailSpec(settings("mail"), ("other",))], PROTECTIONS, sources=SOURCES)
    assert isinstance(handle(p, line("203.0.113.7")), Counted)
    assert isinstance(handle(p, OTHER), Counted)  # the other jail: one failure each
    assert p.tracked == 2
    banned = handle(p, OTHER)
    assert isinstance(banned, Banned) and [b.jail for b in banned.bans] == ["mail"]


def test_a_source_feeding_two_jails_counts_in_both_and_each_may_ban():
    p = SecurityPipeline([JailSpec(settings("short", maxretry=2), ("roundcube-security_log",)),
                          JailSpec(settings("long", maxretry=3, findtime=3600),
                                   ("roundcube-security_log", "other"))],
                         PROTECTIONS, sources=SOURCES)
    assert isinstance(handle(p, line("203.0.113.7")), Counted)
    first = handle(p, line("203.0.113.7"), 1.0)
    assert isinstance(first, Banned) and [b.jail for b in first.bans] == ["short"]
    both = handle(p, OTHER, 2.0)  # the third failure in "long", from the other source
    assert isinstance(both, Banned) and [(b.jail, b.failures) for b in both.bans] == [("long", 3)]
    p2 = SecurityPipeline([JailSpec(settings("a"), ("roundcube-security_log",)),
                           JailSpec(settings("b"), ("roundcube-security_log",))], PROTECTIONS)
    handle(p2, line("203.0.113.7"))
    twice = handle(p2, line("203.0.113.7"))
    assert isinstance(twice, Banned) and [b.jail for b in twice.bans] == ["a", "b"]


def test_a_source_no_jail_names_is_never_consulted():
    p = SecurityPipeline([JailSpec(settings("mail"), ("other",))], PROTECTIONS, sources=SOURCES)
    assert isinstance(handle(p, line("203.0.113.7")), NotMatched)
    assert p.tracked == 0


def test_expiry_and_deadlines_cover_every_jail():
    p = SecurityPipeline([JailSpec(settings("a", maxretry=5, findtime=60), ("other",)),
                          JailSpec(settings("b", maxretry=5, findtime=30),
                                   ("roundcube-security_log",))], PROTECTIONS, sources=SOURCES)
    handle(p, OTHER, 0.0)
    handle(p, line("203.0.113.8"), 10.0)
    assert p.next_deadline() == 40.0  # jail b's, before jail a's at 60
    assert p.expire(40.0) == 1 and p.next_deadline() == 60.0
    assert p.expire(60.0) == 1 and p.next_deadline() is None and p.tracked == 0


@pytest.mark.parametrize("jails, error", [
    ([], "at least one jail"),
    ([JailSpec(settings("a"), ("nope",))], "jail a: unknown source 'nope'"),
    ([JailSpec(settings("a"), ("other",)), JailSpec(settings("a"), ("other",))], "unique"),
])
def test_a_pipeline_that_cannot_work_is_refused(jails, error):
    with pytest.raises(ValueError, match=error):
        SecurityPipeline(jails, PROTECTIONS, sources=SOURCES)


def test_a_jail_without_sources_is_refused():
    with pytest.raises(ValueError, match="at least one source"):
        JailSpec(settings("a"), ())


# Sources chosen by the message's syslog tag: a counting source shows who was asked.
class Tagged:
    def __init__(self, tags: frozenset[str] | None) -> None:
        self.tags = tags
        self.asked = 0

    def __call__(self, message: SyslogMessage) -> SecurityEvent | NotMatched | MalformedEvent:
        self.asked += 1
        return other_app(message)


def test_a_tagged_source_is_asked_only_about_messages_with_its_tags():
    dovecot, anything = Tagged(frozenset({"dovecot", "imap-login"})), Tagged(None)
    p = SecurityPipeline([JailSpec(settings("mail", maxretry=5), ("dovecot", "anything"))],
                         PROTECTIONS, sources={"dovecot": dovecot, "anything": anything})
    handle(p, b"<38>Aug 22 10:00:00 mail cron: hello")
    assert (dovecot.asked, anything.asked) == (0, 1)
    handle(p, b"<38>Aug 22 10:00:00 mail imap-login: Auth failed for 203.0.113.7")
    assert (dovecot.asked, anything.asked) == (1, 1)  # the tagged source decided first


def test_a_jail_s_tags_replace_those_of_its_sources():
    dovecot = Tagged(frozenset({"dovecot"}))
    p = SecurityPipeline([JailSpec(settings("mail"), ("dovecot",), frozenset({"mailhost"}))],
                         PROTECTIONS, sources={"dovecot": dovecot})
    assert isinstance(handle(p, b"<38>Aug 22 10:00:00 h dovecot: Auth failed for 203.0.113.7"),
                      NotMatched)
    outcome = handle(p, b"<38>Aug 22 10:00:00 h mailhost: Auth failed for 203.0.113.7")
    assert isinstance(outcome, Counted) and dovecot.asked == 1


def test_a_jail_s_own_ignoreip_keeps_only_that_jail_from_counting():
    spare = NetworkSet(["203.0.113.0/24"])
    alone = SecurityPipeline([JailSpec(settings("mail"), ("other",), None, spare)], PROTECTIONS,
                             sources=SOURCES)
    ignored = handle(alone, OTHER)
    assert isinstance(ignored, Ignored) and ignored.reason == "ignoreip"
    two = SecurityPipeline([JailSpec(settings("mail"), ("other",), None, spare),
                            JailSpec(settings("all", maxretry=1), ("other",))], PROTECTIONS,
                           sources=SOURCES)
    banned = handle(two, OTHER)
    assert isinstance(banned, Banned) and [b.jail for b in banned.bans] == ["all"]
    assert two.jails[0].tracked == 0


@pytest.mark.parametrize("chain, reason", [
    ((" 203.0.113.7 ",), None),
    (("10.1.2.3",), "trusted_proxy"),
    (("::ffff:192.0.2.9",), "sender"),
    (("203.0.113.7:25",), "unresolvable"),
    (("",), "unresolvable"),
    (("203.0.113.8", "10.0.0.1"), None),
    (("10.0.0.2", "10.0.0.1"), "trusted_proxy"),
    (("UNKNOWN", "203.0.113.9"), None),
])
def test_a_client_chain_resolves_as_resolve_client_says_one_hop_or_many(chain, reason):
    """The pipeline reads a one-hop chain (every filter source's) without resolve_client's
    walk: the answer must be the walk's."""
    def source(message: SyslogMessage) -> SecurityEvent:
        return SecurityEvent(EventKind.LOGIN_FAILED, "test", chain, None, None, None,
                             message.peer, message.msg)

    p = SecurityPipeline([JailSpec(settings("mail", maxretry=5), ("chained",))], PROTECTIONS,
                         sources={"chained": source})
    outcome = handle(p, b"<38>Aug 22 10:00:00 h app: anything")
    if reason is None:
        expected = resolve_client(chain, PROTECTIONS.trusted_proxies)
        assert isinstance(outcome, Counted) and outcome.key == expected
    else:
        assert isinstance(outcome, Ignored) and outcome.reason == reason
