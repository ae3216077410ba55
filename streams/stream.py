"""Streams: what an agent iterates.

    @app.stream(orders)
    async def process(stream):
        async for order in stream.filter(lambda o: o["total"] > 0):
            ...
        async for key, value in stream.items(): ...
        async for event in stream.events(): ...       # key, value, headers, timestamp, offset...
        async for batch in stream.take(100, within=1.0): ...
        async for word in stream.group_by(lambda w: w, name="by-word"): ...

`filter`, `map` and `group_by` return new streams; nothing runs until the agent iterates.
`group_by` re-keys the events through an internal repartition topic, so that every event of a
key reaches the worker that owns that key's table partition.

When the app starts, each agent is run once up to its first iteration ("discovery") to learn
its chain of operations: the topics it needs exist before any worker joins the group.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from runtime.errors import ConfigurationError
from runtime.types import Event
from runtime.worker import Inbox, Skip, apply_ops

if TYPE_CHECKING:
    from streams.topic import Topic


class GroupBy:
    def __init__(self, key_fn: Callable[[Any], Any], name: str, ops: list[Any]) -> None:
        self.key_fn = key_fn
        self.name = name
        self.ops_before = ops


class Discovered(Exception):
    """Raised when an agent starts iterating during discovery, carrying its stream."""

    def __init__(self, stream: Stream) -> None:
        super().__init__("agent discovery")
        self.stream = stream


class Stream:
    def __init__(
        self,
        topic: Topic,
        inbox: Inbox | None,
        ops: list[tuple[str, Callable[[Any], Any]]] | None = None,
        group: GroupBy | None = None,
    ) -> None:
        self.topic = topic
        self._inbox = inbox  # None during discovery
        self.ops = ops or []  # since the last group_by
        self.group = group

    # --- building -----------------------------------------------------------------------

    def filter(self, predicate: Callable[[Any], Any]) -> Stream:
        """Only values for which `predicate(value)` is true."""
        return Stream(self.topic, self._inbox, [*self.ops, ("filter", predicate)], self.group)

    def map(self, fn: Callable[[Any], Any]) -> Stream:
        """`fn(value)` instead of each value."""
        return Stream(self.topic, self._inbox, [*self.ops, ("map", fn)], self.group)

    def group_by(self, key: Callable[[Any], Any], *, name: str) -> Stream:
        """Re-key by `key(value)` through the repartition topic `<app>-<name>-repartition`."""
        if self.group is not None:
            raise ConfigurationError("one group_by per agent is supported")
        if not name or not isinstance(name, str):
            raise ConfigurationError("group_by needs a name= for its repartition topic")
        return Stream(self.topic, self._inbox, [], GroupBy(key, name, self.ops))

    # --- iterating ----------------------------------------------------------------------

    def _available(self) -> Event | None:
        """The next event handed over (after this stream's operations), or None when the
        batch is used up. Never waits."""
        inbox = self._inbox
        if inbox is None:
            raise Discovered(self)
        ops = self.ops
        while inbox.pos < len(inbox.events):
            event = inbox.events[inbox.pos]
            inbox.pos += 1
            inbox.current = event
            if not ops:
                return event
            try:
                return event._replace(value=apply_ops(ops, event.value))
            except Skip:
                continue
        return None

    async def _next(self) -> Event:
        """The next event, waiting for the worker to hand over more when needed."""
        while True:
            event = self._available()
            if event is not None:
                return event
            await self._inbox.wait()  # type: ignore[union-attr]

    def __aiter__(self) -> AsyncIterator[Any]:
        return _Values(self)

    async def items(self) -> AsyncIterator[tuple[Any, Any]]:
        while True:
            event = await self._next()
            yield event.key, event.value

    async def events(self) -> AsyncIterator[Event]:
        while True:
            yield await self._next()

    async def take(self, n: int, *, within: float | None = None) -> AsyncIterator[list[Any]]:
        """Lists of up to `n` values: a list is complete at `n` values, when `within` seconds
        passed since its first value, or before a commit (taken events are never held
        across a commit, so none is committed unprocessed)."""
        if n < 1:
            raise ConfigurationError("take(n) needs n >= 1")
        inbox = self._inbox
        if inbox is None:
            raise Discovered(self)
        while True:
            values: list[Any] = []
            taken: list[Event] = []
            deadline = None
            while len(values) < n:
                event = self._available()
                if event is not None:
                    values.append(event.value)
                    taken.append(event)
                    if deadline is None and within is not None:
                        deadline = time.monotonic() + within
                    continue
                expired = deadline is not None and time.monotonic() >= deadline
                if values and (inbox.flushing or expired or within is None):
                    break
                # Taken values not yet processed are "held": the worker asks for them
                # (flushing) before it commits, so their offsets never commit first.
                await inbox.wait(holding=bool(values))
            inbox.taken = taken  # if the agent fails on this list, each of them failed
            yield values
            inbox.taken = None


class _Values:
    __slots__ = ("_stream",)

    def __init__(self, stream: Stream) -> None:
        self._stream = stream

    def __aiter__(self) -> _Values:
        return self

    async def __anext__(self) -> Any:
        return (await self._stream._next()).value
