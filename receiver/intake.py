"""The hand-off from the listeners to the daemon: what they deliver and what they drop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .syslog import MalformedSyslog, SyslogMessage


@dataclass(frozen=True, slots=True)
class Dropped:
    """Input refused or discarded before parsing: counted and logged, never fatal."""

    reason: str
    """sender_not_allowed, too_many_connections, too_many_connections_from_sender, oversized,
    empty octet-counted frame, truncated at EOF, idle_timeout, ..."""
    peer: str
    transport: str
    size: int = 0
    detail: str = ""
    """Specifics for the log line (counted by `reason` only)."""


class Intake(Protocol):
    def on_message(self, message: SyslogMessage | MalformedSyslog, transport: str) -> None: ...

    def on_reliable_message(self, message: SyslogMessage | MalformedSyslog, transport: str,
                            done: Callable[[], None], *, session: int) -> None:
        """Like on_message, for a sender waiting for an acknowledgement: call `done` once the
        message is safe (durable, or needs no keeping), never before. `session` is the RELP
        session (connection) it came in, as given to relp_session_started."""

    def relp_session_started(self, session: int, peer: str) -> None:
        """A RELP session's `open` was accepted; `session` is unique per connection."""

    def relp_session_ended(self, session: int, peer: str, clean: bool) -> None:
        """Once, when a started session's connection is gone. `clean` only if the client sent
        `close` and every reply was written."""

    def on_drop(self, dropped: Dropped) -> None: ...


Admit = Callable[[str], str | None]
"""Sender check: the peer's address text -> its normalised form if allowed, else None."""
