"""A filter as a source: the line its regexes see, rebuilt from the syslog message."""

from __future__ import annotations

import pytest

from bansink.engine.events import NOT_MATCHED
from bansink.engine.sources import builtin_filter_sources
from bansink.engine.sources.filtered import syslog_line
from bansink.receiver.syslog import SyslogMessage


def message(host: str | None, tag: str | None, pid: str | None, msg: str) -> SyslogMessage:
    return SyslogMessage(4, 6, "rfc5424", None, host, tag, pid, None, None, msg, "192.0.2.200",
                         0.0, b"")


@pytest.mark.parametrize("host, tag, pid, line", [
    ("mx", "dovecot", None, " mx dovecot: text"),
    ("mx", "dovecot", "12", " mx dovecot[12]: text"),
    (None, "dovecot", "12", " dovecot[12]: text"),
    ("", "dovecot", "", " dovecot: text"),
    ("mx", None, "12", " mx text"),  # a process id without a tag is not shown
    ("mx", "", None, " mx text"),
    (None, None, None, " text"),
])
def test_the_file_line_is_host_tag_pid_and_message_each_only_when_present(host, tag, pid,
                                                                         line):
    assert syslog_line(message(host, tag, pid, "text")) == line


def test_a_message_form_source_reads_the_message_text_and_no_date():
    kerio = builtin_filter_sources()["kerio"]
    line = "[17/Jun/2011 17:00:45] Relay attempt from IP address 203.0.113.5, mail rejected"
    event = kerio(message("mx", "security", None, line))
    assert event is not NOT_MATCHED and event.client_chain == ("203.0.113.5",)
    # a date that is no date (31 February) is cut out all the same and never read
    odd = line.replace("17/Jun", "31/Feb")
    assert kerio(message("mx", "security", None, odd)) == event._replace(raw=odd)
