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
    rebuilt: bool = False
    """The backend found its table (or a set) gone and re-created it before retrying: every
    ban from earlier commits was lost and must be added again by the caller."""

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

    def verify(self) -> str | None:
        """Cheaply check that enforcement is still in place (blocking, on the commit thread).
        None when it is; otherwise rebuild it and return one line saying what was missing:
        earlier bans may be gone, so the caller adds back those still running."""


class BackendUnavailable(Exception):
    """Enforcement cannot work here; the message says what to install or run."""
