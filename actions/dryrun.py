"""A backend that enforces nothing: bansink decides and logs, for trying it without root."""

from __future__ import annotations

from bansink.engine.decisions import Ban, Target

from .backend import CommitResult
from .layout import Layout


class DryRunBackend:
    def __init__(self) -> None:
        self._pending: dict[tuple[str | None, Target], Ban | None] = {}
        """(jail, target) -> its ban, or None for a deletion; the latest request wins"""
        self.layout = Layout()

    def setup(self) -> None:
        pass

    def configure(self, layout: Layout) -> None:
        self.layout = layout

    def add(self, ban: Ban) -> None:
        for key in ((ban.jail, ban.target), (None, ban.target)):
            self._pending.pop(key, None)  # keep the order of the requests
        self._pending[(ban.jail, ban.target)] = ban

    def delete(self, target: Target, jail: str | None = None) -> None:
        """A deletion for every jail (None) replaces every request queued for the target."""
        for key in [key for key in self._pending if key[1] == target
                    and (jail is None or key[0] in (jail, None))]:
            del self._pending[key]
        self._pending[(jail, target)] = None

    def commit(self) -> CommitResult:
        pending, self._pending = self._pending, {}
        bans = tuple(ban for ban in pending.values() if ban is not None)
        deletes = tuple(target for (_, target), ban in pending.items() if ban is None)
        return CommitResult(bans, deletes=deletes)

    def survey(self) -> None:
        pass  # nothing enforced, nothing in place

    def remove_strays(self, keep: set[tuple[str, Target]]) -> list[tuple[str, Target]]:
        return []  # nothing enforced, nothing stray

    def verify(self) -> str | None:
        return None  # nothing enforced, nothing to lose
