"""Collect items for one short tick, then hand the batch to blocking work on its own thread."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S")


class TickBatcher(Generic[T, R]):
    """`put` is cheap and synchronous. `interval` seconds after the first item of a batch,
    `work(batch)` runs on a dedicated thread (one batch at a time, in order), then
    `done(batch, result)` runs on the event loop; an exception from `work` is passed as the
    result. Items that arrive while a batch is being worked on form the next batch.

    A batch of at most `inline_up_to` items is worked on the event loop itself: work that
    takes well under a millisecond (a few nft elements) would otherwise wait for the GIL on its
    thread, up to tens of milliseconds while the loop is busy reading (measured). Such work must
    guard what it shares with the thread's (libnftables: one lock, taken with the GIL released,
    so the loop waits at most for the thread's sub-millisecond check; sending small batches to
    the thread whenever it was busy put p99 back above 50 ms in a burst, measured).

    `patience` (more than `interval`): a batch in which nothing is urgent (`put(item,
    urgent=False)`: nobody waits for it) is held up to that long, or until `patient_up_to`
    items, before its work runs. Each batch the thread works on takes the GIL back several
    times, and each time the event loop waits for it: fewer, larger batches of work nobody
    waits for leave the loop more of its time (measured on the journal, see store/writer.py).
    An urgent item put meanwhile ends the wait at the next tick."""

    def __init__(self, interval: float, work: Callable[[list[T]], R],
                 done: Callable[[list[T], R | Exception], None], name: str,
                 *, inline_up_to: int = 0, patience: float = 0.0,
                 patient_up_to: int = 10_000) -> None:
        self.interval, self.work, self.done = interval, work, done
        self.inline_up_to = inline_up_to
        self.patience, self.patient_up_to = patience, patient_up_to
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"bansink-{name}")
        self._items: list[T] = []
        self._urgent = False
        self._task: asyncio.Task[None] | None = None

    def put(self, item: T, urgent: bool = True) -> None:
        self._items.append(item)
        self._urgent = self._urgent or urgent
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def run_blocking(self, fn: Callable[[], S]) -> S:
        """Run other blocking work on the same thread (e.g. setup), in order with the batches."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._items:
                await asyncio.sleep(self.interval)  # gather what arrives in the same tick
                if not self._urgent and self.patience > self.interval:
                    until = loop.time() + self.patience - self.interval
                    while (not self._urgent and len(self._items) < self.patient_up_to
                           and loop.time() < until):
                        await asyncio.sleep(self.interval)
                batch, self._items, self._urgent = self._items, [], False
                try:
                    if len(batch) <= self.inline_up_to:
                        result: R | Exception = self.work(batch)
                    else:
                        result = await loop.run_in_executor(self.executor, self.work, batch)
                except Exception as exc:
                    result = exc
                self.done(batch, result)
        finally:
            self._task = None

    async def close(self) -> None:
        self._urgent = True  # what is held goes now
        if self._task is not None:
            await self._task
        self.executor.shutdown(wait=True)
