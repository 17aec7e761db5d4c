"""fail2ban's port lists, as its jails write them (`port = imap,smtp,imaps,smtps`,
`port = 1000:2000`): numbers, service names and ranges, read into the nft set members the drop
rules use.

Service names are looked up in the system's services database (/etc/services, Debian's netbase)
like nft and fail2ban's iptables actions do; the mail and web names below also work on a system
without that file. A name that is in neither is an error naming it.
"""

from __future__ import annotations

import socket
from typing import Any

from bansink.actions.nftjson import PortRange

KNOWN_SERVICES = {
    "smtp": 25, "http": 80, "www": 80, "pop3": 110, "imap": 143, "imap2": 143, "https": 443,
    "submissions": 465, "smtps": 465, "ssmtp": 465, "submission": 587, "imaps": 993,
    "pop3s": 995, "sieve": 4190, "managesieve": 4190,
}


def service_port(name: str) -> int:
    """The port of a service name (tcp first, then udp)."""
    for protocol in ("tcp", "udp"):
        try:
            return socket.getservbyname(name, protocol)
        except OSError:
            continue
    if name in KNOWN_SERVICES:
        return KNOWN_SERVICES[name]
    raise ValueError(f"unknown service name {name!r} (not in /etc/services): write its number")


def _port(item: str) -> int:
    item = item.strip()
    if item.isdigit():
        port = int(item)
    elif item and all(c.isalnum() or c in "-_." for c in item) and not item[0].isdigit():
        port = service_port(item.lower())
    else:
        raise ValueError(f"{item!r} is not a port number, range or service name")
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is not 1-65535")
    return port


def parse_ports(value: Any) -> tuple[PortRange, ...]:
    """`"imap,smtp,imaps"`, `[25, "submission", "1000:2000"]` or one number: the ports, sorted
    and each once, a range as (first, last). ValueError saying which item is wrong."""
    if isinstance(value, bool):
        raise ValueError("expected port numbers, service names or ranges")
    items: list[Any]
    if isinstance(value, str):
        items = [item for item in value.split(",") if item.strip()]
    elif isinstance(value, int):
        items = [value]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ValueError("expected port numbers, service names or ranges")
    spans: list[tuple[int, int]] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | str):
            raise ValueError(f"{item!r} is not a port number, range or service name")
        if isinstance(item, int):
            if not 0 < item < 65536:
                raise ValueError(f"port {item} is not 1-65535")
            spans.append((item, item))
            continue
        separator = ":" if ":" in item else ("-" if item.strip()[:1].isdigit() and "-" in item
                                             else None)
        if separator is None:
            port = _port(item)
            spans.append((port, port))
            continue
        first, _, last = item.partition(separator)
        low, high = _port(first), _port(last)
        if low > high:
            raise ValueError(f"range {item!r} runs backwards")
        spans.append((low, high))
    return tuple(low if low == high else (low, high) for low, high in _merged(spans))


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, overlapping spans joined: nft refuses overlapping members of one set."""
    merged: list[tuple[int, int]] = []
    for low, high in sorted(spans):
        if merged and low <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return merged
