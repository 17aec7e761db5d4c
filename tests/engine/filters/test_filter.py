"""Reading and matching fail2ban filter files: includes, interpolation, modes, tags, dates,
what is refused, and the warnings an operator gets."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bansink.engine.filters import dates
from bansink.engine.filters.conf import parse_spec
from bansink.engine.filters.dates import find_date, templates
from bansink.engine.filters.filter import (
    Failure,
    Filter,
    FilterError,
    Ignored,
    Missed,
    NoFailure,
    filter_from_file,
    greedy_host,
    load_filter,
)
from bansink.engine.sources import builtin_filter_sources

from filter_samples import local_zone

NOW = 1124013600.0  # 2005-08-14 10:00 UTC


@pytest.fixture(autouse=True)
def utc():
    with local_zone("UTC"):
        yield


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


COMMON = """
[DEFAULT]
_daemon = \\S*
__prefix_line = \\s*\\S+ <_daemon>(?:\\[\\d+\\])?:\\s+
[Definition]
prefix_note = from common
"""

APP = """
[INCLUDES]
before = common.conf
after = app.local
[Definition]
_daemon = app
prefix_note = %(known/prefix_note)s, then app
prefregex = ^%(__prefix_line)s<F-CONTENT>.+</F-CONTENT>$
mdre-normal = ^login failed for <F-USER>\\S+</F-USER> from <HOST>$
mdre-aggressive = %(mdre-normal)s
                  ^probe from <ADDR>$
failregex = <mdre-<mode>>
ignoreregex = ^login failed for \\S+ from 192\\.0\\.2\\.250$
mode = normal
[Init]
journalmatch = _SYSTEMD_UNIT=app.service
"""


def test_includes_interpolation_and_modes_resolve_as_fail2ban_does(tmp_path):
    write(tmp_path, "common.conf", COMMON)
    path = write(tmp_path, "app.conf", APP)
    line = "Aug 14 09:00:00 host app[12]: login failed for alice from 192.0.2.7"
    normal = load_filter("app", [tmp_path])
    assert normal.match(line, NOW) == Failure("192.0.2.7", False, "alice", 1124010000.0, 0)
    assert isinstance(normal.match("Aug 14 09:00:00 host app: probe from 192.0.2.8", NOW),
                      Missed)
    aggressive = load_filter(f"{path}[mode=aggressive]")
    probe = aggressive.match("Aug 14 09:00:00 host app: probe from 192.0.2.8", NOW)
    assert isinstance(probe, Failure) and (probe.host, probe.regex) == ("192.0.2.8", 1)
    assert aggressive.name == "app[mode=aggressive]"
    # another daemon's line does not pass the prefix; the ignoreregex wins over a failregex
    assert isinstance(normal.match(line.replace("app[12]", "other[12]"), NOW), Missed)
    assert isinstance(normal.match(line.replace("192.0.2.7", "192.0.2.250"), NOW), Ignored)
    assert any("journalmatch" in note for note in normal.notes)


def test_a_local_file_overrides_and_known_reaches_the_value_it_replaced(tmp_path):
    write(tmp_path, "common.conf", COMMON)
    write(tmp_path, "app.conf", APP)
    write(tmp_path, "app.local", "[Definition]\nmode = aggressive\n")
    flt = load_filter("app", [tmp_path])
    assert len(flt.failregex) == 2


def test_spec_options_parse_with_quotes_and_commas():
    assert parse_spec('postfix[mode=aggressive, note="a, b"]') == (
        "postfix", {"mode": "aggressive", "note": "a, b"})
    with pytest.raises(ValueError, match="expected NAME"):
        parse_spec("a[b]c")


@pytest.mark.parametrize("body, reason", [
    ("failregex = ^x <HOST>$\nmaxlines = 3", "maxlines = 3"),
    ("failregex = ^x <HOST><SKIPLINES>y$", "<SKIPLINES>"),
    ("failregex = ^no host here$", "has no <HOST>"),
    ("failregex = ^(unclosed <HOST>$", "missing ), unterminated subpattern"),
    ("failregex =", "no failregex"),
])
def test_what_bansink_cannot_do_is_refused_with_the_reason(tmp_path, body, reason):
    path = write(tmp_path, "x.conf", f"[Definition]\n{body}\n")
    with pytest.raises(FilterError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        filter_from_file(path)


def test_a_missing_filter_says_where_it_looked(tmp_path):
    with pytest.raises(FilterError, match=f"not found \\(looked in {tmp_path}\\)"):
        load_filter("nope", [tmp_path])


def test_no_fail_lines_and_host_names_are_not_bans(tmp_path):
    path = write(tmp_path, "x.conf", "[Definition]\ndatepattern = {NONE}\nfailregex = "
                 "^<F-NOFAIL>ok</F-NOFAIL> from <HOST>$\n            ^bad from <HOST>$\n")
    flt = filter_from_file(path)
    assert isinstance(flt.match("ok from 192.0.2.1", NOW), NoFailure)
    named = flt.match("bad from mail.example.org", NOW)
    assert isinstance(named, Failure) and named.is_name and named.host == "mail.example.org"
    assert flt.match("bad from [2001:db8::1]", NOW) == Failure("2001:db8::1", False, None,
                                                               None, 1)


@pytest.mark.parametrize("regex, greedy", [
    (r"^Failed login for .* from <HOST>", True),
    (r"^Failed login for .* from <HOST> in session \S+$", False),
    (r"^Failed login for \S+ from <HOST>", False),
    (r"^Failed .+ from <HOST>.*$", True),
    (r"^Failed .*? from <HOST>", False),
])
def test_greedy_regexes_before_the_host_are_named(regex, greedy):
    assert greedy_host(regex) is greedy


def test_a_greedy_filter_loads_with_a_warning_saying_how_to_fix_it(tmp_path):
    path = write(tmp_path, "x.conf", "[Definition]\nfailregex = ^Failed for .* from <HOST>\n")
    (note,) = filter_from_file(path).notes
    assert "anchor the line's end" in note and "from 198.51.100.9" in note


@pytest.mark.parametrize("pattern, line, expected", [
    ("%d/%b/%Y %H:%M:%S", "[17/Jun/2011 17:00:45] SMTP spam", 1308330045.0),
    ("{^LN-BEG}TAI64N", "@400000004c8d2d9e2d6fd3b4 x", 1284320670.0),
    ("EPOCH", "1124013600.500 x", 1124013600.5),
    ("LEPOCH", "1124013600500 x", 1124013600.5),
    ("^%Y-%m-%dT%H:%M:%S%z", "2005-08-13T15:45:46+02:00 x", 1123940746.0),
    (None, "Aug 13 15:45:46 host x", 1123947946.0),  # no year: the year of NOW
    (None, "Dec 31 23:00:00 host x", 1104534000.0),  # would be in the future: last year
])
def test_a_line_carries_its_own_time(pattern, line, expected):
    found = templates(pattern)
    match, template = find_date(line, found)
    assert template.read(match, NOW) == expected


def test_the_date_is_cut_out_before_the_failregex_sees_the_line(tmp_path):
    path = write(tmp_path, "x.conf", "[Definition]\ndatepattern = ^\\[%d/%b/%Y %H:%M:%S\\]\n"
                 "failregex = ^ SMTP Spam attack detected from <HOST>,\n")
    flt = filter_from_file(path)
    found = flt.match("[17/Jun/2011 17:00:45] SMTP Spam attack detected from 192.0.2.3, x", NOW)
    assert isinstance(found, Failure) and found.host == "192.0.2.3"


def _by_names(flt: Filter) -> Filter:
    """The same filter made to read every failregex by group names (the general path)."""
    slow = dataclasses.replace(flt)
    object.__setattr__(slow, "_failing", tuple((index, search, None)
                                               for index, search, _ in flt._failing))
    return slow


def _sample_lines() -> list[str]:
    samples = Path(__file__).parents[1] / "sources" / "samples"
    return [line for path in sorted(samples.glob("*.log"))
            for line in path.read_text().splitlines() if line and not line.startswith("#")]


@pytest.mark.parametrize("name", sorted(builtin_filter_sources()))
def test_reading_a_failure_by_group_positions_gives_what_group_names_give(name):
    """The common failregex shape (ADDR's groups, a user) is read without dictionaries: on
    every sample line of every source, that gives the general reading's result."""
    flt = builtin_filter_sources()[name].filter
    assert all(reading is not None for _, _, reading in flt._failing)
    slow = _by_names(flt)
    for line in _sample_lines():
        assert flt.match(line, NOW) == slow.match(line, NOW), line


def test_a_field_of_the_prefregex_is_read_beneath_the_failregex_s(tmp_path):
    path = write(tmp_path, "x.conf", "[Definition]\ndatepattern = {NONE}\n"
                 "prefregex = ^(?:user <F-USER>\\S+</F-USER> )?<F-CONTENT>.+</F-CONTENT>$\n"
                 "failregex = ^failed(?: as <F-USER>\\S+</F-USER>)? from <ADDR>$\n"
                 "            ^refused <F-ALT_USER1>\\S+</F-ALT_USER1> from <ADDR>$\n")
    flt = filter_from_file(path)
    assert all(reading is None for _, _, reading in flt._failing)  # read by names
    assert flt.match("user bob failed from 192.0.2.1", NOW).user == "bob"
    assert flt.match("user bob failed as eve from 192.0.2.1", NOW).user == "eve"
    assert flt.match("failed from 192.0.2.1", NOW).user is None
    assert flt.match("refused carol from 192.0.2.1", NOW).user == "carol"
    assert flt.match("user bob refused carol from 192.0.2.1", NOW).user == "bob"


def test_an_empty_address_group_is_no_failure(tmp_path):
    path = write(tmp_path, "x.conf", "[Definition]\ndatepattern = {NONE}\n"
                 "failregex = ^failed for <F-USER>\\S*</F-USER> from (?:<ADDR>|-)$\n")
    flt = filter_from_file(path)
    assert flt._failing[0][2] is not None
    assert isinstance(flt.match("failed for bob from -", NOW), NoFailure)
    assert flt.match("failed for  from 192.0.2.1", NOW) == Failure("192.0.2.1", False, None,
                                                                  None, 0)


@pytest.mark.parametrize("line", [
    "Aug 14 09:00:00 host app[12]: login failed for alice from 192.0.2.7",
    "Aug 14 09:00:00 host app: probe from 192.0.2.8",
    "login failed for alice from 192.0.2.7",
])
def test_a_line_matched_untimed_gives_the_timed_result_without_its_time(tmp_path, line):
    write(tmp_path, "common.conf", COMMON)
    write(tmp_path, "app.conf", APP)
    flt = load_filter("app", [tmp_path])
    timed = flt.match(line, NOW)
    untimed = flt.match_untimed(line)
    assert untimed == (timed._replace(time=None) if isinstance(timed, Failure) else timed)


def test_a_remembered_time_follows_the_local_zone():
    match, template = find_date("Aug 13 15:45:46 host x", templates(None))
    in_utc = template.read(match, NOW)
    with local_zone("CET-01CEST-02,M3.5.0,M10.5.0"):
        assert template.read(match, NOW) == in_utc - 7200
    assert template.read(match, NOW) == in_utc


def test_the_remembered_times_are_bounded():
    found = templates("%Y-%m-%d %H:%M:%S")
    for second in range(dates._TIMES_KEPT + 10):
        line = f"2005-08-13 {second // 3600 % 24:02d}:{second // 60 % 60:02d}:{second % 60:02d} x"
        match, template = find_date(line, found)
        assert template.read(match, NOW + second) is not None
    assert len(dates._TIMES) <= dates._TIMES_KEPT


@pytest.mark.parametrize("pattern, spanned", [
    ("%d/%b/%Y %H:%M:%S", True),
    ("{^LN-BEG}%Y-%m-%d %H:%M:%S.%f %z", True),
    ("^%Y-%m-%d %H:%M:%S$", True),
    (None, True),
    ("(?<=\\[)%H:%M:%S", False),
    ("%H:%M:%S\\b", False),
    ("[^x]%H:%M:%S", False),
    ("EPOCH", False),
])
def test_a_time_is_remembered_by_its_text_only_where_nothing_in_the_date_reads_around_it(
        pattern, spanned):
    assert all(one.spanned is spanned for one in templates(pattern) if one.kind == "pattern")


def test_the_same_date_text_read_two_ways_is_remembered_by_its_groups():
    # a lookahead inside the date: "05" is the hour before an "h", the minute otherwise
    (template,) = templates("{UNB}(?:%H(?=h)|%M)")
    assert not template.spanned
    hour, _ = find_date("05h", (template,))
    minute, _ = find_date("05x", (template,))
    assert hour.group() == minute.group() == "05"
    assert template.read(hour, NOW) - template.read(minute, NOW) == 5 * 3600 - 5 * 60
