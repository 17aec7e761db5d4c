"""fail2ban's regex tags turned into Python regexes.

`<HOST>` is an address or a host name, `<ADDR>` an address (IPv4, IPv6, optionally in
brackets), `<IP4>`, `<IP6>`, `<DNS>`, `<CIDR>`, `<SUBNET>`; `<F-ID/>` and `<F-PORT/>` are
values of their own. `<F-NAME>...</F-NAME>` captures a field (`user`, `alt_user1`, `content`,
`nofail`, ...). Host names are matched where fail2ban matches them, so that a line matches
exactly where it does in fail2ban, but bansink never resolves one: a failure whose host is a
name is reported as such and bans nobody.

Python refuses global flags such as `(?i)` inside a pattern; like fail2ban, a group that opens
with one gets it as a local flag instead (`((?i)login)` becomes `(?i:login)`).
"""

from __future__ import annotations

import re

IP4 = r"(?:\d{1,3}\.){3}\d{1,3}"
IP6 = r"(?:[0-9a-fA-F]{1,4}::?|::){1,7}(?:[0-9a-fA-F]{1,4}|(?<=:):)"
_HOST4 = rf"(?:::f{{4,6}}:)?(?P<ip4>{IP4})"
_HOST6 = rf"(?P<ip6>{IP6})"
_DNS = r"(?P<dns>[\w\-.^_]*\w)"
_ADDR = rf"\[?(?:{_HOST4}|{_HOST6})\]?"
_CIDR = r"(?P<cidr>\d+)"

_TAGS: dict[str, str] = {
    "HOST": f"(?:{_ADDR}|{_DNS})",
    "ADDR": _ADDR, "F-ADDR/": _ADDR,
    "IP4": _HOST4, "F-IP4/": _HOST4,
    "IP6": _HOST6, "F-IP6/": _HOST6,
    "DNS": _DNS, "F-DNS/": _DNS,
    "CIDR": _CIDR, "F-CIDR/": _CIDR,
    "SUBNET": rf"\[?(?:{_HOST4}|{_HOST6})(?:/{_CIDR})?\]?",
    "F-ID/": r"(?P<fid>\S+)",
    "F-PORT/": r"(?P<fport>\w+)",
}
_TAG = re.compile(r"</?[\w\-]+/?>")
_FIELD = re.compile(r"^(/?)F-([A-Z0-9_\-]+)$")
_FIELD_NAMES = {"id": "fid", "port": "fport"}
_GLOBAL_TO_LOCAL = re.compile(r"(?<!\\)\((?:\?:)?(\(\?[a-z]+)\)")

UNSUPPORTED_TAGS = {
    "SKIPLINES": "multi-line matching (<SKIPLINES>)",
    "F-MLFFORGET": "multi-line failure merging (<F-MLFFORGET>)",
    "F-MLFGAINED": "multi-line failure merging (<F-MLFGAINED>)",
}
FAILURE_ID_GROUPS = ("fid", "ip4", "ip6", "dns")


class FilterRegexError(ValueError):
    pass


def unsupported(regex: str) -> list[str]:
    """What in a regex bansink cannot do (multi-line features), by description."""
    found = []
    for tag in _TAG.findall(regex):
        name = tag.strip("</>")
        if name in UNSUPPORTED_TAGS and UNSUPPORTED_TAGS[name] not in found:
            found.append(UNSUPPORTED_TAGS[name])
    return found


def expand(regex: str) -> str:
    """A fail2ban regex with its tags replaced by Python regex syntax."""
    opened: set[str] = set()

    def substitute(match: re.Match[str]) -> str:
        tag = match.group()
        name = tag[1:-1]
        if name in _TAGS:
            return _TAGS[name]
        field = _FIELD.match(name)
        if field is None:
            return tag
        closing, label = field.groups()
        if closing:
            return ")" if label in opened else tag
        opened.add(label)
        lowered = label.lower()
        return f"(?P<{_FIELD_NAMES.get(lowered, lowered)}>"

    expanded = _TAG.sub(substitute, regex)
    return _GLOBAL_TO_LOCAL.sub(r"\1:", expanded)


def compile_regex(regex: str, what: str) -> re.Pattern[str]:
    if not regex.strip():
        raise FilterRegexError(f"{what}: empty regex")
    try:
        return re.compile(expand(regex))
    except re.error as exc:
        raise FilterRegexError(f"{what}: {exc} in {regex!r}") from None
