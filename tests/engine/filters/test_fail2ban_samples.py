"""fail2ban's own truth set: every sample line Debian's fail2ban ships for a stock filter, with
bansink loading that stock filter, agrees with the line's failJSON (match, host, time, user).

fail2ban is not a dependency: deploy/setup.sh --test unpacks Debian's package into .cache/
(never installed, so no service starts and no firewall changes); FAIL2BAN_ROOT points
elsewhere. The agreement over every stock filter is in the README (`python3 tests/filter_samples.py`
prints it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from filter_samples import check_samples, clock, fail2ban_root

ROOT = fail2ban_root()
pytestmark = pytest.mark.skipif(
    ROOT is None, reason="fail2ban's files are missing: run deploy/setup.sh --test")

MAIL_AND_WEBMAIL = (
    "dovecot", "postfix", "exim", "exim-spam", "courier-auth", "courier-smtp", "cyrus-imap",
    "sendmail-auth", "sendmail-reject", "uwimap-auth", "qmail", "solid-pop3d", "perdition",
    "assp", "domino-smtp", "oracleims", "kerio", "sieve", "roundcube-auth", "sogo-auth", "horde",
    "squirrelmail", "openwebmail", "groupoffice", "tine20",
)
PROXIES = ("nginx-http-auth", "apache-auth", "haproxy-http-auth", "traefik-auth")

NOT_AGREEING = {
    ("sendmail-reject", "rA37ZTSC026254: from=<davaojk25@domain.com>"):
        "a `No such user here` line earlier in the same message id makes this <F-NOFAIL> line "
        "a failure (<F-MLFID> merging across lines), which bansink does not do",
}
"""Lines bansink reads differently on purpose, by (filter, text in the line)."""


def _paths() -> tuple[Path, Path]:
    assert ROOT is not None
    return (ROOT / "etc/fail2ban/filter.d",
            ROOT / "usr/lib/python3/dist-packages/fail2ban/tests/files/logs")


@pytest.mark.parametrize("name", MAIL_AND_WEBMAIL + PROXIES)
def test_stock_filter_agrees_with_failjson_on_every_sample_line(name: str) -> None:
    filters, logs = _paths()
    with clock() as now:
        report = check_samples(name, filters, logs, now)
    assert report.refused is None, report.refused
    assert report.verdicts, f"no sample lines read for {name}"
    unexplained = [
        f"{v.line.file}:{v.line.lineno} [{v.line.variant}] {v.why}: {v.line.text}"
        for v in report.disagreements
        if not any(name == f and text in v.line.text for f, text in NOT_AGREEING)]
    assert not unexplained, "\n".join(unexplained)


def test_every_sample_line_of_the_mail_filters_is_read() -> None:
    """Not vacuous: the mail filters' samples hold hundreds of lines, most of them failures."""
    filters, logs = _paths()
    with clock() as now:
        verdicts = [v for name in MAIL_AND_WEBMAIL
                    for v in check_samples(name, filters, logs, now).verdicts]
    assert len(verdicts) > 300
    assert sum(bool(v.line.expected.get("match")) for v in verdicts) > 200


def test_multi_line_filters_are_refused_with_the_reason() -> None:
    filters, logs = _paths()
    report = check_samples("ejabberd-auth", filters, logs)
    assert report.refused is not None and "maxlines = 2" in report.refused
