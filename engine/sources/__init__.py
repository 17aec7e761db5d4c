"""Sources: each turns the syslog messages of one application into security events.

A source is a callable (`SyslogMessage -> SecurityEvent | NotMatched | MalformedEvent`), pure
and cheap on messages that are not its own. It may say which syslog tags (APP-NAMEs) it reads
(`tags`, see `tags_of`): the pipeline then hands it only those messages, so the cost of a
message stays flat as sources are added.

Two kinds:
- code, for formats a regex cannot read safely (the roundcube-security_log plugin's key=value
  list): `registry`;
- fail2ban-syntax filter files, built in (`filters/*.conf`, each with a `[bansink]` section
  naming its tags and line form) or the admin's own (`filter_source`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import cache
from pathlib import Path

from bansink.receiver.syslog import SyslogMessage

from ..events import MalformedEvent, NotMatched, SecurityEvent
from ..filters.filter import Filter, FilterError, filter_from_file, load_filter
from .filtered import FilterSource, LineForm
from .roundcube import roundcube_event

Source = Callable[[SyslogMessage], SecurityEvent | NotMatched | MalformedEvent]

BUILTIN_FILTERS = Path(__file__).with_name("filters")

registry: dict[str, Source] = {
    "roundcube-security_log": roundcube_event,
}
"""Sources written as code."""


def tags_of(source: Source) -> frozenset[str] | None:
    """The syslog tags a source reads; None: every message."""
    tags = getattr(source, "tags", None)
    return tags if isinstance(tags, frozenset) else None


def _metadata_tags(flt: Filter) -> frozenset[str] | None:
    words = flt.metadata.get("tags", "").split()
    return frozenset(words) if words else None


def _line_form(flt: Filter, line: LineForm | None) -> LineForm:
    if line is not None:
        return line
    given = flt.metadata.get("line", "syslog").strip()
    if given not in ("syslog", "message"):
        raise FilterError(f"filter {flt.name}: [bansink] line = {given!r}: "
                          f"expected syslog or message")
    return "message" if given == "message" else "syslog"


def filter_source(spec: str, folders: Sequence[Path] = (), *,
                  tags: frozenset[str] | None = None, line: LineForm | None = None) -> FilterSource:
    """A fail2ban filter as a source: `spec` names it (`postfix[mode=auth]`, or a path);
    `tags` and `line` override what the file's `[bansink]` section says (defaults: every
    message, the syslog line)."""
    flt = load_filter(spec, folders)
    return FilterSource(spec, flt, _line_form(flt, line),
                        tags if tags is not None else _metadata_tags(flt))


@cache
def builtin_filter_sources() -> Mapping[str, FilterSource]:
    """The built-in filter files, by name (the file's stem)."""
    found: dict[str, FilterSource] = {}
    for path in sorted(BUILTIN_FILTERS.glob("*.conf")):
        if "[bansink]" not in path.read_text(encoding="utf-8"):
            continue  # an include (the shared syslog prefix), not a source
        flt = filter_from_file(path)
        found[path.stem] = FilterSource(path.stem, flt, _line_form(flt, None),
                                        _metadata_tags(flt))
    return found


def builtin_sources() -> dict[str, Source]:
    """Every built-in source, code and filter files, by name."""
    return {**registry, **builtin_filter_sources()}
