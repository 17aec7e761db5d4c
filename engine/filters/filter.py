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
from collections.abc import Mapping, Sequence
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

    def match(self, line: str, now: float) -> LineResult:
        """Find the line's date (relative to `now` where it lacks a year), cut it out, match.
        The date is read only for a failure (reading it is most of a miss's cost)."""
        found = find_date(line, self.dates) if self.dates else None
        if found is None:
            return self.match_text(line)
        matched, template = found
        result = self.match_text(line[:matched.start(1)] + line[matched.end(1):])
        if isinstance(result, Failure):
            return result._replace(time=template.read(matched, now))
        return result

    def match_text(self, text: str, when: float | None = None) -> LineResult:
        """Match a line whose date is already cut out; `when` is its time, if known."""
        buffer = text + "\n"
        ignore = self.ignoreregex
        if ignore and len(ignore) < len(self.failregex) - 2:
            hit = _first(ignore, buffer)
            if hit is not None:
                return Ignored(hit)
        fields: dict[str, str | None] = {}
        if self.prefregex is not None:
            prefix = self.prefregex.search(buffer)
            if prefix is None:
                return MISSED
            fields = prefix.groupdict()
            content = fields.pop("content", None)
            if content:
                buffer = content + "\n"
        for index, regex in enumerate(self.failregex):
            matched = regex.search(buffer)
            if matched is None:
                continue
            if ignore:
                hit = _first(ignore, buffer)
                if hit is not None:
                    return Ignored(hit)
            groups = {**fields, **{k: v for k, v in matched.groupdict().items()
                                   if v is not None or k not in fields}}
            if groups.get("nofail"):
                return NoFailure(index)
            host, is_name = _host(groups)
            if host is None:
                return NoFailure(index)
            user = groups.get("user") or _alternative(groups, "alt_user")
            return Failure(host, is_name, user, when, index)
        return MISSED


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
