"""The hub, alone: what it counts, keeps, acknowledges and hands on, message by message."""

import asyncio

from bansink.config import parse_config
from bansink.hub import Hub, digest_of
from bansink.jails import build_pipeline
from bansink.receiver.intake import Dropped
from bansink.receiver.syslog import parse_syslog
from bansink.resends import ResendGuard

SENDER = "192.0.2.2"


def line(ip: str, user: str = "u") -> bytes:
    return (f'<38>Aug 22 10:00:00 web roundcube: Login failed: client_ip="{ip}", '
            f'user="{user}", code=0').encode()


class Journal:
    def __init__(self) -> None:
        self.puts: list = []

    def put(self, row, done, session=0) -> None:
        self.puts.append((row, done, session))


class Enforcer:
    def __init__(self) -> None:
        self.bans: list = []

    def ban(self, ban) -> None:
        self.bans.append(ban)


def run(scenario):
    """Run `scenario(hub, journal, enforcer, acks)` with a hub on a loop (maxretry 2)."""
    async def main():
        journal, enforcer, acks = Journal(), Enforcer(), []
        pipeline = build_pipeline(parse_config({"jail": {"maxretry": 2},
                                                "receiver": {"senders": ["192.0.2.0/24"]}}))
        hub = Hub(pipeline, enforcer, journal, ResendGuard(128, 600))
        scenario(hub, journal, enforcer, acks)
        return hub, journal, enforcer, acks
    return asyncio.run(main())


def message(raw: bytes):
    return parse_syslog(raw, peer=SENDER, received_at=1.0)


def test_a_counted_relp_message_is_journaled_and_answered_only_by_the_journal():
    def scenario(hub, journal, enforcer, acks):
        hub.relp_session_started(1, SENDER)
        hub.on_reliable_message(message(line("203.0.113.7")), "relp",
                                lambda: acks.append(1), session=1)

    hub, journal, _, acks = run(scenario)
    [(row, done, session)] = journal.puts
    assert row.raw == line("203.0.113.7") and row.digest and session == 1
    assert acks == [] and done is not None  # the writer answers, after the commit
    assert hub.counters() == {"received": {"relp": 1}, "drops": {}}
    assert hub.pipeline.counts == {"Counted": 1}


def test_what_counts_toward_nothing_is_answered_at_once_and_not_kept():
    def scenario(hub, journal, enforcer, acks):
        hub.relp_session_started(1, SENDER)
        for raw in (b"not syslog", b"<13>Aug 22 10:00:00 host cron: hello",
                    line("127.0.0.1"), b'<38>Aug 22 10:00:00 w r: Login failed: user="x"'):
            hub.on_reliable_message(message(raw), "relp", lambda: acks.append(1), session=1)

    hub, journal, _, acks = run(scenario)
    assert acks == [1, 1, 1, 1] and journal.puts == []
    assert hub.counters()["drops"] == {"malformed_syslog": 1}
    assert hub.pipeline.counts == {"NotMatched": 1, "Ignored": 1, "MalformedEvent": 1}


def test_a_udp_message_that_counts_is_journaled_without_an_answer_and_bans_go_on():
    def scenario(hub, journal, enforcer, acks):
        for _ in range(2):
            hub.on_message(message(line("203.0.113.8")), "udp")

    _, journal, enforcer, _ = run(scenario)
    assert [(row.transport, done, row.digest) for row, done, _ in journal.puts] == [
        ("udp", None, b""), ("udp", None, b"")]
    assert [str(b.target) for b in enforcer.bans] == ["203.0.113.8"]


def test_a_resend_is_answered_behind_a_barrier_and_never_judged_again():
    raw = line("203.0.113.9")

    def scenario(hub, journal, enforcer, acks):
        hub.relp_session_started(1, SENDER)
        hub.on_reliable_message(message(raw), "relp", lambda: acks.append("first"), session=1)
        hub.relp_session_ended(1, SENDER, clean=False)
        hub.relp_session_started(2, SENDER)
        hub.on_reliable_message(message(raw), "relp", lambda: acks.append("resend"), session=2)

    hub, journal, enforcer, _ = run(scenario)
    assert [row is None for row, _, _ in journal.puts] == [False, True]  # row, then barrier
    assert hub.pipeline.counts == {"Counted": 1} and enforcer.bans == []
    assert hub.counters()["drops"] == {"relp_resend": 1}


def test_a_row_a_failed_write_lost_makes_its_resend_count():
    raw = line("203.0.113.10")

    def scenario(hub, journal, enforcer, acks):
        hub.relp_session_started(1, SENDER)
        hub.on_reliable_message(message(raw), "relp", lambda: None, session=1)
        hub.unwritten(journal.puts[0][0], 1)
        hub.relp_session_ended(1, SENDER, clean=False)
        hub.relp_session_started(2, SENDER)
        hub.on_reliable_message(message(raw), "relp", lambda: None, session=2)

    _, journal, enforcer, _ = run(scenario)
    assert all(row is not None for row, _, _ in journal.puts) and len(journal.puts) == 2
    assert [str(b.target) for b in enforcer.bans] == ["203.0.113.10"]


def test_drops_are_counted_by_reason():
    def scenario(hub, journal, enforcer, acks):
        hub.on_drop(Dropped("sender_not_allowed", "198.51.100.1", "udp", 10))
        hub.on_drop(Dropped("sender_not_allowed", "198.51.100.2", "udp", 10))
        hub.on_drop(Dropped("oversized", SENDER, "tcp", 99999))

    hub, *_ = run(scenario)
    assert hub.counters()["drops"] == {"sender_not_allowed": 2, "oversized": 1}


def test_the_digest_names_the_sender_and_the_bytes():
    a, b = message(line("203.0.113.7")), message(line("203.0.113.8"))
    assert digest_of(a) == digest_of(message(line("203.0.113.7"))) != digest_of(b)
    other = parse_syslog(line("203.0.113.7"), peer="192.0.2.3", received_at=1.0)
    assert digest_of(other) != digest_of(a)
