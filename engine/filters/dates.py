"""Where a log line carries its own time: fail2ban's `datepattern`, and its default detection.

A date template is a regex whose group 1 is the date text. fail2ban cuts that text out of the
line before any failregex sees it (so `^` in a failregex means "where the line starts once its
date is gone"), and reads the time from the template's named groups (strftime letters: `%b` is
group `b`, ...). The forms understood:
- strftime-like patterns (`%d/%b/%Y %H:%M:%S`, fail2ban's `%Ex...` strict variants, `%k`, `%z`);
- `{^LN-BEG}PATTERN`: only at the line's start (after at most two non-word characters);
- `{^LN-BEG}` alone: the default templates, line-start variants only; `{DEFAULT}` all of them;
- `PREFIX{DATE}SUFFIX`: every default template inside the given context;
- `EPOCH`, `LEPOCH` (milli/microseconds), `TAI64N`, each optionally line-start only;
- `{NONE}`: the line has no date; `{UNB}` before a pattern: no word boundaries.

Detection is stateless: a line-start template that matches wins, else the template matching
nearest the start of the line (first in order on a tie). fail2ban's detector also prefers the
template that matched the previous lines; on the logs fail2ban ships the two agree (see the
README's filter-compatibility figures).

A time without a year takes `now`'s year (the year before if that puts it more than a day in
the future), one without a date takes `now`'s date; local time unless the line names a zone.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_MONTH_NAMES = ("january", "february", "march", "april", "may", "june", "july", "august",
                "september", "october", "november", "december")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

_ZONE_HOURS: dict[str, float] = {
    "UTC": 0, "GMT": 0, "Z": 0, "UT": 0, "WET": 0, "WEST": 1, "CET": 1, "CEST": 2, "MET": 1,
    "MEST": 2, "EET": 2, "EEST": 3, "MSK": 3, "IST": 5.5, "JST": 9, "KST": 9, "AEST": 10,
    "AEDT": 11, "NZST": 12, "NZDT": 13, "EST": -5, "EDT": -4, "CST": -6, "CDT": -5,
    "MST": -7, "MDT": -6, "PST": -8, "PDT": -7, "AKST": -9, "AKDT": -8, "HST": -10,
}
_ZONE_ABBREVIATION = r"[A-Z](?:[A-Z]{2,4})?"

_DIRECTIVES: dict[str, str] = {
    "a": "(?P<a>" + "|".join(_DAYS) + ")",
    "A": "(?P<A>" + "|".join(_DAY_NAMES) + ")",
    "b": "(?P<b>" + "|".join(_MONTHS) + ")",
    "B": "(?P<B>" + "|".join(_MONTH_NAMES) + ")",
    "d": r"(?P<d>[1-2]\d|[0 ]?[1-9]|3[0-1])",
    "f": r"(?P<f>[0-9]{1,6})",
    "H": r"(?P<H>[0-1]?\d|2[0-3])",
    "I": r"(?P<I>1[0-2]|0[1-9]|[1-9])",
    "j": r"(?P<j>36[0-6]|3[0-5]\d|[12]\d\d|0[1-9]\d|00[1-9]|[1-9]\d|0[1-9]|[1-9])",
    "m": r"(?P<m>0?[1-9]|1[0-2])",
    "M": r"(?P<M>[0-5]?\d)",
    "p": r"(?P<p>am|pm)",
    "S": r"(?P<S>[0-5]?\d|6[0-1])",
    "U": r"(?P<U>5[0-3]|[0-4]\d|\d)",
    "w": r"(?P<w>[0-6])",
    "W": r"(?P<W>5[0-3]|[0-4]\d|\d)",
    "y": r"(?P<y>\d\d)",
    "Y": r"(?P<Y>\d\d\d\d)",
    "z": r"(?P<z>Z|UTC|GMT|[+-][01]\d(?::?\d{2})?)",
    "Z": r"(?P<Z>Z|[A-Z]{3,5})",
    "k": r" ?(?P<H>[0-2]?\d)",
    "l": r" ?(?P<I>1?\d)",
    "ExY": r"(?P<Y>(?:19[7-9]|20\d)\d)",
    "Exy": r"(?P<y>\d{2})",
    "Exd": r"(?P<d>[1-2]\d|0[1-9]|3[0-1])",
    "Exm": r"(?P<m>0[1-9]|1[0-2])",
    "ExH": r"(?P<H>[0-1]\d|2[0-3])",
    "Exk": r" ?(?P<H>[0-1]?\d|2[0-3])",
    "Exl": r" ?(?P<I>1[0-2]|\d)",
    "ExM": r"(?P<M>[0-5]\d)",
    "ExS": r"(?P<S>[0-5]\d|6[0-1])",
    "ExZ": rf"(?P<Z>{_ZONE_ABBREVIATION})",
    "Exz": rf"(?P<z>(?:{_ZONE_ABBREVIATION})?[+-][01]\d(?::?\d{{2}})?|{_ZONE_ABBREVIATION})",
    "%": "%",
}
_DIRECTIVE = re.compile("%(" + "|".join(
    sorted((re.escape(key) for key in _DIRECTIVES), key=len, reverse=True)) + ")")
_ALPHA_DIRECTIVE = re.compile(r"(?<!%)%[aAbBpc]")

_NO_BOUND_BEGIN = re.compile(r"^\(*(?:\(\?\w+\))?(?:\^|\(*\*\*|\((?:\?:)?\^)")
_NO_BOUND_END = re.compile(r"(?<!\\)(?:\$\)?|\\b|\\s|\*\*\)*)$")
_WILD_BOUNDS = re.compile(r"^\(*(?:\(\?\w+\))?\(*\*\*|(?<!\\)\*\*\)*$")
_CAPTURE = re.compile(r"(?<!\(\?)(?<!\\)\((?!\?)")
_WRAP = re.compile(r"^((?:\(\?\w+\))?\^?(?:\(\?\w+\))?)(.*?)(\$?)$", re.DOTALL)
_GLOBAL_FLAGS = re.compile(r"((?:^|(?!<\\))\(\?[a-z]+\))")
_ASSERTION = re.compile(r"\(\?(?:[=!(]|<[=!])|\\[bBAZ]|[\^$]")
"""What may make a date's groups depend on the text around it (or is not known not to: a
negated class and an escaped dollar count too)."""
_LEADING_CARET = re.compile(r"^\^")
_TRAILING_DOLLAR = re.compile(r"(?<!\\)\$$")
_LINE_BEGIN = re.compile(r"^(?:\(\?\w+\))?(?:\^|\((?:\?:)?\^(?!\|))")

_DATE_SLOT = re.compile(r"(?<!\\)\{DATE\}", re.IGNORECASE)
_EPOCH = r"\d{10,11}\b(?:\.\d{3,6})?"
_LONG_EPOCH = r"\d{10,11}(?:\d{3}(?:\.\d{1,6}|\d{3})?)?"

DEFAULT_PATTERNS: tuple[str, ...] = (
    r"%ExY(?P<_sep>[-/.])%m(?P=_sep)%d(?:T|  ?)%H:%M:%S(?:[.,]%f)?(?:\s*%z)?",
    r"(?:%a )?%b %d %k:%M:%S(?:\.%f)?(?: %ExY)?",
    r"(?:%a )?%b %d %ExY %k:%M:%S(?:\.%f)?",
    r"%d(?P<_sep>[-/])%m(?P=_sep)(?:%ExY|%Exy) %k:%M:%S",
    r"%d(?P<_sep>[-/])%b(?P=_sep)%ExY[ :]?%H:%M:%S(?:\.%f)?(?: %z)?",
    r"%m/%d/%ExY:%H:%M:%S",
    r"%m-%d-%ExY %k:%M:%S(?:\.%f)?",
    "EPOCH",
    r"{^LN-BEG}%H:%M:%S",
    r"^<%m/%d/%Exy@%H:%M:%S>",
    r"%Exy%Exm%Exd  ?%H:%M:%S",
    r"%b %d, %ExY %I:%M:%S %p",
    r"^%b-%d-%Exy %k:%M:%S",
    r"%ExY%Exm%Exd(?:T|  ?)%ExH%ExM%ExS(?:[.,]%f)?(?:\s*%z)?",
    r"(?:%Z )?(?:%a )?%b %d %k:%M:%S(?:\.%f)?(?: %ExY)?",
    r"(?:%z )?(?:%a )?%b %d %k:%M:%S(?:\.%f)?(?: %ExY)?",
    "TAI64N",
)
"""fail2ban's default date templates, in its order."""


class DatePatternError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class DateTemplate:
    name: str
    regex: re.Pattern[str]
    kind: str
    """"pattern" (strftime groups), "epoch", "lepoch" or "tai64n"; "none" for {NONE}"""
    line_begin: bool
    group: int = 1
    """The group holding the number (epoch forms inside a pattern use group 2)."""
    spanned: bool = False
    """The match's groups follow from the matched text alone: no assertion (lookaround, \\b,
    ^, $) inside the date that could read the text around it and make the same text match in
    another way. Then the matched text is a sufficient key for the time."""
    search: Callable[[str], re.Match[str] | None] = field(init=False, repr=False,
                                                         compare=False)
    """`regex.search`, bound once (find_date runs it for every line)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "search", self.regex.search)

    def read(self, match: re.Match[str], now: float) -> float | None:
        """The match's time, seconds since the epoch (None if it is no valid date)."""
        try:
            if self.kind == "pattern":
                key = (self.regex.pattern, match.group() if self.spanned else match.groups(),
                       now)
                try:
                    return _TIMES[key]
                except KeyError:
                    return _pattern_time(self.regex, match.groups(), now, key)
            if self.kind == "tai64n":
                return float(int(match.group(1)[2:17], 16))
            if self.kind == "none":
                return None
            value = match.group(self.group)
            number = float(value)
            if self.kind == "lepoch" and len(value) >= 13:
                number = number / 1_000_000 if len(value) >= 16 and "." not in value \
                    else number / 1000
            return number
        except (ValueError, OverflowError, KeyError):
            return None


def _bounded(regex: str, name: str, kind: str, *, word_begin: bool | str = True,
             word_end: bool = True, group: int = 1) -> DateTemplate:
    """fail2ban's template shaping: word (or line) boundaries, group 1 around the date."""
    regex = regex.strip()
    flags = _GLOBAL_FLAGS.search(regex)
    if flags:
        regex = _GLOBAL_FLAGS.sub("", regex, count=1)
    body = _LEADING_CARET.sub("", _TRAILING_DOLLAR.sub("", regex.replace("**", ""), count=1),
                              count=1)
    spanned = kind == "pattern" and not _ASSERTION.search(body)
    begin = bool(word_begin) and not _NO_BOUND_BEGIN.search(regex)
    end = word_end and not _NO_BOUND_END.search(regex)
    if not _CAPTURE.search(regex):
        regex = _WRAP.sub(r"\1(\2)\3", regex)
    line_begin = False
    if begin:
        if word_begin == "start":
            regex = r"^(?:\W{0,2})?" + regex
            line_begin = True
        else:
            regex = r"(?=^|\b|\W)" + regex
    if end:
        regex += r"(?=\b|\W|$)"
    line_begin = line_begin or bool(_LINE_BEGIN.search(regex))
    regex = _WILD_BOUNDS.sub(lambda m: m.group().replace("**", ""), regex)
    if flags:
        regex = flags.group(1) + regex
    try:
        return DateTemplate(name, re.compile(regex), kind, line_begin, group, spanned)
    except re.error as exc:
        raise DatePatternError(f"datepattern {name!r}: {exc}") from None


def _strftime_regex(pattern: str) -> str:
    regex = _DIRECTIVE.sub(lambda m: _DIRECTIVES[m.group(1)], pattern)
    return "(?i)" + regex if _ALPHA_DIRECTIVE.search(pattern) else regex


def template(pattern: str) -> DateTemplate:
    """One date template from a datepattern line (not the {^LN-BEG}/{DEFAULT}/{DATE} sets)."""
    key = pattern if "%" in pattern else pattern.upper()
    unbounded = key.startswith("{UNB}")
    if unbounded:
        pattern, key = pattern[5:], key[5:]
    start: bool | str = True
    for prefix in ("{^LN-BEG}", "^"):
        if key.startswith(prefix) and key[len(prefix):] in ("EPOCH", "LEPOCH", "TAI64N"):
            start, key = "start", key[len(prefix):]
    if key == "{NONE}":
        return _bounded("^", "{NONE}", "none", word_begin=False, word_end=False)
    if key in ("EPOCH", "LEPOCH"):
        epoch = _LONG_EPOCH if key == "LEPOCH" else _EPOCH
        if start == "start":
            return _bounded(rf"((?P<square>(?<=^\[))?{epoch})(?(square)(?=\]))", key,
                            key.lower(), word_begin="start")
        return _bounded(rf"((?:^|(?P<square>(?<=^\[))|(?P<selinux>(?<=\baudit\()))"
                        rf"{epoch})(?:(?(selinux)(?=:\d+\)))|(?(square)(?=\])))",
                        key, key.lower(), word_begin=False)
    if key == "TAI64N":
        return _bounded("@[0-9a-f]{24}", key, "tai64n", word_begin=start)
    epoch_inside = re.search(r"(?<!\\)\{(L?)EPOCH\}", pattern, re.IGNORECASE)
    if epoch_inside:
        long_form = bool(epoch_inside.group(1))
        regex = "(" + re.sub(r"(?<!\\)\{L?EPOCH\}", lambda m: "(" + (
            _LONG_EPOCH if long_form else _EPOCH) + ")", pattern, flags=re.IGNORECASE) + ")"
        return _bounded(regex, pattern, "lepoch" if long_form else "epoch", group=2)
    word_begin: bool | str = not unbounded
    if word_begin and pattern.startswith("{^LN-BEG}"):
        pattern, word_begin = pattern[len("{^LN-BEG}"):], "start"
    return _bounded(_strftime_regex(pattern), pattern, "pattern", word_begin=word_begin,
                    word_end=not unbounded)


def _unbound(pattern: str) -> str:
    for prefix in ("{UNB}", "{^LN-BEG}"):
        if pattern.startswith(prefix):
            pattern = pattern[len(prefix):]
    return pattern


def _literal(text: str) -> Callable[[re.Match[str]], str]:
    return lambda _match: text


def _defaults() -> list[DateTemplate]:
    """fail2ban's order: the line-start variants of the templates first, then all."""
    anchored: list[DateTemplate] = []
    plain: list[DateTemplate] = []
    for pattern in DEFAULT_PATTERNS:
        one = template(pattern)
        plain.append(one)
        if not one.line_begin and not pattern.startswith("^"):
            anchored.append(template("{^LN-BEG}" + pattern))
    return anchored + plain


_DEFAULTS = _defaults()


def templates(datepattern: str | None) -> tuple[DateTemplate, ...]:
    """The templates a filter's `datepattern` (one per line; None: the defaults) stands for."""
    if datepattern is None:
        return tuple(_DEFAULTS)
    found: list[DateTemplate] = []
    for line in filter(None, (part.strip() for part in re.split("\n+", datepattern))):
        upper = line.upper()
        if upper == "{^LN-BEG}":
            found += [one for one in _DEFAULTS if one.line_begin]
        elif upper == "{DEFAULT}":
            found += _DEFAULTS
        elif "{DATE}" in upper:
            for pattern in DEFAULT_PATTERNS:
                if pattern in ("EPOCH", "TAI64N"):
                    continue
                inner = _unbound(pattern)
                found.append(template(_DATE_SLOT.sub(_literal(inner), line)))
        else:
            found.append(template(line))
    return tuple(found)


def find_date(line: str, found: tuple[DateTemplate, ...]) -> tuple[re.Match[str],
                                                                    DateTemplate] | None:
    """The first template (in order) that matches at the line's beginning, else the one that
    matches earliest."""
    best: tuple[re.Match[str], DateTemplate] | None = None
    for one in found:
        match = one.search(line)
        if match is None:
            continue
        if one.line_begin or match.start(1) <= 1:
            return match, one
        if best is None or match.start(1) < best[0].start(1):
            best = match, one
    return best


def _zone_minutes(zone: str) -> int | None:
    if zone in ("Z", "UTC", "GMT"):
        return 0
    found = re.fullmatch(r"([A-Z]{1,5})?(?:([+-])([01]\d)(?::?(\d{2}))?)?", zone)
    if found is None:
        return None
    name, sign, hours, minutes = found.groups()
    base = 0.0
    if name:
        if name not in _ZONE_HOURS:
            return None
        base = _ZONE_HOURS[name]
    offset = 0
    if sign:
        offset = (int(hours) * 60 + int(minutes or 0)) * (-1 if sign == "-" else 1)
    return int(base * 60) + offset


_TIMES: dict[tuple[str, str | tuple[str | None, ...], float], float | None] = {}
"""Times already read, by (template regex, the matched text or its groups, now): a log's lines
share their seconds (measured: 7 us a line without it, most of a matched line's cost)."""
_TIMES_KEPT = 4096


def _pattern_time(regex: re.Pattern[str], groups: tuple[str | None, ...], now: float,
                  key: tuple[str, str | tuple[str | None, ...], float]) -> float | None:
    """_from_groups, remembered under `key` (see DateTemplate.read: the regex's text fixes its
    group names; with the match's groups, or its text when that fixes them, it fixes the
    groupdict). A time without a zone is local time: whoever changes the process's zone (TZ
    and tzset, as the tests do) calls zone_changed()."""
    names = regex.groupindex
    moment = _from_groups({name: groups[number - 1] for name, number in names.items()}, now)
    if len(_TIMES) >= _TIMES_KEPT:
        _TIMES.clear()
    _TIMES[key] = moment
    return moment


def zone_changed() -> None:
    """Forget the remembered times: the local time zone is another now."""
    _TIMES.clear()


def _from_groups(groups: Mapping[str, str | None], now: float) -> float | None:
    """fail2ban's reading of strftime groups (see the module docstring for missing parts)."""
    year = month = day = weekday = julian = week = None
    hour = minute = second = 0
    zone: int | None = None
    week_starts_sunday = False
    for key, value in groups.items():
        if value is None:
            continue
        lowered = value.lower()
        if key == "y":
            year = int(value)
            year += 2000 if year <= 2000 else 0
        elif key == "Y":
            year = int(value)
        elif key == "m":
            month = int(value)
        elif key == "b":
            month = _MONTHS.index(lowered[:3]) + 1
        elif key == "B":
            month = _MONTH_NAMES.index(lowered) + 1
        elif key == "d":
            day = int(value)
        elif key == "H":
            hour = int(value)
        elif key == "I":
            hour = int(value)
            ampm = (groups.get("p") or "").lower()
            if ampm in ("", "am") and hour == 12:
                hour = 0
            elif ampm == "pm" and hour != 12:
                hour += 12
        elif key == "M":
            minute = int(value)
        elif key == "S":
            second = int(value)
        elif key == "a":
            weekday = _DAYS.index(lowered[:3])
        elif key == "A":
            weekday = _DAY_NAMES.index(lowered)
        elif key == "w":
            weekday = (int(value) - 1) % 7
        elif key == "j":
            julian = int(value)
        elif key in ("U", "W"):
            week, week_starts_sunday = int(value), key == "U"
        elif key in ("z", "Z"):
            zone = _zone_minutes(value)
            if zone is None:
                return None
    local_now = datetime.fromtimestamp(now)
    assumed_year = year is None
    if year is None:
        year = local_now.year
    if (month is None or day is None) and julian is None and week is not None \
            and weekday is not None:
        first = datetime(year, 1, 1)
        shift = (first.weekday() + (1 if week_starts_sunday else 0)) % 7
        julian = 1 + 7 * (week - 1) + weekday - shift + (7 if shift else 0) if week else \
            1 + weekday - shift
    if (month is None or day is None) and julian is not None:
        date = datetime(year, 1, 1) + timedelta(days=julian - 1)
        year, month, day = date.year, date.month, date.day
    assumed_today = month is None and day is None
    if month is None or day is None:
        month, day = local_now.month, local_now.day
    result = datetime(year, month, day, hour, minute, second)
    if zone is not None:
        result -= timedelta(minutes=zone)
        reference = datetime.utcfromtimestamp(now)
    else:
        reference = local_now
    if assumed_today and result > reference:
        result -= timedelta(days=1)
    if assumed_year and result > reference + timedelta(days=1):
        result = result.replace(year=year - 1)
    if zone is not None:
        return float(calendar.timegm(result.timetuple()))
    return result.timestamp()  # naive: local time, as the line's writer meant it
