"""File descriptors: the stream caps must fit under RLIMIT_NOFILE, or accept() fails.

When the process runs out of descriptors, asyncio's accept() logs "socket.accept() out of system
resource" and stops accepting for a second (uvloop may close the listening socket for good), on
every listener alike: senders then fail with little said. Connections that are refused (not a
sender, over a cap) are reset at accept and hold no descriptor, so what the caps allow plus a
margin is what the daemon can ever need: check it once, at start.
"""

from __future__ import annotations

import os
import resource
import sys
from collections.abc import Sequence

from .tcp import StreamListener

# the listening sockets are counted apart; this covers stdio, the journal (SQLite, WAL and
# shared-memory files), the nftables netlink socket, the event loop's own descriptors, UDP
# sockets, and a connection being accepted and refused at that moment
MARGIN = 64


def descriptors_needed(listeners: Sequence[object], max_connections: int) -> int:
    """Descriptors the daemon may hold at once: every stream listener full, plus the rest."""
    return _streams(listeners) * max_connections + len(listeners) + MARGIN


def descriptor_budget(listeners: Sequence[object], max_connections: int) -> str | None:
    """None when the caps fit under RLIMIT_NOFILE, raising the soft limit (to the hard one) if
    that is needed and enough; otherwise a one-line error to refuse to start with."""
    needed = descriptors_needed(listeners, max_connections)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or needed <= soft:
        return None
    if hard == resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        return None
    if needed <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return None
    return (f"receiver.max_connections: {max_connections} connections on each of "
            f"{_streams(listeners)} stream listeners need about {needed} file descriptors, but "
            f"RLIMIT_NOFILE allows {hard} (raise LimitNOFILE= in the systemd unit, or lower "
            f"receiver.max_connections)")


def _streams(listeners: Sequence[object]) -> int:
    return sum(1 for listener in listeners if isinstance(listener, StreamListener))


def descriptors_in_use() -> tuple[int, int]:
    """(descriptors open now, the soft RLIMIT_NOFILE). When they meet, accept() fails: asyncio
    logs each failure, uvloop (libuv) accepts and closes such connections without a word, so
    the daemon checks this itself."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = sys.maxsize if soft == resource.RLIM_INFINITY else soft
    try:
        return len(os.listdir("/proc/self/fd")) - 1, limit  # less the one listdir holds
    except OSError:  # listing needs a descriptor too: none left
        return limit, limit
