"""The roundcube-security_log plugin's events, from either of its unstructured sinks.

Syslog sink, the syslog message's text:
    Login failed: client_ip="203.0.113.7", host="imap.example", user="bob", code=0
File sink, one line (forwarded e.g. by rsyslog's imfile):
    2026-08-22T10:00:00+00:00 203.0.113.7 Login failed: host="imap.example", user="bob", code=0

The key=value list is parsed strictly by its grammar: pairs separated by ", ", text values in
double quotes (the plugin turns a double quote inside a value into a single quote, so a quoted
value ends at the next double quote), bare values for numbers. A line that breaks the grammar,
or names a key twice, is malformed: it is never guessed at, so a user name such as
`x", client_ip="198.51.100.9` cannot move the ban to an address of the attacker's choosing.
"""

from __future__ import annotations

import re

from bansink.receiver.syslog import SyslogMessage

from .events import NOT_MATCHED, EventKind, MalformedEvent, NotMatched, SecurityEvent

SERVICE = "roundcube"
_SYSLOG_PREFIX = "Login failed: "
_FILE_MARK = " Login failed: "

_PAIR = r'([a-z_][a-z0-9_]{0,63})=(?:"([^"]*)"|([^",\s]+))'
_PAIRS = re.compile(_PAIR)
_PAIR_LIST = re.compile(f"{_PAIR}(?:, {_PAIR})*")
_FILE_LINE = re.compile(
    r"(\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d{1,9})?(?:Z|[+-]\d\d:?\d\d)?) (\S+) Login failed: "
)
# keys that name an address: they may appear only where the sink's format puts the address
_ADDRESS_KEYS = ("client_ip", "forwarded_for")


def parse_pairs(text: str) -> dict[str, str] | str:
    """Parse `key="text", key=123, …` exactly; return the pairs, or the reason it is malformed.

    The whole text must match the grammar first; only then are the pairs read out, left to
    right, which on validated text splits exactly where the grammar does (a quoted value cannot
    contain a double quote, and a key cannot start at ", ").
    """
    if _PAIR_LIST.fullmatch(text) is None:
        return "data fields do not follow key=value, key=\"text\", ..."
    found = _PAIRS.findall(text)
    pairs = {key: quoted or bare for key, quoted, bare in found}
    if len(pairs) != len(found):
        return "a key is given twice"
    return pairs


def _forwarded(pairs: dict[str, str]) -> tuple[str, ...]:
    value = pairs.get("forwarded_for")
    if not value:
        return ()
    return tuple(hop.strip() for hop in value.split(","))


def roundcube_event(message: SyslogMessage) -> SecurityEvent | NotMatched | MalformedEvent:
    text = message.msg.rstrip()
    if message.msg.startswith(_SYSLOG_PREFIX):
        pairs = parse_pairs(text[len(_SYSLOG_PREFIX) :])
        if isinstance(pairs, str):
            return MalformedEvent(pairs, text)
        client_ip = pairs.get("client_ip")
        if client_ip is None:
            return MalformedEvent("no client_ip", text)
        chain = (*_forwarded(pairs), client_ip)
        occurred_at = message.timestamp
    elif _FILE_MARK in text:
        line = _FILE_LINE.match(text)
        if line is None:
            return MalformedEvent("file-sink line without '<timestamp> <client IP>' prefix", text)
        pairs = parse_pairs(text[line.end() :])
        if isinstance(pairs, str):
            return MalformedEvent(pairs, text)
        if any(key in pairs for key in _ADDRESS_KEYS):
            return MalformedEvent("address key in a file-sink line", text)
        chain = (line.group(2),)
        occurred_at = line.group(1)
    else:
        return NOT_MATCHED
    return SecurityEvent(EventKind.LOGIN_FAILED, SERVICE, chain, pairs.get("user"),
                         pairs.get("host"), occurred_at, message.peer, text)
