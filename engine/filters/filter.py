"""A fail2ban filter, compiled: one log line in, a failure (or why not) out.

Per line, as fail2ban does it: the date is found and cut out; `ignoreregex` is tried first when
there are many more fail- than ignore-regexes; `prefregex` must match, and its `<F-CONTENT>` is
what the failregexes see; the first failregex that matches, unless an ignoreregex matches too,
makes the failure, whose host is the `<HOST>`/`<ADDR>`/`<F-ID/>` text. `<F-NOFAIL>` marks a
match that is not a failure. Matching keeps no state: the result is a value.

`load_filter` reads a filter file by name (`postfix[mode=auth]`, looked up in the given
filter.d folders) or by path, and refuses what bansink does not do (multi-line filters:
`maxlines` > 1, `<SKIPLINES>`) with an error naming it. `<F-MLFID>` (failures merged across
lines by an id) is read as a plain field: a failregex with a host of its own works, one that
needs the host of another line is named in a note and never makes a failure. `journalmatch`
(systemd's journal, which bansink does not read) and greedy regexes an attacker could steer
(see `greedy_host`) become notes too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from .conf import FilterFileError, FilterOptions, parse_spec, read_filter
from .dates import DatePatternError, DateTemplate, find_date, templates
from .regex import FAILURE_ID_GROUPS, FilterRegexError, compile_regex, unsupported

_HOST_TAG = re.compile(r"<(?:HOST|ADDR|IP4|IP6|DNS|SUBNET|F-ID/|F-IP4/|F-IP6/|F-ADDR/)>")
_GREEDY = re.compile(r"(?<!\\)\.[*+](?![?+])")


class FilterError(ValueError):
    """A filter that cannot be used; the message names the filter and says why."""


class Failure(NamedTuple):
    host: str
    """The failure's host as the line has it: an address, or a name if `is_name`."""
    is_name: bool
    """The host is a DNS name: never resolved, never banned."""
    user: str | None
    time: float | None
    """From the line's own date, if it has one."""
    regex: int
    """Index of the failregex that matched."""


class Ignored(NamedTuple):
    regex: int
    """Index of the ignoreregex that matched."""


class NoFailure(NamedTuple):
    """A failregex matched a line marked `<F-NOFAIL>` (or one without a failure id)."""

    regex: int


class Missed(NamedTuple):
    """No failregex matched."""


MISSED = Missed()
LineResult = Failure | Ignored | NoFailure | Missed


def greedy_host(regex: str) -> bool:
    """A failregex whose host an attacker may choose: a greedy `.*`/`.+` before the host and no
    hard end (`$`) after it, so that text typed into the line (a user name) that looks like
    "from 198.51.100.9" can be where the host is taken from."""
    tag = _HOST_TAG.search(regex)
    if tag is None:
        return False
    before, after = regex[:tag.start()], regex[tag.end():]
    if not _GREEDY.search(before):
        return False
    return bool(_GREEDY.search(after)) or not after.rstrip().endswith("$")


class _Reading(NamedTuple):
    """Where a failregex's failure fields are, for the common shape read without building
    dictionaries: a host from `<ADDR>`/`<HOST>`'s address groups (ip4, ip6) and an optional
    user, all in the failregex, none in the prefregex, no `<F-NOFAIL>`, names or ids. Positions
    in `Match.groups()`; `user` is -1 when there is none."""

    ip4: int
    ip6: int
    user: int


_FIELD_GROUPS = ("nofail", "ip4", "ip6", "dns", "fid", "user")


def _reading(regex: re.Pattern[str], prefregex: re.Pattern[str] | None) -> _Reading | None:
    """The failregex's `_Reading` if it has the common shape; None: read it by group names."""
    names = set(regex.groupindex)
    prefix = set(prefregex.groupindex) if prefregex is not None else set()
    fields = {name for name in names | prefix
              if name in _FIELD_GROUPS or name.startswith("alt_user")}
    if fields - {"user"} != {"ip4", "ip6"} or fields & prefix:
        return None
    index = regex.groupindex
    return _Reading(index["ip4"] - 1, index["ip6"] - 1, index["user"] - 1 if "user" in index
                    else -1)


@dataclass(frozen=True, slots=True)
class Filter:
    name: str
    """As a jail names it, e.g. `postfix[mode=auth]`."""
    failregex: tuple[re.Pattern[str], ...]
    ignoreregex: tuple[re.Pattern[str], ...] = ()
    prefregex: re.Pattern[str] | None = None
    dates: tuple[DateTemplate, ...] = ()
    datepattern: str | None = None
    """As the filter file gives it (None: fail2ban's default detection)."""
    notes: tuple[str, ...] = ()
    """What the operator should know about this filter (said once, at load)."""
    metadata: Mapping[str, str] = field(default_factory=dict)
    _failing: tuple[tuple[int, Callable[[str], re.Match[str] | None], _Reading | None], ...] = \
        field(init=False, repr=False, compare=False)
    """Per failregex, for the hot path: its index, its bound `search`, its `_Reading`."""
    _content: int = field(init=False, repr=False, compare=False)
    """The prefregex's `<F-CONTENT>` group number (0: none)."""
    _ignore_first: bool = field(init=False, repr=False, compare=False)
    """Try the ignoreregexes before the failregexes (many more fail- than ignore-regexes)."""

    def __post_init__(self) -> None:
        prefix = self.prefregex
        object.__setattr__(self, "_failing", tuple(
            (index, regex.search, _reading(regex, prefix))
            for index, regex in enumerate(self.failregex)))
        object.__setattr__(self, "_content",
                           prefix.groupindex.get("content", 0) if prefix is not None else 0)
        object.__setattr__(self, "_ignore_first", bool(self.ignoreregex) and
                           len(self.ignoreregex) < len(self.failregex) - 2)

    def match(self, line: str, now: float) -> LineResult:
        """Find the line's date (relative to `now` where it lacks a year), cut it out, match.
        The date is read only for a failure (reading it is most of a miss's cost)."""
        for template in self.dates:  # find_date, inlined for its common case
            matched = template.search(line)
            if matched is None:
                continue
            start, end = matched.span(1)
            if template.line_begin or start <= 1:
                return self._match(line[:start] + line[end:] + "\n", None,
                                   (matched, template), now)
            found = find_date(line, self.dates)  # not at the start: the earliest of all
            assert found is not None
            start, end = found[0].span(1)
            return self._match(line[:start] + line[end:] + "\n", None, found, now)
        return self._match(line + "\n", None, None, now)

    def match_untimed(self, line: str) -> LineResult:
        """As `match`, the date cut out, but not read: a failure's time is None (the daemon
        counts a failure at its arrival; reading the date was 0.8 us a failure)."""
        found = find_date(line, self.dates) if self.dates else None
        if found is None:
            return self._match(line + "\n", None, None, 0.0)
        start, end = found[0].span(1)
        return self._match(line[:start] + line[end:] + "\n", None, None, 0.0)

    def match_text(self, text: str, when: float | None = None) -> LineResult:
        """Match a line whose date is already cut out; `when` is its time, if known."""
        return self._match(text + "\n", when, None, 0.0)

    def _match(self, buffer: str, when: float | None,
               date: tuple[re.Match[str], DateTemplate] | None, now: float) -> LineResult:
        """The result for `buffer` (the line, its date cut out, and a line feed as fail2ban
        gives it); a failure's time is `when`, or the `date` found in the line, read against
        `now`."""
        ignore = self.ignoreregex
        if self._ignore_first:
            hit = _first(ignore, buffer)
            if hit is not None:
                return Ignored(hit)
        prefix = None
        if self.prefregex is not None:
            prefix = self.prefregex.search(buffer)
            if prefix is None:
                return MISSED
            if self._content:
                content = prefix.group(self._content)
                if content:
                    buffer = content + "\n"
        for index, search, reading in self._failing:
            matched = search(buffer)
            if matched is None:
                continue
            if ignore:
                hit = _first(ignore, buffer)
                if hit is not None:
                    return Ignored(hit)
            if reading is not None:
                found = matched.groups()
                host = found[reading.ip4] or found[reading.ip6]
                if not host:
                    return NoFailure(index)
                is_name = False
                user = found[reading.user] or None if reading.user >= 0 else None
            else:
                named = _named(matched, prefix)
                if named is None:
                    return NoFailure(index)
                host, is_name, user = named
            if date is not None:
                when = date[1].read(date[0], now)
            return Failure(host, is_name, user, when, index)
        return MISSED


def _named(matched: re.Match[str], prefix: re.Match[str] | None,
           ) -> tuple[str, bool, str | None] | None:
    """A failregex match read by group names, the prefregex's fields beneath the failregex's:
    the failure's host, whether it is a name, its user; None if it is no failure."""
    fields: dict[str, str | None] = {}
    if prefix is not None:
        fields = prefix.groupdict()
        fields.pop("content", None)
    groups = {**fields, **{k: v for k, v in matched.groupdict().items()
                           if v is not None or k not in fields}}
    if groups.get("nofail"):
        return None
    host, is_name = _host(groups)
    if host is None:
        return None
    return host, is_name, groups.get("user") or _alternative(groups, "alt_user")


def _first(regexes: tuple[re.Pattern[str], ...], buffer: str) -> int | None:
    for index, regex in enumerate(regexes):
        if regex.search(buffer):
            return index
    return None


def _alternative(groups: Mapping[str, str | None], prefix: str) -> str | None:
    for key in sorted(groups):
        if key.startswith(prefix) and groups[key]:
            return groups[key]
    return None


def _host(groups: Mapping[str, str | None]) -> tuple[str | None, bool]:
    for key in ("ip4", "ip6"):
        if groups.get(key):
            return groups[key], False
    if groups.get("dns"):
        return groups["dns"], True
    return groups.get("fid"), False


def _compile(options: FilterOptions, label: str) -> Filter:
    problems = [note for regex in (*options.failregex, options.prefregex or "")
                for note in unsupported(regex)]
    if options.maxlines > 1:
        problems.insert(0, f"multi-line matching (maxlines = {options.maxlines})")
    if problems:
        raise FilterError(f"filter {label}: not supported: {'; '.join(dict.fromkeys(problems))}"
                          f" (bansink matches one line at a time)")
    if not options.failregex:
        raise FilterError(f"filter {label}: no failregex")
    try:
        prefregex = compile_regex(options.prefregex, f"filter {label}: prefregex") \
            if options.prefregex else None
        failregex = tuple(compile_regex(regex, f"filter {label}: failregex {index + 1}")
                          for index, regex in enumerate(options.failregex))
        ignoreregex = tuple(compile_regex(regex, f"filter {label}: ignoreregex {index + 1}")
                            for index, regex in enumerate(options.ignoreregex))
        dates = templates(options.datepattern)
    except (FilterRegexError, DatePatternError) as exc:
        raise FilterError(str(exc)) from None
    prefix_ids = prefregex is not None and any(g in prefregex.groupindex
                                               for g in FAILURE_ID_GROUPS)
    merging = any("mlfid" in regex.groupindex for regex in (prefregex, *failregex) if regex)
    notes = []
    for index, regex in enumerate(failregex):
        if prefix_ids or any(g in regex.groupindex for g in FAILURE_ID_GROUPS):
            continue
        if not merging:
            raise FilterError(f"filter {label}: failregex {index + 1} has no <HOST> "
                              f"(nor <ADDR>, <F-ID/>): it cannot name whom to ban")
        notes.append(f"filter {label}: failregex {index + 1} takes its host from another line "
                     f"(<F-MLFID> merging, not supported): its lines count as no failure")
    if options.journalmatch:
        notes.append(f"filter {label}: journalmatch ({options.journalmatch}) not used: "
                     f"bansink reads syslog messages, not the systemd journal")
    for index, regex_text in enumerate(options.failregex):
        if greedy_host(regex_text):
            notes.append(
                f"filter {label}: failregex {index + 1} has a greedy .* before <HOST> and no "
                f"$ after it, so text an attacker types (a user name containing "
                f"'from 198.51.100.9') can choose the address; anchor the line's end after "
                f"<HOST> or replace .* with a precise class such as \\S+ or [^)]*")
    return Filter(label, failregex, ignoreregex, prefregex, dates, options.datepattern,
                  tuple(notes), options.metadata)


def load_filter(spec: str, folders: Sequence[Path] = ()) -> Filter:
    """A filter by name (`postfix[mode=auth]`, found as filter.d/postfix.conf in `folders`)
    or by path (`/etc/fail2ban/filter.d/postfix.conf[mode=auth]`)."""
    try:
        name, given = parse_spec(spec)
    except FilterFileError as exc:
        raise FilterError(str(exc)) from None
    path = Path(name)
    if path.suffix not in (".conf", ".local") or not path.is_absolute():
        candidates = [folder / f"{name}.conf" for folder in folders]
        found = next((candidate for candidate in candidates if candidate.is_file()), None)
        if found is None and path.is_file():
            found = path
        if found is None:
            where = ", ".join(str(folder) for folder in folders) or "no filter folders"
            raise FilterError(f"filter {spec!r}: not found (looked in {where})")
        path = found
    return filter_from_file(path, given)


def filter_from_file(path: Path, given: Mapping[str, str] | None = None) -> Filter:
    """The filter in `path`, with the jail's options `given` (`{"mode": "aggressive"}`)."""
    given = dict(given or {})
    try:
        options = read_filter(path, given)
    except FilterFileError as exc:
        raise FilterError(f"filter {path.stem}: {exc}") from None
    label = options.name + (f"[{', '.join(f'{k}={v}' for k, v in given.items())}]"
                            if given else "")
    return _compile(options, label)
