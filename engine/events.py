"""The typed hand-off from sources to the jail."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple


class EventKind(StrEnum):
    LOGIN_FAILED = "login_failed"


class SecurityEvent(NamedTuple):
    """A NamedTuple for the same reason as SyslogMessage: immutable and cheap to build."""

    kind: EventKind
    service: str
    """The application that reported it, e.g. "roundcube"."""
    client_chain: tuple[str, ...]
    """Client addresses as the application logged them, nearest hop last: any forwarded-for
    addresses, then the client IP the application saw. Text, unvalidated ("UNKNOWN" happens)."""
    user: str | None
    target_host: str | None
    """The server the login was attempted against (Roundcube's `host`)."""
    occurred_at: str | None
    """The event's own timestamp as the sender wrote it, if any."""
    sender: str
    """Transport peer that delivered the message (an allowlisted syslog sender)."""
    raw: str
    """The original message text, kept for audit."""


@dataclass(frozen=True, slots=True)
class NotMatched:
    """The message is not one a source recognises (most syslog traffic)."""


@dataclass(frozen=True, slots=True)
class MalformedEvent:
    """The message claims to be a known event but breaks that event's grammar."""

    reason: str
    raw: str


NOT_MATCHED = NotMatched()
