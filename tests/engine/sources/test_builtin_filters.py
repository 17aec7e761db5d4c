"""The built-in filter sources against their sample logs (fail2ban's sample format, hostile
lines included), read both as fail2ban reads a file and as the daemon reads a syslog message."""

from __future__ import annotations

import ipaddress
import random
import re
from pathlib import Path

import pytest

from bansink.engine.events import SecurityEvent
from bansink.engine.sources import BUILTIN_FILTERS, builtin_filter_sources
from bansink.receiver.syslog import SyslogMessage, parse_syslog

from filter_samples import check_samples, clock

SAMPLES = Path(__file__).with_name("samples")
NAMES = sorted(builtin_filter_sources())


def test_every_mail_application_of_the_seeds_has_a_built_in_source():
    assert set(NAMES) >= {"roundcube", "dovecot", "postfix-sasl", "sogo", "kerio", "kopano",
                          "james"}


@pytest.mark.parametrize("name", NAMES)
def test_a_built_in_filter_loads_without_warnings_and_names_its_tags(name):
    source = builtin_filter_sources()[name]
    assert source.filter.notes == ()
    if name != "kerio":  # Kerio's tag is the log's name, set per site (a jail's `tags`)
        assert source.tags, f"{name}: a built-in source names the syslog tags it reads"


@pytest.mark.parametrize("name", NAMES)
def test_a_built_in_filter_agrees_with_its_samples(name):
    with clock() as now:
        report = check_samples(name, BUILTIN_FILTERS, SAMPLES, now, suffix=".log")
    assert report.refused is None
    assert sum(bool(v.line.expected.get("match")) for v in report.verdicts) >= 3
    assert sum(not v.line.expected.get("match") for v in report.verdicts) >= 3
    wrong = [f"{v.line.lineno}: {v.why}: {v.line.text}" for v in report.disagreements]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("name", [n for n in NAMES
                                  if builtin_filter_sources()[n].line == "syslog"])
def test_the_daemon_reads_a_syslog_sample_as_its_file_line(name):
    """A file line `Mmm dd hh:mm:ss host tag[pid]: msg` is what rsyslog writes from the RFC 3164
    message `<PRI>Mmm dd hh:mm:ss host tag[pid]: msg`: the source must agree on both."""
    source = builtin_filter_sources()[name]
    with clock() as now:
        report = check_samples(name, BUILTIN_FILTERS, SAMPLES, now, suffix=".log")
    for verdict in report.verdicts:
        message = parse_syslog(b"<38>" + verdict.line.text.encode(), peer="192.0.2.200",
                               received_at=now)
        if not isinstance(message, SyslogMessage) or message.app_name is None:
            continue  # not a line a syslog daemon writes (a sample of another format)
        event = source(message)
        expected = verdict.line.expected
        if expected.get("match"):
            assert isinstance(event, SecurityEvent), verdict.line.text
            assert ipaddress.ip_address(event.client_chain[-1]) == ipaddress.ip_address(
                str(expected["host"]))
        else:
            assert not isinstance(event, SecurityEvent), verdict.line.text


def test_roundcube_s_text_without_from_reads_as_the_tempered_form_it_replaces():
    """roundcube.conf spells "text without ' from '" as runs of non-spaces and spaces not
    followed by "from " (twice as fast as a lookahead at every character): on lines made of
    the grammar's pieces, each failregex captures what `(?:(?! from ).)*` would."""
    flt = builtin_filter_sources()["roundcube"].filter
    unrolled = {r"[^ \n]*?(?: (?!from )[^ \n]*?)*?": r"(?:(?! from ).)*?",
                r"[^ \n]*(?: (?!from )[^ \n]*)*": r"(?:(?! from ).)*"}
    tempered = []
    for regex in flt.failregex:
        pattern = regex.pattern
        for new, old in unrolled.items():
            pattern = pattern.replace(new, old)
        assert "(?! from )." in pattern
        tempered.append(re.compile(pattern))
    rng = random.Random(7)
    pieces = [" ", "from", " from ", "a", "\t", "(", ")", "192.0.2.7", " against imap", "\r",
              "f", "rom", " fro", "m ", "\n", "é", ".", ": "]

    def free() -> str:  # text in a place the client types
        return "".join(rng.choice(pieces) for _ in range(rng.randrange(6)))

    matched = 0
    for _ in range(5000):
        header = rng.choice(["", f" (X-Real-IP: {free()})", f"(X-Forwarded-For: {free()})"])
        if rng.random() < 0.5:
            text = (f"IMAP Error: Login failed for {free()}{rng.choice(['', ' against imap'])}"
                    f" from 192.0.2.{rng.randrange(9)}{header}"
                    f"{rng.choice(['', '. AUTHENTICATE PLAIN: ' + free(), '. LOGIN: '])}")
        else:
            text = (f"Failed login for {free()} from 2001:db8::{rng.randrange(9)}{header}"
                    f" in session ab12{rng.choice(['', ' (error: -1)'])}")
        text += "\n"
        matched += any(regex.search(text) for regex in tempered)
        for fast, slow in zip(flt.failregex, tempered, strict=True):
            got, want = fast.search(text), slow.search(text)
            assert (got and got.groups()) == (want and want.groups()), text
    assert matched > 1000  # the lines exercise the regexes, not only their misses
