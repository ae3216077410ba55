"""Run an app inside a test: no files, no broker to start, deterministic waiting.

    async def test_counts():
        async with app.testing() as t:
            await t.send("words", value="hello")
            await t.drain()                   # processed and committed
            assert t.table("counts") == {"hello": 1}
            assert [e.value for e in await t.read("word-counts")] == [{"word": "hello", ...}]

`drain()` drives the worker itself (no background task): it polls until every partition the
worker owns is read to its end and the last transaction is committed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from runtime.errors import AppError
from runtime.transport import Transport
from runtime.types import Event
from runtime.worker import Worker

if TYPE_CHECKING:
    from streams.app import App


class TestRun:
    __test__ = False  # not a pytest test class

    def __init__(self, app: App, **overrides: Any) -> None:
        self.app = app
        self._fault = overrides.pop("fault", None)
        self._worker_id = overrides.pop("worker_id", "0")
        overrides.setdefault("broker", f"memory://test-{uuid.uuid4().hex}")
        overrides.setdefault("state_dir", ":memory:")
        self.settings = app.settings.override(**overrides)
        self.transport: Transport | None = None
        self.worker: Worker | None = None

    async def __aenter__(self) -> TestRun:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop(clean=exc is None)

    async def start(self) -> None:
        spec = await self.app.build()
        self.transport = self.settings.connect()
        self.worker = Worker(
            spec, self.transport, self.settings, worker_id=self._worker_id, fault=self._fault
        )
        self.app._attach(self.worker, self.transport)
        try:
            await self.worker.start()
        except BaseException:
            self.app._attach(None, None)
            await self.transport.close()
            raise

    async def stop(self, clean: bool = True) -> None:
        """Stop the worker: cleanly (commit, leave), or as a crash would (nothing more is
        committed; the open transaction is left for the next worker to abort)."""
        try:
            if self.worker is not None and self.worker.started:
                await self.worker.stop(clean=clean)
        finally:
            if self.app._worker is self.worker:  # another run of this app may be attached
                self.app._attach(None, None)
                await self.app.close()
            elif self.transport is not None:
                await self.transport.close()

    async def send(self, topic: Any, value: Any = None, *, key: Any = None, **kwargs: Any) -> Any:
        return await self.app.send(topic, key=key, value=value, **kwargs)

    async def send_many(self, topic: Any, values: Iterable[Any], *, key: Any = None) -> int:
        """Send many values in batches (much faster than one `send` each)."""
        declared = self.app.topics[topic if isinstance(topic, str) else topic.name]
        assert self.transport is not None
        producer = self.transport.producer()
        count = 0
        for value in values:
            key_bytes, value_bytes = declared.encode(key, value)
            producer.produce(declared.name, value_bytes, key_bytes)
            count += 1
        await producer.close()
        return count

    async def drain(self, timeout: float = 30.0) -> None:
        """Process until every owned partition is read to its end and committed."""
        worker = self._require_worker()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            processed = await worker.poll(timeout=0.01)
            if processed:
                continue
            await worker.commit()
            assignment = worker.consumer.assignment()
            if not assignment and worker.spec.agents:
                continue  # waiting for the group to hand out partitions
            ends = await worker.consumer.end_offsets(assignment)
            if all(worker.consumer.position(tp) >= end for tp, end in ends.items()):
                return
        raise AppError(f"drain() timed out after {timeout} s")

    async def read(self, topic: Any) -> list[Event]:
        """Every committed record of `topic`, decoded, in partition then offset order."""
        name = topic if isinstance(topic, str) else topic.name
        declared: Any = self.app.topics.get(name)
        if declared is None and self.worker is not None:  # e.g. the dead-letter topic of
            declared = self.worker.spec.topics.get(name)  # an on_error given to testing()
        if declared is None:
            raise AppError(f"topic {name!r} is not a topic of app {self.app.id!r}")
        assert self.transport is not None
        events = [
            Event(
                None if r.key is None else declared.key.decode(r.key),
                None if r.value is None else declared.value.decode(r.value),
                r.headers,
                r.timestamp,
                r.topic,
                r.partition,
                r.offset,
            )
            async for r in self.transport.committed_records(declared.name, declared.partitions)
        ]
        return sorted(events, key=lambda e: (e.partition, e.offset))

    def table(self, name: str) -> dict[Any, Any]:
        """The current rows of a table (all partitions this worker owns)."""
        return dict(self._require_worker().tables[name].items())

    def _require_worker(self) -> Worker:
        if self.worker is None:
            raise AppError("the test run is not started")
        return self.worker
