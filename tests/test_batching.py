import asyncio
import threading

from bansink.batching import TickBatcher


def test_small_batches_run_on_the_loop_large_ones_on_the_thread_even_while_it_is_busy():
    ran: list[tuple[int, bool]] = []
    loop_thread: list[int] = []

    def work(batch: list[int]) -> int:
        ran.append((len(batch), threading.get_ident() == loop_thread[0]))
        return len(batch)

    async def scenario():
        loop_thread.append(threading.get_ident())
        results: list = []
        batcher = TickBatcher(0.001, work, lambda b, r: results.append(r), "t", inline_up_to=2)
        batcher.put(1)
        while not results:
            await asyncio.sleep(0.001)
        for i in range(5):
            batcher.put(i)
        while len(results) < 2:
            await asyncio.sleep(0.001)
        gate = threading.Event()
        blocking = asyncio.ensure_future(batcher.run_blocking(gate.wait))
        batcher.put(9)  # small: on the loop, not behind the thread's other work
        while len(results) < 3:
            await asyncio.sleep(0.001)
        gate.set()
        await blocking
        await batcher.close()
        return results

    assert asyncio.run(scenario()) == [1, 5, 1]
    assert ran == [(1, True), (5, False), (1, True)]


def test_a_batch_nobody_waits_for_is_held_until_patience_or_size_an_urgent_item_ends_the_wait():
    async def scenario():
        loop = asyncio.get_running_loop()
        ran: list[tuple[list[str], float]] = []
        batcher = TickBatcher(0.002, lambda batch: batch, lambda b, r: ran.append((r, loop.time())),
                              "t", patience=0.3, patient_up_to=3)
        started = loop.time()
        batcher.put("tcp 1", urgent=False)
        # held past many ticks: nothing has run 0.1 s later
        while loop.time() - started < 0.1:
            await asyncio.sleep(0.002)
        held = list(ran)
        batcher.put("relp", urgent=True)  # ends the wait at the next tick, with what was held
        while not ran:
            await asyncio.sleep(0.001)
        urgent_after = ran[0][1] - started
        for i in range(3):  # patient_up_to items: written without waiting for patience
            batcher.put(f"tcp {i + 2}", urgent=False)
        sized_at = loop.time()
        while len(ran) < 2:
            await asyncio.sleep(0.001)
        sized_after = ran[1][1] - sized_at
        batcher.put("tcp 5", urgent=False)  # alone: written once patience has passed
        alone_at = loop.time()
        while len(ran) < 3:
            await asyncio.sleep(0.001)
        alone_after = ran[2][1] - alone_at
        await batcher.close()
        return held, [r for r, _ in ran], urgent_after, sized_after, alone_after

    held, batches, urgent_after, sized_after, alone_after = asyncio.run(scenario())
    assert held == []
    assert batches == [["tcp 1", "relp"], ["tcp 2", "tcp 3", "tcp 4"], ["tcp 5"]]
    assert urgent_after < 0.25  # not the 0.3 s patience
    assert sized_after < 0.25
    assert 0.28 <= alone_after < 1.0
