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
