"""A backend that enforces nothing: bansink decides and logs, for trying it without root."""

from __future__ import annotations

from bansink.engine.decisions import Ban, Target

from .backend import CommitResult


class DryRunBackend:
    def __init__(self) -> None:
        self._pending: dict[Target, Ban | None] = {}
        """target -> its ban, or None for a deletion; the latest request for a target wins"""

    def setup(self) -> None:
        pass

    def add(self, ban: Ban) -> None:
        self._pending.pop(ban.target, None)  # keep the order of the requests
        self._pending[ban.target] = ban

    def delete(self, target: Target) -> None:
        self._pending.pop(target, None)
        self._pending[target] = None

    def commit(self) -> CommitResult:
        pending, self._pending = self._pending, {}
        bans = tuple(ban for ban in pending.values() if ban is not None)
        deletes = tuple(target for target, ban in pending.items() if ban is None)
        return CommitResult(bans, deletes=deletes)

    def verify(self) -> str | None:
        return None  # nothing enforced, nothing to lose
