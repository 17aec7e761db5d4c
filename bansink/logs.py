"""structlog set-up: JSON lines for machines, readable console output on a terminal.

Standard-library records (asyncio's own warnings and callback exceptions) go through the same
renderer, so the output stays one format.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter

import structlog


def configure_logging(fmt: str = "auto", level: str = "info") -> None:
    json_lines = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer()
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    exc: structlog.typing.Processor = (
        structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False))
        if json_lines else structlog.dev.set_exc_info
    )
    structlog.configure(
        processors=[*shared, exc, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.WriteLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, exc],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)


class Throttle:
    """At most one log line per key per `interval` seconds; counts what it held back."""

    def __init__(self, interval: float = 10.0, max_keys: int = 10_000) -> None:
        self.interval, self.max_keys = interval, max_keys
        self._last: dict[tuple[str, ...], float] = {}
        self._held: Counter[tuple[str, ...]] = Counter()

    def allow(self, key: tuple[str, ...], now: float) -> int | None:
        """None to stay quiet; else how many were held back since the last line."""
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] += 1
            return None
        if len(self._last) >= self.max_keys:
            self._last.clear()
            self._held.clear()
        self._last[key] = now
        return self._held.pop(key, 0)
