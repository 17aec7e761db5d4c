"""The roundcube-security_log plugin's events, from either of its unstructured sinks.

Syslog sink, the syslog message's text:
    Login failed: client_ip="203.0.113.7", host="imap.example", user="bob", code=0
File sink, one line (forwarded e.g. by rsyslog's imfile):
    2026-08-22T10:00:00+00:00 203.0.113.7 Login failed: host="imap.example", user="bob", code=0

The address comes from one place only: the `client_ip` field (syslog sink) or the line's fixed
prefix (file sink). `user` and `host` are typed by whoever attempts the login, so nothing in
them may move that address. The key=value list is parsed by its grammar: pairs separated by
", ", text values in double quotes, bare values for numbers. The plugin turns a double quote
inside a value into a single quote and rsyslog forges none (receiver.syslog decodes only control
characters), so a quoted value ends at the next double quote and a user name such as
`x", client_ip="198.51.100.9` stays inside the user name.

Should a raw double quote reach a value all the same (a plugin bug, a forged line), the parse
must still never credit the attacker's address:
- a quoted `client_ip` cannot be swallowed by a quoted value (it has quotes of its own), so it
  is always read as the key it is; a second `client_ip` key makes the line malformed;
- a bare `client_ip` could be, so a bare one is refused when any other value contains
  `client_ip=`;
- the file sink's address is positional: an address key among its fields is just text.

The file sink trusts that one line is one event: were a line feed to reach a user name, rsyslog's
imfile would read what follows it as a line of its own. The syslog sink has no such edge (the
message is one datagram or frame, and rsyslog escapes a line feed as `#012`): prefer it.
"""

from __future__ import annotations

import re

from bansink.receiver.syslog import SyslogMessage

from ..events import NOT_MATCHED, EventKind, MalformedEvent, NotMatched, SecurityEvent

SERVICE = "roundcube"
_SYSLOG_PREFIX = "Login failed: "
_FILE_MARK = " Login failed: "
_ADDRESS_KEY = "client_ip"
_QUOTED_KEY = f'{_ADDRESS_KEY}="'

_PAIR = r'([a-z_][a-z0-9_]{0,63})=(?:"([^"]*)"|([^",\s]+))'
_PAIRS = re.compile(_PAIR)
_PAIR_LIST = re.compile(f"{_PAIR}(?:, {_PAIR})*")
_FILE_LINE = re.compile(
    r"(\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d{1,9})?(?:Z|[+-]\d\d:?\d\d)?) (\S+) Login failed: "
)


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


def _syslog_sink(text: str) -> dict[str, str] | str:
    """The fields of a syslog-sink message (with its client_ip), or why it is malformed."""
    fields = parse_pairs(text)
    if isinstance(fields, str):
        return fields
    if _ADDRESS_KEY not in fields:
        return "no client_ip"
    # on validated text `client_ip="` can only be the key with a quoted value (no value
    # contains a double quote); a bare client_ip is the rare case worth the extra look
    if not (text.startswith(_QUOTED_KEY) or f", {_QUOTED_KEY}" in text) and any(
        f"{_ADDRESS_KEY}=" in value for key, value in fields.items() if key != _ADDRESS_KEY
    ):
        return "bare client_ip beside a value that names client_ip: ambiguous"
    return fields


def roundcube_event(message: SyslogMessage) -> SecurityEvent | NotMatched | MalformedEvent:
    text = message.msg.rstrip()
    if message.msg.startswith(_SYSLOG_PREFIX):
        fields = _syslog_sink(text[len(_SYSLOG_PREFIX) :])
        if isinstance(fields, str):
            return MalformedEvent(fields, text)
        client_ip, occurred_at = fields[_ADDRESS_KEY], message.timestamp
    elif _FILE_MARK in text:
        line = _FILE_LINE.match(text)
        if line is None:
            return MalformedEvent("file-sink line without '<timestamp> <client IP>' prefix", text)
        found = parse_pairs(text[line.end() :])
        if isinstance(found, str):
            return MalformedEvent(found, text)
        # the address is positional: address keys among the fields are text like any other
        fields, client_ip, occurred_at = found, line.group(2), line.group(1)
    else:
        return NOT_MATCHED
    return SecurityEvent(EventKind.LOGIN_FAILED, SERVICE, (client_ip,), fields.get("user"),
                         fields.get("host"), occurred_at, message.peer, text)
