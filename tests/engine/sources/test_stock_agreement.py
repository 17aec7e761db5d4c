"""Each built-in source against the stock fail2ban filter for the same application, on both
sets of samples: on fail2ban's own sample lines it agrees with fail2ban's verdicts except where a
named reason says why not, and on bansink's samples, wherever the stock filter names another
address than the true one (an address typed by the attacker), the built-in source names the
true one."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from bansink.engine.filters.filter import Failure, Filter, load_filter
from bansink.engine.sources import BUILTIN_FILTERS, builtin_filter_sources

from filter_samples import Line, check_samples, clock, fail2ban_root

ROOT = fail2ban_root()
pytestmark = pytest.mark.skipif(ROOT is None, reason="run deploy/setup.sh --test (fail2ban)")
SAMPLES = Path(__file__).with_name("samples")

STOCK = {  # built-in source -> (stock filter file, the variant that reads the same events)
    "dovecot": ("dovecot", "dovecot"),
    "roundcube": ("roundcube-auth", "roundcube-auth"),
    "sogo": ("sogo-auth", "sogo-auth"),
    "postfix-sasl": ("postfix", "postfix[mode=auth]"),
    "kerio": ("kerio", "kerio"),
}

_SYSLOG_LINE = re.compile(  # `Mmm dd hh:mm:ss host tag[pid]: `
    r"^[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d [\w.:-]*[\w.-] [\w./-]+(?:\[\d+\])?: ")
_AMBIGUOUS = re.compile(r" for .* from .* from ")

WHY_NOT: dict[str, list[tuple[str, Callable[[str], bool]]]] = {
    # (reason, which of fail2ban's sample lines it covers)
    "dovecot": [
        ("not a syslog line (Dovecot's own log_path file, or multilog's TAI64N): the source "
         "reads what syslog forwards", lambda text: not _SYSLOG_LINE.match(text)),
        ("a client refused for plaintext auth without TLS tried no password: not counted, so "
         "that a misconfigured mail client is not banned",
         lambda text: "plaintext auth)" in text),
    ],
    "roundcube": [
        ("Roundcube's own log file, not syslog", lambda text: not _SYSLOG_LINE.match(text)),
        ("a user name containing ' from ': which address is the client's is ambiguous, so the "
         "line counts for nobody (the stock filter takes the last one, which the user name "
         "can also supply)", lambda text: bool(_AMBIGUOUS.search(text))),
    ],
    "sogo": [
        ("`sogod [pid]:` has no host name field: not a syslog line",
         lambda text: not _SYSLOG_LINE.match(text)),
    ],
    "postfix-sasl": [],
    "kerio": [
        ("no reverse DNS: Kerio already refused the connection, and a mail server without a "
         "PTR record is not an attacker", lambda text: "has no reverse DNS entry" in text),
        ("a sender domain that does not exist: spam, not a login attack (fail2ban's stock "
         "filter counts it)", lambda text: "sender domain does not exist" in text),
    ],
}


def stock_filter(name: str) -> Filter:
    assert ROOT is not None
    _, variant = STOCK[name]
    return load_filter(variant, [ROOT / "etc/fail2ban/filter.d"])


def host_of(result: object) -> str | None:
    return result.host if isinstance(result, Failure) else None


def agrees(flt: Filter, line: Line, now: float) -> bool:
    got = host_of(flt.match(line.text, now))
    if not line.expected.get("match"):
        return got is None
    return got is not None and got == str(line.expected.get("host"))


@pytest.mark.parametrize("name", sorted(STOCK))
def test_on_fail2bans_samples_a_built_in_source_agrees_with_fail2ban_or_says_why_not(name):
    assert ROOT is not None
    stock, variant = STOCK[name]
    ours = builtin_filter_sources()[name].filter
    logs = ROOT / "usr/lib/python3/dist-packages/fail2ban/tests/files/logs"
    with clock() as now:
        report = check_samples(stock, ROOT / "etc/fail2ban/filter.d", logs, now)
        lines = [v.line for v in report.verdicts if v.line.variant == variant]
        unexplained, explained = [], 0
        for line in lines:
            if agrees(ours, line, now):
                continue
            if any(covers(line.text) for _, covers in WHY_NOT[name]):
                explained += 1
            else:
                unexplained.append(f"{line.file}:{line.lineno}: {line.text}")
    assert len(lines) >= 10
    assert not unexplained, "\n".join(unexplained)
    agreeing = len(lines) - explained
    print(f"{name}: {agreeing} of {len(lines)} of fail2ban's sample lines agree")
    # every reason given is needed (none is left over from an older filter)
    for reason, covers in WHY_NOT[name]:
        assert any(covers(line.text) and not agrees(ours, line, now) for line in lines), reason


@pytest.mark.parametrize("name", sorted(STOCK))
def test_on_bansinks_samples_where_the_stock_filter_is_fooled_the_built_in_source_is_not(name):
    stock, ours = stock_filter(name), builtin_filter_sources()[name].filter
    with clock() as now:
        report = check_samples(name, BUILTIN_FILTERS, SAMPLES, now, suffix=".log")
        fooled = [v.line for v in report.verdicts if v.line.expected.get("match")
                  and host_of(stock.match(v.line.text, now)) not in (None, str(
                      v.line.expected.get("host")))]
        fooled += [v.line for v in report.verdicts if not v.line.expected.get("match")
                   and host_of(stock.match(v.line.text, now)) is not None]
        assert all(agrees(ours, line, now) for line in fooled)
    if name in ("dovecot", "roundcube"):  # the stock filters take a typed address there
        assert any("198.51.100.9" == host_of(stock.match(line.text, now)) for line in fooled)
