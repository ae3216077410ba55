"""The one thread that calls into a librdkafka consumer, and how async callbacks run from it.

confluent-kafka (2.16) admits one thread at a time into a consumer: a call from a second thread
waits while `consume()` runs (measured here: a `position()` from another thread inside a
rebalance callback waited until `consume()` returned). librdkafka runs rebalance callbacks
inside `consume()`, and ours are coroutines that call back into the consumer (commit,
`committed()`, `seek`). So:

- every consumer call runs on this thread (a one-thread executor), off the event loop;
- a rebalance callback, called by librdkafka on this thread, is run on the event loop with
  `run_coroutine_threadsafe` while this thread waits; the loop is free, since it only awaits
  the executor future of `consume()`;
- while it waits, this thread serves the consumer calls the callback makes (`call` sends them
  here instead of to the executor), as re-entrant calls of the same thread: no deadlock.

    thread = ConsumerThread()
    records = await thread.call(client.consume, 100, 0.5)     # on the loop
    thread.run_on_loop(loop, coroutine_function, partitions)   # on this thread, in a callback
"""

from __future__ import annotations

import asyncio
import functools
import queue
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
_Job = tuple[Callable[[], Any], asyncio.Future[Any]] | None


class ConsumerThread:
    def __init__(self, name: str = "streams-kafka-consumer") -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._inside: queue.SimpleQueue[_Job] | None = None  # set while a callback runs

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn` on the consumer thread; from inside a callback, as a re-entrant call."""
        job = functools.partial(fn, *args, **kwargs)
        jobs = self._inside
        loop = asyncio.get_running_loop()
        if jobs is None:
            return await loop.run_in_executor(self._executor, job)
        future: asyncio.Future[T] = loop.create_future()
        jobs.put((job, future))
        return await future

    def run_on_loop(
        self,
        loop: asyncio.AbstractEventLoop,
        callback: Callable[..., Awaitable[T]],
        *args: Any,
    ) -> T:
        """On the consumer thread: run `callback(*args)` on the loop and wait for it, serving
        the consumer calls it makes meanwhile. Returns its result or raises its error."""
        jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        previous = self._inside
        self._inside = jobs

        async def run() -> T:
            try:
                return await callback(*args)
            finally:
                # On the loop, before the end is signalled: later calls go to the executor,
                # earlier ones are already queued ahead of the end marker.
                self._inside = previous
                jobs.put(None)

        done = asyncio.run_coroutine_threadsafe(run(), loop)
        done.add_done_callback(lambda _: jobs.put(None))  # also if cancelled before it ran
        while (item := jobs.get()) is not None:
            fn, future = item
            try:
                result = fn()
            except BaseException as exc:
                loop.call_soon_threadsafe(_set_exception, future, exc)
            else:
                loop.call_soon_threadsafe(_set_result, future, result)
        return done.result()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False)


def _set_result(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
