import pytest

from bansink.receiver.syslog import MalformedSyslog, SyslogMessage, parse_syslog


def parse(raw: bytes) -> SyslogMessage:
    message = parse_syslog(raw, peer="192.0.2.2", received_at=1.0)
    assert isinstance(message, SyslogMessage), message
    return message


LOGIN = 'Login failed: client_ip=203.0.113.7, user="bob"'


@pytest.mark.parametrize(
    "raw",
    [
        # RSYSLOG_TraditionalForwardFormat (omfwd's default), as captured
        b'<38>Aug 22 10:00:00 webmail roundcube: ' + LOGIN.encode(),
        # RSYSLOG_ForwardFormat (omrelp's default)
        b'<38>2026-08-22T10:00:00+00:00 webmail roundcube: ' + LOGIN.encode(),
        # RSYSLOG_SyslogProtocol23Format: two spaces after "- - -" for RFC 3164 input
        b'<38>1 2026-08-22T10:00:00+00:00 webmail roundcube - - -  ' + LOGIN.encode() + b"\n",
        # util-linux logger, RFC 5424 default with structured data
        b'<38>1 2026-08-22T10:00:00.123456+02:00 webmail roundcube 42 - '
        b'[timeQuality tzKnown="1" isSynced="1" syncAccuracy="12345"] ' + LOGIN.encode(),
        # logger --rfc3164, single-digit day padded with a space
        b'<38>Aug  2 10:00:00 webmail roundcube[42]: ' + LOGIN.encode(),
    ],
    ids=["traditional", "forward", "protocol23", "logger-5424", "logger-3164"],
)
def test_formats_rsyslog_and_logger_send(raw):
    m = parse(raw)
    assert (m.facility, m.severity) == (4, 6)
    assert m.hostname == "webmail"
    assert m.app_name == "roundcube"
    assert m.msg == LOGIN
    assert m.peer == "192.0.2.2"


def test_rfc5424_fields():
    m = parse(b'<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 '
              b'[exampleSDID@32473 iut="3" eventID="1011"] \xef\xbb\xbfAn application event')
    assert m.format == "rfc5424"
    assert (m.facility, m.severity) == (20, 5)
    assert m.timestamp == "2003-10-11T22:14:15.003Z"
    assert m.procid is None and m.msgid == "ID47"
    assert m.structured_data == '[exampleSDID@32473 iut="3" eventID="1011"]'
    assert m.msg == "An application event"


def test_rfc5424_sd_with_escaped_bracket_and_no_msg():
    m = parse(b'<13>1 - host app - - [a@1 x="a\\]b"]')
    assert m.structured_data == '[a@1 x="a\\]b"]' and m.msg == "" and m.timestamp is None


def test_rsyslog_control_character_escapes_are_undone():
    m = parse(b"<38>Aug 22 10:00:01 webmail roundcube[42] multi#012line#011tab")
    assert m.procid == "42"
    assert m.msg == "multi\nline\ttab"
    assert parse(b"<38>Aug 22 10:00:01 h t: #000#037#177").msg == "\x00\x1f\x7f"


@pytest.mark.parametrize("escape", [b"#040", b"#042", b"#047", b"#134", b"#176", b"#200", b"#377"])
def test_escapes_of_printable_and_8bit_characters_stay_text(escape):
    # rsyslog escapes control characters only: `#042` is what the sender (a user name) wrote
    assert parse(b"<13>Aug 22 10:00:00 h t: a" + escape + b"b").msg == f"a{escape.decode()}b"


def test_tag_without_hostname():
    m = parse(b"<13>Nov 21 10:00:00 roundcube: hello")
    assert m.hostname is None and m.app_name == "roundcube" and m.msg == "hello"


def test_ipv6_hostname_in_rfc3164():
    m = parse(b"<13>Nov 21 10:00:00 2001:db8::2 roundcube: hello")
    assert m.hostname == "2001:db8::2" and m.app_name == "roundcube"


def test_invalid_utf8_is_replaced_not_fatal():
    m = parse(b"<13>Nov 21 10:00:00 host app: \xff\xfe")
    assert m.msg == "\ufffd\ufffd"


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"", "no <PRI>"),
        (b"hello", "no <PRI>"),
        (b"<999>Nov 21 10:00:00 host app: x", "out of range"),
        (b"<13>1 not-a-time host app - - - x", "RFC 5424"),
        (b"<13>yesterday host app: x", "RFC 3164"),
    ],
)
def test_malformed_is_a_value_with_reason(raw, reason):
    result = parse_syslog(raw, peer="192.0.2.2", received_at=1.0)
    assert isinstance(result, MalformedSyslog)
    assert reason in result.reason
    assert result.raw == raw[:200]
