"""The Stream between the engine thread and its consumers: order, the asyncio side, and the coalescing of
fast output into fewer lists (what keeps the server's event loop from waking once per token).

A plain thread plays the engine thread; no llama.cpp is needed.
"""

from __future__ import annotations

import asyncio
import threading
import time

from lcpp_zh.runtime.stream import Finished, Stream, TextDelta


def _finished(n: int = 0) -> Finished:
    return Finished("stop", 3, n, 0, 0.0, 0.0)


def _later(delay_s: float, *actions) -> threading.Thread:
    """Run `actions` on another thread after `delay_s`, as the engine thread would."""

    def run() -> None:
        time.sleep(delay_s)
        for action in actions:
            action()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_sync_iteration_keeps_order_and_ends_at_finished():
    stream = Stream()
    for i in range(3):
        stream.put(TextDelta(f"t{i} ", 1))
    stream.put(_finished(3))
    stream.put(TextDelta("after the end", 1))  # ignored: a stream has exactly one end
    text, end = stream.text()
    assert text == "t0 t1 t2 " and end.completion_tokens == 3


def test_batches_wake_for_the_first_event_and_gather_those_made_during_a_rest():
    stream = Stream()
    got_first = threading.Event()

    async def consume() -> list[list]:
        got = []
        async for events in stream.batches(min_interval_s=5.0):
            got.append(events)
            got_first.set()
        return got

    def produce() -> None:
        stream.put(TextDelta("a", 1))  # the consumer waits with nothing to read: this wakes it at once
        got_first.wait(10)
        for text in "bcd":  # made while it rests: they wait for the end of the rest, or for the end
            stream.put(TextDelta(text, 1))
        stream.put(_finished(4))

    async def main() -> list[list]:
        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.05)
        thread = _later(0.0, produce)
        result = await task
        thread.join()
        return result

    lists = [[e.text if isinstance(e, TextDelta) else "END" for e in events] for events in asyncio.run(main())]
    assert lists == [["a"], ["b", "c", "d", "END"]]


def test_finished_cuts_a_rest_short():
    stream = Stream()

    async def main() -> float:
        thread = _later(0.1, lambda: stream.put(TextDelta("x", 1)), lambda: time.sleep(0.2),
                        lambda: stream.put(_finished(1)))
        start = time.monotonic()
        lists = [events async for events in stream.batches(min_interval_s=30.0)]
        thread.join()
        assert [len(events) for events in lists] == [1, 1] and isinstance(lists[-1][-1], Finished)
        return time.monotonic() - start

    assert asyncio.run(main()) < 10.0  # far below the 30 s rest: the end woke the consumer


def test_events_before_the_consumer_starts_come_first_in_one_list():
    stream = Stream()
    for text in "abc":
        stream.put(TextDelta(text, 1))

    async def main() -> list[list]:
        _later(0.05, lambda: stream.put(_finished(3)))
        return [events async for events in stream.batches()]

    lists = asyncio.run(main())
    assert [e.text for e in lists[0]] == ["a", "b", "c"] and isinstance(lists[-1][-1], Finished)


def test_a_consumer_that_leaves_does_not_break_the_producer():
    stream = Stream()

    async def leave_early() -> None:
        async def consume() -> None:
            async for _events in stream.batches():
                pass

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.05)  # waiting on its future now
        task.cancel()

    asyncio.run(leave_early())
    # The loop is closed: putting must neither raise nor hang; the stream counts as abandoned.
    stream.put(TextDelta("late", 1))
    stream.put(_finished(1))
    assert stream.done and stream.cancelled.is_set()
