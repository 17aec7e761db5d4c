"""fail2ban's sample logs, read the way its own test (samplestestcase.py) reads them, and each
line's agreement with what bansink's filter makes of it.

A sample file has, above each line, `# failJSON: {"match": true, "host": ..., "time": ...}`;
`# filterOptions: [{...}, ...]` switches the filter variants for the lines that follow,
`# fileOptions:` sets options for the whole file, `# addFILE: "name"` reads another file after
it. Times are local times in fail2ban's test zone (CET/CEST), against fail2ban's test clock
(2005-08-14 12:00 CEST), which `clock()` sets up.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from bansink.engine.filters.dates import zone_changed
from bansink.engine.filters.filter import Failure, Filter, FilterError, filter_from_file

TEST_NOW = 1124013600.0
TEST_ZONE = "CET-01CEST-02,M3.5.0,M10.5.0"
_DIRECTIVE = re.compile(r"^#+ ?(failJSON|(?:file|filter)Options|addFILE):(.+)$")


@contextmanager
def local_zone(name: str) -> Iterator[None]:
    """The process's local time zone is `name` (TZ) for the duration; the filters' remembered
    times follow it both ways."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = name
    time.tzset()
    zone_changed()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()
        zone_changed()


@contextmanager
def clock() -> Iterator[float]:
    """fail2ban's test time zone for the duration; yields its test 'now'."""
    with local_zone(TEST_ZONE):
        yield TEST_NOW


def fail2ban_root() -> Path | None:
    """Where fail2ban's files are: FAIL2BAN_ROOT, the copy setup.sh unpacks into .cache, or
    an installed fail2ban."""
    candidates = [os.environ.get("FAIL2BAN_ROOT", ""),
                  str(Path(__file__).resolve().parents[1] / ".cache" / "fail2ban"), "/"]
    for candidate in filter(None, candidates):
        root = Path(candidate)
        if (root / "etc/fail2ban/filter.d/common.conf").is_file() and \
                (root / "usr/lib/python3/dist-packages/fail2ban/tests/files/logs").is_dir():
            return root
    return None


@dataclass
class Line:
    file: str
    lineno: int
    text: str
    expected: dict[str, object]
    variant: str
    """The filter variant, e.g. `postfix[mode=auth]`."""
    prefix: str | None = None
    """For journal variants: the prefix fail2ban's test puts before the line (the journal
    gives the time, so the line has no date); None for file lines."""


@dataclass
class Verdict:
    line: Line
    agrees: bool
    why: str = ""
    by_design: bool = False
    """A host name fail2ban would resolve and bansink never does."""


@dataclass
class Report:
    name: str
    verdicts: list[Verdict] = field(default_factory=list)
    refused: str | None = None
    """Why bansink does not load this filter (multi-line, ...)."""

    @property
    def disagreements(self) -> list[Verdict]:
        return [v for v in self.verdicts if not v.agrees]


def _variant_label(name: str, options: dict[str, object]) -> str:
    shown = {k: v for k, v in options.items() if not k.startswith("test.")}
    return name + (f"[{', '.join(f'{k}={v}' for k, v in shown.items())}]" if shown else "")


def _same_host(got: str, expected: object) -> bool:
    try:
        return ipaddress.ip_address(got.strip("[]")) == ipaddress.ip_address(
            str(expected).strip("[]"))
    except ValueError:
        return got == str(expected)


def _expected_time(text: str) -> float:
    for form in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S.%f"):
        try:
            moment = datetime.strptime(text, form)
            return time.mktime(moment.timetuple()) + moment.microsecond / 1e6
        except ValueError:
            continue
    raise ValueError(f"failJSON time {text!r}")


def judge(flt: Filter, line: Line, now: float) -> Verdict:
    journal = line.prefix is not None
    if line.prefix is not None:
        result = flt.match_text(line.prefix + line.text, now)
    else:
        result = flt.match(line.text, now)
    expected = line.expected
    if not expected.get("match", False):
        if isinstance(result, Failure):
            return Verdict(line, False, f"matched {result.host}, expected no match")
        return Verdict(line, True)
    if not isinstance(result, Failure):
        return Verdict(line, False, f"expected {expected.get('host')}, got {result!r}")
    if "host" in expected and not _same_host(result.host, expected["host"]):
        return Verdict(line, False, f"host {result.host}, expected {expected['host']}")
    if "time" in expected and not journal and (
            result.time is None or
            abs(result.time - _expected_time(str(expected["time"]))) > 1e-3):
        return Verdict(line, False, f"time {result.time}, expected {expected['time']}")
    if "user" in expected and result.user != expected["user"]:
        return Verdict(line, False, f"user {result.user!r}, expected {expected['user']!r}")
    return Verdict(line, True, by_design=result.is_name)


def check_samples(name: str, filters: Path, logs: Path, now: float = TEST_NOW,
                  suffix: str = "") -> Report:
    """Every sample line of `logs/name` (and the files it adds) through bansink's reading of
    `filters/name.conf`, variant by variant."""
    report = Report(name)
    cache: dict[str, Filter] = {}
    files, position = [name + suffix], 0
    variants: list[tuple[str, dict[str, object]]] = [(name, {})]
    common: dict[str, object] = {}
    skip_block = False
    while position < len(files):
        source = logs / files[position]
        position += 1
        lines = source.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
        index = 0
        while index < len(lines):
            text, lineno = lines[index], index + 1
            index += 1
            directive = _DIRECTIVE.match(text)
            expected: dict[str, object] = {}
            if directive:
                kind, data = directive.group(1), json.loads(directive.group(2))
                if kind == "fileOptions":
                    common = data
                    continue
                if kind == "addFILE":
                    files.append(data)
                    continue
                if kind == "filterOptions":
                    variants, skip_block = [], False
                    for options in data if isinstance(data, list) else [data]:
                        merged = {**common, **options}
                        if merged.get("test.condition"):
                            skip_block = True  # Python conditions on fail2ban's own runtime
                            continue
                        variants.append((_variant_label(name, merged), merged))
                    continue
                expected = data
                if index >= len(lines):
                    break
                text, lineno = lines[index], index + 1
                index += 1
            elif skip_block or text.startswith("#") or not text.strip():
                continue
            if skip_block or expected.get("constraint"):
                continue
            for label, options in variants:
                given = {k: str(v) for k, v in options.items() if not k.startswith("test.")}
                if label not in cache:
                    try:
                        cache[label] = filter_from_file(filters / f"{name}.conf", given)
                    except FilterError as exc:
                        report.refused = str(exc)
                        return report
                prefix = str(options.get("test.prefix-line", "")) \
                    if options.get("logtype") == "journal" else None
                report.verdicts.append(judge(cache[label], Line(
                    files[position - 1], lineno, text.rstrip("\r\n"), expected, label, prefix),
                    now))
    return report


def main() -> None:
    """Agreement over every stock filter that has a sample log (run this file)."""
    root = fail2ban_root()
    if root is None:
        raise SystemExit("fail2ban's files are missing: run deploy/setup.sh --test")
    filters = root / "etc/fail2ban/filter.d"
    logs = root / "usr/lib/python3/dist-packages/fail2ban/tests/files/logs"
    names = sorted(path.stem for path in filters.glob("*.conf")
                   if path.stem != "common" and (logs / path.stem).is_file())
    lines = agreeing = 0
    refused: list[str] = []
    with clock() as now:
        for name in names:
            report = check_samples(name, filters, logs, now)
            if report.refused:
                refused.append(report.refused)
                continue
            lines += len(report.verdicts)
            agreeing += len(report.verdicts) - len(report.disagreements)
            for verdict in report.disagreements:
                print(f"disagrees: {verdict.line.variant} {verdict.line.file}:"
                      f"{verdict.line.lineno}: {verdict.why}")
    print(f"{len(names)} stock filters with sample logs, {len(names) - len(refused)} loaded, "
          f"{agreeing} of {lines} sample lines agree")
    for reason in refused:
        print(f"refused: {reason}")


if __name__ == "__main__":
    main()
