"""Bar charts as SVG geometry for the templates: no JavaScript, no inline style (the page's
Content-Security-Policy allows neither); the stylesheet colours them by class."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from .data import Series

WIDTH, HEIGHT = 600, 160
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 10, 22


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    """The bucket and its count (the bar's tooltip, and what a screen reader says)."""


@dataclass(frozen=True, slots=True)
class Tick:
    x: float
    y: float
    text: str


@dataclass(frozen=True, slots=True)
class Chart:
    title: str
    width: int
    height: int
    bars: list[Bar]
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    baseline: float
    total: int
    peak: int


def _nice_top(peak: int) -> int:
    """The axis's top: 1, 2 or 5 times a power of ten, at least the peak."""
    top = 1
    while True:
        for m in (1, 2, 5):
            if top * m >= peak:
                return top * m
        top *= 10


def bar_chart(title: str, series: Series, *, tick_every: int, time_format: str) -> Chart:
    """One bar per bucket; x labels every `tick_every` buckets (UTC, `time_format`)."""
    counts = series.counts
    peak = max(counts, default=0)
    top = _nice_top(max(peak, 1))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / max(len(counts), 1)
    bars = []
    for i, n in enumerate(counts):
        start = series.start + i * series.step
        h = plot_h * n / top
        when = datetime.fromtimestamp(start, UTC).strftime("%H:%M")
        bars.append(Bar(round(LEFT + i * step + step * 0.1, 2), round(TOP + plot_h - h, 2),
                        round(step * 0.8, 2), round(h, 2), f"{when} UTC: {n}"))
    x_ticks = [Tick(round(LEFT + i * step, 2), HEIGHT - 6,
                    datetime.fromtimestamp(series.start + i * series.step, UTC)
                    .strftime(time_format))
               for i in range(0, len(counts), tick_every)]
    y_ticks = [Tick(LEFT - 6, round(TOP + plot_h - plot_h * f, 2), f"{round(top * f):,}")
               for f in (0.0, 0.5, 1.0)]
    return Chart(title, WIDTH, HEIGHT, bars, x_ticks, y_ticks, TOP + plot_h, sum(counts), peak)
