"""Reading fail2ban filter files (filter.d/*.conf) into the options a filter is built from.

What is read, with fail2ban's meaning:
- `[INCLUDES]` `before =` / `after =`: files (one per line, relative to the including file)
  read before / after this one; a `NAME.local` beside any file is read right after it.
- Sections merge in reading order: a later file's option replaces an earlier one, whose value
  stays reachable as `%(known/NAME)s`.
- `%(NAME)s` interpolation (configparser's, looked up in the option's own section, then
  `[DEFAULT]`), with `%(SECTION/NAME)s`, `%(default/NAME)s` and `%(known/NAME)s`.
- `<NAME>` tags naming an option are replaced by its value, repeatedly, so that
  `failregex = <mdre-<mode>>` picks the regexes of the mode; tags that name no option (`<HOST>`,
  `<F-USER>`) are left for the regex compiler.
- Precedence of a filter's options: what the jail passes (`postfix[mode=aggressive]`) over
  `[Init]` over `[Definition]` over `[DEFAULT]`.

Only the filter-related options come out (FilterOptions); a `[bansink]` section, if present,
carries bansink's own metadata for built-in sources and is ignored by fail2ban.
"""

from __future__ import annotations

import configparser
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

_MAX_PASSES = 50
"""Tag substitution rounds before a definition counts as self-referencing."""

_TAG = re.compile(r"<([^ <>]+)>")
_INTERPOLATION = re.compile(r"%\(([^)]+)\)s")
_SPEC = re.compile(r"^\s*([^\[\]\s]+)\s*(?:\[(.*)\])?\s*$", re.DOTALL)
_SPEC_OPTION = re.compile(
    r"""\s*([\w\-/.]+)\s*=\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^,]*)\s*(?:,|$)""")


class FilterFileError(ValueError):
    """A filter file that cannot be read or resolved; the message names the file."""


@dataclass(frozen=True, slots=True)
class FilterOptions:
    """A filter's options after includes, interpolation and tag substitution (regexes still
    carry fail2ban's own tags such as `<HOST>`)."""

    name: str
    files: tuple[Path, ...]
    """Every file read, in order."""
    failregex: tuple[str, ...]
    ignoreregex: tuple[str, ...] = ()
    prefregex: str | None = None
    datepattern: str | None = None
    maxlines: int = 1
    journalmatch: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    """The `[bansink]` section, for built-in sources."""


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """fail2ban's `name[opt=value, opt2="value, with comma"]` -> (name, options)."""
    match = _SPEC.match(spec)
    if match is None:
        raise FilterFileError(f"{spec!r}: expected NAME or NAME[option=value, ...]")
    name, body = match.group(1), match.group(2) or ""
    options: dict[str, str] = {}
    position = 0
    body = body.strip()
    while position < len(body):
        item = _SPEC_OPTION.match(body, position)
        if item is None or item.end() == position:
            raise FilterFileError(f"{spec!r}: cannot read the options at {body[position:]!r}")
        value = item.group(2).strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        options[item.group(1).lower()] = value
        position = item.end()
    return name, options


def _parser() -> configparser.RawConfigParser:
    # fail2ban's parser: ";" starts an inline comment, option names are case-insensitive
    return configparser.RawConfigParser(inline_comment_prefixes=(";",), strict=False,
                                        default_section="DEFAULT", interpolation=None)


def _read_one(path: Path) -> configparser.RawConfigParser:
    parser = _parser()
    try:
        text = path.read_text(encoding="utf-8")
        parser.read_string(text, source=str(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise FilterFileError(f"{path}: {exc}") from None
    except configparser.Error as exc:
        raise FilterFileError(f"{path}: {' '.join(str(exc).split())}") from None
    return parser


def _with_local(path: Path) -> list[Path]:
    local = path.with_suffix(".local")
    return [path, local] if local != path and local.is_file() else [path]


Parsed = tuple[Path, configparser.RawConfigParser]


def _files_in_order(path: Path, seen: tuple[Path, ...] = ()) -> list[Parsed]:
    """The file with its includes (and .local files) in reading order, each parsed once."""
    ordered: list[Parsed] = []
    for one in _with_local(path):
        parser = _read_one(one)
        before: list[Parsed] = []
        after: list[Parsed] = []
        if parser.has_section("INCLUDES"):
            for key, into in (("before", before), ("after", after)):
                for line in parser.get("INCLUDES", key, fallback="").splitlines():
                    if line.strip():
                        target = Path(line.strip())
                        target = target if target.is_absolute() else one.parent / target
                        if target in seen or target == one:
                            continue
                        if not target.is_file():
                            if target.suffix == ".local":
                                continue  # optional by convention (common.local)
                            raise FilterFileError(f"{one}: included file {target} not found")
                        into.extend(_files_in_order(target, (*seen, one)))
        ordered += [*before, (one, parser), *after]
    return ordered


class _Merged:
    """The merged sections of all files, with fail2ban's lookups."""

    def __init__(self, files: list[Parsed]) -> None:
        self.defaults: dict[str, str] = {}
        self.sections: dict[str, dict[str, str]] = {}
        self.known: dict[str, dict[str, str]] = {}
        for _, parser in files:
            self.defaults.update(parser.defaults())
            for section in parser.sections():
                own = {key: parser.get(section, key) for key in parser.options(section)
                       if key not in parser.defaults() or
                       parser.get(section, key) != parser.defaults()[key]}
                into = self.sections.setdefault(section, {})
                replaced = {key: into[key] for key in own if key in into}
                if replaced:
                    self.known.setdefault(section, {}).update(replaced)
                into.update(own)

    def raw(self, section: str, name: str) -> str | None:
        """An option's raw value: SECTION/NAME, known/NAME and default/NAME understood."""
        if "/" in name:
            prefix, _, option = name.partition("/")
            if prefix.lower() == "known":
                value = self.known.get(section, {}).get(option)
                return value if value is not None else self.defaults.get(option)
            if prefix.lower() == "default":
                return self.defaults.get(option)
            value = self.sections.get(prefix, {}).get(option)
            return value if value is not None else self.defaults.get(option)
        value = self.sections.get(section, {}).get(name)
        return value if value is not None else self.defaults.get(name)


class _Resolver:
    def __init__(self, merged: _Merged, given: Mapping[str, str], origin: str) -> None:
        self.merged, self.given, self.origin = merged, given, origin
        self.init = merged.sections.get("Init", {})

    def interpolated(self, section: str, name: str, depth: int = 0) -> str | None:
        """configparser's %(name)s, with the jail's options first (fail2ban passes them as
        `vars`, which configparser prefers to the section's own values)."""
        if depth > _MAX_PASSES:
            raise FilterFileError(f"{self.origin}: %({name})s refers to itself")
        if "/" not in name and name in self.given:
            value: str | None = self.given[name]
        else:
            value = self.merged.raw(section, name)
        if value is None:
            return None
        here = name.partition("/")[0] if "/" in name and not name.lower().startswith(
            ("known/", "default/")) else section

        def substitute(match: re.Match[str]) -> str:
            inner = self.interpolated(here, match.group(1).lower() if "/" not in match.group(1)
                                      else match.group(1), depth + 1)
            if inner is None:
                raise FilterFileError(
                    f"{self.origin}: [{section}] {name}: %({match.group(1)})s is not defined")
            return inner

        return _INTERPOLATION.sub(substitute, value).replace("%%", "%")

    def tag_value(self, name: str) -> str | None:
        """What `<name>` stands for: the jail's option, [Init], [Definition], [DEFAULT]."""
        if "/" not in name:
            if name in self.given:
                return self.given[name]
            if name in self.init:
                return self.interpolated("Init", name)
        return self.interpolated("Definition", name)

    def substituted(self, value: str) -> str:
        for _ in range(_MAX_PASSES):
            changed = False

            def replace(match: re.Match[str]) -> str:
                nonlocal changed
                found = self.tag_value(match.group(1))
                if found is None:
                    return match.group(0)
                changed = True
                return found

            value = _TAG.sub(replace, value)
            if not changed:
                return value
        raise FilterFileError(f"{self.origin}: tags refer to themselves (<...> in {value[:80]!r})")

    def option(self, name: str) -> str | None:
        value = self.tag_value(name)
        return None if value is None else self.substituted(value)


def _lines(value: str | None) -> tuple[str, ...]:
    return tuple(line.strip() for line in (value or "").splitlines() if line.strip())


def read_filter(path: Path, given: Mapping[str, str] | None = None) -> FilterOptions:
    """Read a filter file with its includes; `given` are the jail's options (`mode`, ...)."""
    if not path.is_file():
        raise FilterFileError(f"{path}: no such filter file")
    files = _files_in_order(path)
    merged = _Merged(files)
    if "Definition" not in merged.sections:
        raise FilterFileError(f"{path}: no [Definition] section")
    resolver = _Resolver(merged, {k.lower(): v for k, v in (given or {}).items()}, str(path))
    failregex = _lines(resolver.option("failregex"))
    maxlines_text = resolver.option("maxlines")
    try:
        maxlines = int(maxlines_text) if maxlines_text and maxlines_text.strip() else 1
    except ValueError:
        raise FilterFileError(f"{path}: maxlines = {maxlines_text!r} is not a number") from None
    datepattern = resolver.option("datepattern")
    prefregex = resolver.option("prefregex")
    journalmatch = resolver.option("journalmatch")
    return FilterOptions(
        name=path.stem,
        files=tuple(path for path, _ in files),
        failregex=failregex,
        ignoreregex=_lines(resolver.option("ignoreregex")),
        prefregex=prefregex.strip() if prefregex and prefregex.strip() else None,
        datepattern=datepattern.strip() if datepattern and datepattern.strip() else None,
        maxlines=maxlines,
        journalmatch=journalmatch.strip() if journalmatch and journalmatch.strip() else None,
        metadata=dict(merged.sections.get("bansink", {})),
    )
