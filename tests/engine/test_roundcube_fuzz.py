"""Hostile user and host names, built the way the plugin and rsyslog build lines, through the
whole path (syslog bytes -> parse -> source -> jail): the banned address is the client_ip value
or nothing, and a line the plugin really writes is never lost (no ban evasion).

A seeded mutation loop: `--fuzz-iterations 2000000` for a long run (the CI default is 20,000).
"""

from __future__ import annotations

import random
from ipaddress import ip_address

from bansink.engine.addresses import NetworkSet
from bansink.engine.events import MalformedEvent
from bansink.engine.jail import JailSettings
from bansink.engine.pipeline import Banned, Ignored, JailSpec, Protections, SecurityPipeline
from bansink.receiver.syslog import SyslogMessage, parse_syslog

CLIENT = "203.0.113.7"
PIECES = [
    '"', "'", "#042", "#047", "#012", "#000", "#177", "#134", "\\", "\\\"", ", ", ",", " ", "=",
    "client_ip=", 'client_ip="', "client_ip=198.51.100.9", 'client_ip="198.51.100.9"',
    "forwarded_for=", "198.51.100.9", "2001:db8::9", "::ffff:198.51.100.9", "UNKNOWN",
    "Login failed: ", " 198.51.100.9 Login failed: ", "from 198.51.100.9", "[ip=198.51.100.9]",
    "IP address 198.51.100.9", "user=", "host=", "code=0", "\n", "\t", "\r", "\x00", "\x7f", "é",
    "\u2028", "\ufeff", "x", "bob", "]", "[", "<13>", ">", "%", "#", "0", "9",
]


def hostile(rng: random.Random) -> str:
    return "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 8)))


def rsyslog_escape(text: str) -> str:
    """What rsyslog's EscapeControlCharactersOnReceive does: control characters become #ooo."""
    return "".join(f"#{ord(c):03o}" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in text)


def plugin_fields(rng: random.Random, user: str, host: str, *, replace_quotes: bool,
                  quoted_ip: bool) -> str:
    def text(value: str) -> str:
        return '"' + (value.replace('"', "'") if replace_quotes else value) + '"'

    fields = [("host", text(host)), ("user", text(user)), ("code", str(rng.randint(0, 9)))]
    ip = f'"{CLIENT}"' if quoted_ip else CLIENT
    fields.insert(rng.randint(0, len(fields)), ("client_ip", ip))
    return ", ".join(f"{k}={v}" for k, v in fields)


def syslog_bytes(rng: random.Random, body: str) -> bytes:
    body = rsyslog_escape(body)
    header = rng.choice([
        "<38>Aug 22 10:00:00 webmail roundcube: ",
        "<38>2026-08-22T10:00:00+00:00 webmail roundcube[42]: ",
        "<38>1 2026-08-22T10:00:00+00:00 webmail roundcube - - -  ",
    ])
    return (header + body).encode()


def pipeline() -> SecurityPipeline:
    return SecurityPipeline(
        [JailSpec(JailSettings(name="roundcube", maxretry=1, findtime=600, bantime=3600),
                  ("roundcube-security_log",))],
        Protections(trusted_proxies=NetworkSet([]), ignoreip=NetworkSet([]),
                    senders=NetworkSet(["192.0.2.0/24"])),
    )


def outcome_of(raw: bytes):
    message = parse_syslog(raw, peer="192.0.2.2", received_at=0.0)
    assert isinstance(message, SyslogMessage), raw
    return pipeline().handle(message, 0.0)


def test_lines_the_plugin_writes_ban_exactly_the_client_ip(fuzz_iterations):
    rng = random.Random(7)
    for _ in range(fuzz_iterations):
        user, host = hostile(rng), hostile(rng)
        if rng.random() < 0.5:
            body = "Login failed: " + plugin_fields(rng, user, host, replace_quotes=True,
                                                    quoted_ip=True)
        else:  # the file sink, forwarded by imfile
            host, user = host.replace('"', "'"), user.replace('"', "'")
            body = (f'2026-08-22T10:00:00+00:00 {CLIENT} Login failed: host="{host}", '
                    f'user="{user}", code=0')
        raw = syslog_bytes(rng, body)
        outcome = outcome_of(raw)
        assert isinstance(outcome, Banned), (raw, outcome)
        assert [b.target for b in outcome.bans] == [ip_address(CLIENT)], raw


def test_forged_quotes_ban_the_client_ip_or_nobody(fuzz_iterations):
    # raw double quotes in values (a plugin bug or a forged line), and a bare client_ip
    rng = random.Random(11)
    banned_elsewhere = []
    for _ in range(fuzz_iterations):
        body = "Login failed: " + plugin_fields(
            rng, hostile(rng), hostile(rng), replace_quotes=rng.random() < 0.3,
            quoted_ip=rng.random() < 0.5)
        raw = syslog_bytes(rng, body)
        outcome = outcome_of(raw)
        if isinstance(outcome, Banned) and outcome.bans[0].target != ip_address(CLIENT):
            banned_elsewhere.append(raw)
        else:
            assert isinstance(outcome, Banned | MalformedEvent | Ignored), (raw, outcome)
    assert banned_elsewhere == []
