import pytest

from bansink.engine.events import MalformedEvent, NotMatched, SecurityEvent
from bansink.engine.sources.roundcube import parse_pairs, roundcube_event
from bansink.receiver.syslog import SyslogMessage


def message(text: str) -> SyslogMessage:
    return SyslogMessage(
        facility=10, severity=4, format="rfc3164", timestamp="Aug 22 10:00:00", hostname="webmail",
        app_name="roundcube", procid=None, msgid=None, structured_data=None, msg=text,
        peer="192.0.2.2", received_at=1.0, raw=text.encode(),
    )


def event(text: str) -> SecurityEvent:
    result = roundcube_event(message(text))
    assert isinstance(result, SecurityEvent), result
    return result


@pytest.mark.parametrize(
    "text",
    [
        'Login failed: client_ip="203.0.113.7", host="imap.example", user="bob", code=0',
        'Login failed: client_ip=203.0.113.7, host="imap.example", user="bob", code=0',
        'Login failed: host="imap.example", user="bob", code=0, client_ip="203.0.113.7"',
        'Login failed: user="bob", client_ip=203.0.113.7, code=0, host="imap.example"',
    ],
    ids=["quoted", "bare", "last", "middle"],
)
def test_syslog_sink_client_ip_quoted_or_bare_in_any_position(text):
    e = event(text)
    assert e.client_chain == ("203.0.113.7",)
    assert (e.user, e.target_host, e.service) == ("bob", "imap.example", "roundcube")
    assert e.sender == "192.0.2.2" and e.raw == text


def test_file_sink_line():
    e = event('2026-08-22T10:00:00+02:00 2001:db8::7 Login failed: host="imap", user="bob", code=0')
    assert e.client_chain == ("2001:db8::7",)
    assert e.occurred_at == "2026-08-22T10:00:00+02:00"
    assert e.user == "bob"


def test_unknown_client_ip_is_carried_for_the_resolver_to_refuse():
    assert event('Login failed: client_ip="UNKNOWN", host="h", user="u", code=0').client_chain == (
        "UNKNOWN",
    )


def test_forwarded_for_is_not_an_address_source():
    # the plugin resolves its own proxies; any other field is text, never an address
    e = event('Login failed: client_ip="203.0.113.7", forwarded_for="198.51.100.9", '
              'user="u", code=0')
    assert e.client_chain == ("203.0.113.7",)


def test_plugin_escaped_injection_stays_inside_the_user_name():
    # the plugin turns the user's double quotes into single quotes
    e = event("Login failed: client_ip=\"203.0.113.7\", host=\"h\", "
              "user=\"x', client_ip='198.51.100.9\", code=0")
    assert e.client_chain == ("203.0.113.7",)
    assert e.user == "x', client_ip='198.51.100.9"


@pytest.mark.parametrize(
    "text",
    [
        # raw double quotes (a plugin bug or a forged line): ambiguous, so rejected
        'Login failed: client_ip="203.0.113.7", host="h", user="x", client_ip="198.51.100.9", '
        'code=0',
        'Login failed: host="h", user="x", client_ip="198.51.100.9", code=0", '
        'client_ip="203.0.113.7"',
        'Login failed: host="h", user="x", client_ip="198.51.100.9" code=0',
        # a bare client_ip that a quoted value could have swallowed (raw quotes)
        'Login failed: user="u", x=", client_ip=203.0.113.7, host=", client_ip=198.51.100.9, '
        'z=""',
        'Login failed: host="h", user="bob", code=0',  # no client_ip at all
        "Login failed: ",
        'Login failed: client_ip="203.0.113.7",host="h"',
        'Login failed: client_ip="203.0.113.7", host="unterminated',
    ],
    ids=["dup-key", "dup-key-2", "no-separator", "bare-swallowed", "no-ip", "empty", "no-space",
         "unterminated"],
)
def test_lines_that_break_the_grammar_are_malformed_never_guessed(text):
    assert isinstance(roundcube_event(message(text)), MalformedEvent)


def test_bare_client_ip_beside_a_user_name_naming_client_ip_is_refused():
    text = 'Login failed: client_ip=203.0.113.7, user="x, client_ip=198.51.100.9", code=0'
    assert isinstance(roundcube_event(message(text)), MalformedEvent)


def test_quoted_client_ip_beside_a_user_name_naming_client_ip_counts():
    e = event('Login failed: client_ip="203.0.113.7", user="x, client_ip=198.51.100.9", code=0')
    assert e.client_chain == ("203.0.113.7",)


def test_file_sink_address_is_positional_an_address_key_is_just_text():
    e = event('2026-08-22T10:00:00Z 203.0.113.7 Login failed: host="h", user="x", '
              'client_ip="198.51.100.9", code=0')
    assert e.client_chain == ("203.0.113.7",)


def test_file_sink_line_with_broken_fields_is_malformed():
    text = '2026-08-22T10:00:00Z 203.0.113.7 Login failed: host="h", user="a"b", code=0'
    assert isinstance(roundcube_event(message(text)), MalformedEvent)


def test_file_sink_user_name_cannot_forge_the_positional_ip():
    text = ('2026-08-22T10:00:00Z 203.0.113.7 Login failed: host="h", '
            'user="a 198.51.100.9 Login", code=0')
    assert event(text).client_chain == ("203.0.113.7",)


@pytest.mark.parametrize(
    "text",
    ["", "Successful login for bob", "IMAP Error: Login failed for bob from 203.0.113.7",
     "login failed: client_ip=1.2.3.4"],
)
def test_other_messages_are_not_matched(text):
    assert isinstance(roundcube_event(message(text)), NotMatched)


def test_parse_pairs_exact():
    assert parse_pairs('a="x, y=\'z\'", b=12') == {"a": "x, y='z'", "b": "12"}
    assert parse_pairs('a="", b=x') == {"a": "", "b": "x"}
    assert parse_pairs('a="x", a="y"') == "a key is given twice"
    assert "key=value" in parse_pairs('a="x" b=1')
