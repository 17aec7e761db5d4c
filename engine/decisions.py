"""What the engine decides: a `Ban` of an address or a network, and where it came from.

A ban is built once per decision, not per message, so it is a frozen dataclass (the per-message
values in events.py and pipeline.py are NamedTuples for speed).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .addresses import IPAddress, IPNetwork

Target = IPAddress | IPNetwork
"""What a ban covers: one address, or a whole network (prefix bans)."""

MANUAL_JAIL = "manual"
"""Where an admin's ban without a jail is filed: its own sets, closing every port."""


class Origin(StrEnum):
    """Who decided a ban."""

    JAIL = "jail"
    """A jail counted `maxretry` failures within `findtime` (the only origin produced today)."""
    MANUAL = "manual"
    """An operator, through the admin side."""
    ESCALATION = "escalation"
    """A repeat offender's longer ban, or a prefix ban covering several offenders."""
    PEER = "peer"
    """Another bansink that shares its bans."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Ban:
    target: Target
    origin: Origin
    jail: str
    """The jail that decided it (for other origins, the jail it is filed under)."""
    failures: int
    """Failures inside the window that triggered the ban."""
    bantime: float
    """Seconds the ban lasts (math.inf: until lifted)."""
    decided_at: float
    """Monotonic time of the decision (the `now` it was made with)."""
