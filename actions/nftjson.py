"""Small builders for libnftables' JSON expressions, shared by the table's parts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PortRange = int | tuple[int, int]
"""A destination port, or an inclusive range of them (fail2ban's `1000:2000`)."""


def match(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def one_or_set(values: Sequence[Any]) -> Any:
    """One value as itself, several as an anonymous set."""
    return values[0] if len(values) == 1 else {"set": list(values)}


def port_values(ports: Sequence[PortRange]) -> list[Any]:
    """Ports and ranges as nft JSON set members."""
    return [port if isinstance(port, int) else {"range": list(port)} for port in ports]
