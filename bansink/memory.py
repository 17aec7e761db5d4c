"""Freed C memory back to the system.

libnftables and SQLite free what a large transaction, listing or batch of rows took, but
glibc's malloc keeps freed pages in the arena of the thread that used them (each of bansink's
threads has its own), so the daemon's RSS only grows: with 100,000 bans and 1,000,000 tracked
addresses, 45 MiB more than with the pages handed back every second (measured,
bench/bans.py). malloc_trim hands them back; it walks the heap, so the journal's writer thread
runs it with its housekeeping, at most every TRIM_INTERVAL.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

TRIM_INTERVAL = 10.0
"""Seconds between two trims (JournalWriter.housekeeping)."""


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return None
    return trim


def release_memory() -> bool:
    """Give the C heap's free pages back to the system (glibc's malloc_trim); blocking, with
    the GIL released. False where there is no glibc."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
