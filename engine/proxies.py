"""Real client IP resolution through trusted proxies (nginx `real_ip_recursive` semantics)."""

from __future__ import annotations

from collections.abc import Sequence

from .addresses import IPAddress, NetworkSet, parse_address


def resolve_client(chain: Sequence[str], trusted: NetworkSet) -> IPAddress | None:
    """Walk the chain from the right (nearest hop) and return the first untrusted address.

    When every hop is trusted, the left-most one is returned (as nginx does), so that the caller
    sees a trusted proxy and refuses to ban it. Returns None when the chain is empty or when a
    hop that must be read is not an IP address ("UNKNOWN", or garbage an attacker put in a
    forwarded header): neither may lead to a ban.
    """
    ip = None
    for text in reversed(chain):
        ip = parse_address(text.strip())
        if ip is None:
            return None
        if ip not in trusted:
            return ip
    return ip
