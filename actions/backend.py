"""What every enforcer offers: queue bans, then apply them in one commit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bansink.engine.jail import BanDecision


@dataclass(frozen=True, slots=True)
class CommitResult:
    bans: tuple[BanDecision, ...]
    error: str | None = None
    """None on success; otherwise what the backend said (none of `bans` took effect)."""

    @property
    def ok(self) -> bool:
        return self.error is None


class BanBackend(Protocol):
    def setup(self) -> None:
        """Create what enforcement needs; raise BackendUnavailable with advice if impossible."""

    def add(self, ban: BanDecision) -> None:
        """Queue a ban for the next commit (cheap, no I/O)."""

    def commit(self) -> CommitResult:
        """Apply every queued ban in one transaction (blocking: run it off the event loop)."""


class BackendUnavailable(Exception):
    """Enforcement cannot work here; the message says what to install or run."""
