"""Config -> jails: [jails.NAME] with built-in sources and fail2ban filters, the old [jail],
and every mistake named by its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from bansink.actions.layout import JailScope
from bansink.config import ConfigError, parse_config
from bansink.jails import build_pipeline, jails_and_sources, layout_of
from bansink.receiver.syslog import SyslogMessage, parse_syslog

FILTER = """[Definition]
failregex = ^ \\S+ app(?:\\[\\d+\\])?: auth failed from <HOST>$
"""


def message(text: bytes) -> SyslogMessage:
    parsed = parse_syslog(text, peer="192.0.2.200", received_at=0.0)
    assert isinstance(parsed, SyslogMessage)
    return parsed


def test_an_old_single_jail_config_still_runs_the_roundcube_jail():
    jails, sources = jails_and_sources(parse_config({"jail": {"maxretry": 3}}))
    assert [(j.settings.name, j.settings.maxretry, j.sources) for j in jails] == [
        ("roundcube", 3, ("roundcube-security_log",))]
    assert "roundcube-security_log" in sources


def test_jails_name_their_filters_and_count_what_they_match(tmp_path: Path):
    (tmp_path / "app.conf").write_text(FILTER)
    config = parse_config({"engine": {"filter_paths": [str(tmp_path)]}, "jails": {
        "app": {"filters": ["app"], "maxretry": 2, "tags": ["app"]},
        "webmail": {"sources": ["roundcube-security_log"], "bantime": "2h"}}})
    pipeline = build_pipeline(config)
    assert [j.settings.name for j in pipeline.jails] == ["app", "webmail"]
    line = b"<38>Aug 22 10:00:00 mail app[7]: auth failed from 203.0.113.9"
    pipeline.handle(message(line), 1.0)
    banned = pipeline.handle(message(line), 2.0)
    assert type(banned).__name__ == "Banned"
    other_tag = line.replace(b"app[7]", b"web[7]")
    assert type(pipeline.handle(message(other_tag), 3.0)).__name__ == "NotMatched"


@pytest.mark.parametrize("data, error", [
    ({"jails": {"a": {"sources": ["nope"]}}}, "jails.a.sources: unknown source 'nope'"),
    ({"jails": {"a": {"filters": ["missing"]}}}, "jails.a.filters: filter 'missing': not found"),
    ({"jails": {"a": {"maxretry": 3}}}, "name at least one of sources or filters"),
    ({"jails": {"A b": {"sources": ["dovecot"]}}}, "jails.A b: a jail name is"),
    ({"jail": {"maxretry": 3}, "jails": {"a": {"sources": ["roundcube-security_log"]}}},
     r"move \[jail\]'s keys into a \[jails.roundcube\]"),
    ({"jails": {"a": {"sources": ["roundcube-security_log"], "enabled": False}}},
     "every jail is disabled"),
    ({"jails": {"a": {"sources": ["roundcube-security_log"], "findtime": "2d"}}},
     r"at least the longest findtime \(2d\)"),
])
def test_a_jail_that_cannot_work_is_refused_naming_the_key(data, error):
    with pytest.raises(ConfigError, match=error):
        jails_and_sources(parse_config(data))


def test_the_seeds_jails_written_directly_get_their_ports_and_rate_limits_spare_the_trusted():
    config = parse_config({
        "receiver": {"senders": ["192.0.2.10/32"]},
        "engine": {"ignoreip": ["127.0.0.0/8"], "trusted_proxies": ["192.0.2.20"]},
        "nftables": {"ports": "http,https"},
        "jails": {
            "kerio": {"sources": ["kerio"], "bantime": 1200, "maxretry": 3,
                      "ports": "imap,smtp,imaps,smtps"},
            "kopano": {"sources": ["kopano"], "ports": "https"},
            "james": {"sources": ["james"], "bantime": "120m", "findtime": "20m",
                      "maxretry": 2, "ignoreip": ["198.51.100.0/24"]},
            "off": {"sources": ["sogo"], "enabled": False}},
        "ratelimit": {"smtp": {"ports": "smtp", "connections": 4, "window": "60s"},
                      "ping": {"protocol": "icmp"}}})
    layout = layout_of(config)
    assert layout.jails == (JailScope("kerio", (25, 143, 465, 993)), JailScope("kopano", (443,)),
                            JailScope("james", (80, 443)))  # unset: nftables.ports
    assert [(r.name, r.protocol, r.ports, r.connections, r.window) for r in layout.ratelimits] \
        == [("smtp", "tcp", (25,), 4, 60.0), ("ping", "icmp", (), 4, 60.0)]
    assert set(layout.exempt) == {"127.0.0.0/8", "192.0.2.10/32", "192.0.2.20/32",
                                  "198.51.100.0/24"}


def test_an_old_single_jail_config_has_the_shared_set_pair():
    layout = layout_of(parse_config({"nftables": {"ports": [443, 80]}}))
    assert layout.jails == () and layout.ports == (80, 443)
    assert layout.scope("roundcube") == JailScope("", (80, 443))
