"""Real client IP resolution through trusted proxies (nginx `real_ip_recursive` semantics)."""

from __future__ import annotations

from collections.abc import Sequence

from .addresses import IPAddress, NetworkSet, parse_address


def resolve_client(chain: Sequence[str], trusted: NetworkSet) -> IPAddress | None:
    """Walk the chain from the right (nearest hop) and return the first untrusted address.

    Returns None when the chain is empty, when a hop that must be read is not an IP address
    (e.g. "UNKNOWN", or garbage an attacker put in a forwarded header), or when every hop is a
    trusted proxy: none of these may lead to a ban.
    """
    for text in reversed(chain):
        ip = parse_address(text.strip())
        if ip is None:
            return None
        if ip not in trusted:
            return ip
    return None
