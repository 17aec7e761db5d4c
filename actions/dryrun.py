"""A backend that enforces nothing: bansink decides and logs, for trying it without root."""

from __future__ import annotations

from bansink.engine.jail import BanDecision

from .backend import CommitResult


class DryRunBackend:
    def __init__(self) -> None:
        self._pending: list[BanDecision] = []

    def setup(self) -> None:
        pass

    def add(self, ban: BanDecision) -> None:
        self._pending.append(ban)

    def commit(self) -> CommitResult:
        bans, self._pending = tuple(self._pending), []
        return CommitResult(bans)

    def verify(self) -> str | None:
        return None  # nothing enforced, nothing to lose
