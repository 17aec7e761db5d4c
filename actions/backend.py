"""What every enforcer offers: queue bans and deletions, then apply them in one commit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bansink.engine.decisions import Ban, Target

from .layout import Layout


@dataclass(frozen=True, slots=True)
class CommitResult:
    bans: tuple[Ban, ...]
    """On success, the bans applied; on error, those that did not take effect."""
    error: str | None = None
    """None on success; otherwise what the backend said (none of `bans` took effect)."""
    rebuilt: bool = False
    """The backend found its table (or a set) gone and re-created it before retrying: every
    ban from earlier commits was lost and must be added again by the caller."""
    deletes: tuple[Target, ...] = ()
    """Like `bans`, for the queued deletions: applied on success, not applied on error."""
    refused: tuple[Target, ...] = ()
    """Targets among the failed ones that this backend can never hold (e.g. a network where it
    has only address sets): trying them again is pointless. `error` names them."""

    @property
    def ok(self) -> bool:
        return self.error is None


class BanBackend(Protocol):
    def setup(self) -> None:
        """Create what enforcement needs; raise BackendUnavailable with advice if impossible."""

    def configure(self, layout: Layout) -> None:
        """Take another layout (jails and their ports, rate limits) for the next setup()."""

    def add(self, ban: Ban) -> None:
        """Queue a ban for the next commit (cheap, no I/O)."""

    def delete(self, target: Target, jail: str | None = None) -> None:
        """Queue the end of `jail`'s ban of `target` (None: every jail's) for the next commit
        (cheap, no I/O). Deleting a target that is not banned is not an error. Of an add and a
        delete of the same target queued for one commit, the later one wins."""

    def commit(self) -> CommitResult:
        """Apply every queued ban and deletion in one transaction (blocking: a few elements take
        well under a millisecond and run on the event loop; larger batches on a thread)."""

    def survey(self) -> None:
        """Before a start's restore: learn which elements are in place already, so that the
        restored bans are not all written again (blocking, on the commit thread, before the
        restore's commits); remove_strays() ends what it learnt."""

    def remove_strays(self, keep: set[tuple[str, Target]]) -> list[tuple[str, Target]]:
        """Delete every element of bansink's ban sets that is not a running ban (`keep`:
        (jail, target) pairs); return (set, target) of what was removed (blocking: a full
        listing, for the reconciliation at start)."""

    def verify(self) -> str | None:
        """Cheaply check that enforcement is still in place (blocking, on the commit thread).
        None when it is; otherwise rebuild it and return one line saying what was missing:
        earlier bans may be gone, so the caller adds back those still running."""


class BackendUnavailable(Exception):
    """Enforcement cannot work here; the message says what to install or run."""
