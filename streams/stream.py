"""Streams: what an agent iterates.

    @app.stream(orders)
    async def process(stream):
        async for order in stream.filter(lambda o: o["total"] > 0):
            ...
        async for key, value in stream.items(): ...
        async for event in stream.events(): ...       # key, value, headers, timestamp, offset...
        async for batch in stream.take(100, within=1.0): ...
        async for word in stream.group_by(lambda w: w, name="by-word"): ...
        async for line in stream.flat_map(str.splitlines).peek(print): ...
        async for order in stream.through(audit_topic): ...
        await stream.branch({large: lambda o: o["total"] > 100}, default=small)

`filter`, `map`, `flat_map`, `peek`, `group_by` and `through` return new streams; nothing runs
until the agent iterates. `group_by` re-keys the events through an internal repartition topic,
so that every event of a key reaches the worker that owns that key's table partition;
`through` forwards them, keys unchanged, to a topic of yours and reads on from there. `branch`
sends each value to the topic of the first predicate it satisfies.

When the app starts, each agent is run once up to its first iteration ("discovery") to learn
its chain of operations: the topics it needs exist before any worker joins the group.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from typing import Any

from runtime.errors import ConfigurationError
from runtime.types import Event
from runtime.worker import Inbox, Skip, apply_ops, expand, expands
from streams.topic import Topic


class GroupBy:
    """The repartition step of a stream: `group_by` (a key function, an internal topic named
    after `name`) or `through` (no key function: the events keep their keys; `through` is
    the topic)."""

    def __init__(
        self,
        key_fn: Callable[[Any], Any] | None,
        name: str,
        ops: list[Any],
        through: Topic | None = None,
    ) -> None:
        self.key_fn = key_fn
        self.name = name
        self.ops_before = ops
        self.through = through


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
        self._expands = expands(self.ops)  # a flat_map: an event may give several values
        self._pending: Iterator[Any] | None = None  # values still to come of inbox.current

    # --- building -----------------------------------------------------------------------

    def _then(self, kind: str, fn: Callable[[Any], Any]) -> Stream:
        if not callable(fn):
            raise ConfigurationError(f"stream.{kind}() needs a function of the value")
        return Stream(self.topic, self._inbox, [*self.ops, (kind, fn)], self.group)

    def filter(self, predicate: Callable[[Any], Any]) -> Stream:
        """Only values for which `predicate(value)` is true."""
        return self._then("filter", predicate)

    def map(self, fn: Callable[[Any], Any]) -> Stream:
        """`fn(value)` instead of each value."""
        return self._then("map", fn)

    def flat_map(self, fn: Callable[[Any], Iterable[Any]]) -> Stream:
        """Every element of the iterable `fn(value)` instead of each value, in order (none
        for an empty one). The values of one event share its key, offset and timestamp."""
        return self._then("flat_map", fn)

    def peek(self, fn: Callable[[Any], Any]) -> Stream:
        """Call `fn(value)` for its side effects; the value continues unchanged. (A side
        effect outside the broker is not undone by an abort: an event processed again after
        a failure is peeked again.)"""
        return self._then("peek", fn)

    def group_by(self, key: Callable[[Any], Any], *, name: str) -> Stream:
        """Re-key by `key(value)` through the repartition topic `<app>-<name>-repartition`."""
        if self.group is not None:
            raise ConfigurationError("one group_by or through per agent is supported")
        if not name or not isinstance(name, str):
            raise ConfigurationError("group_by needs a name= for its repartition topic")
        return Stream(self.topic, self._inbox, [], GroupBy(key, name, self.ops))

    def through(self, topic: Topic | str) -> Stream:
        """Forward each value, keyed as its event, to `topic` (in the agent's transaction)
        and go on reading from `topic`: the rest of the chain sees that topic's records, on
        its partitions (and also what anyone else writes there)."""
        if self.group is not None:
            raise ConfigurationError("one group_by or through per agent is supported")
        target = self._declared(topic, "through")
        return Stream(self.topic, self._inbox, [], GroupBy(None, target.name, self.ops, target))

    def _declared(self, topic: Topic | str, doing: str) -> Topic:
        """`topic` as a topic of this stream's app (a name is declared with the defaults)."""
        app = self.topic.app
        if isinstance(topic, str):
            return app.topic(topic)
        if not isinstance(topic, Topic) or app.topics.get(topic.name) is not topic:
            raise ConfigurationError(f"{doing}: {topic!r} is not a topic of app {app.id!r}")
        return topic

    # --- iterating ----------------------------------------------------------------------

    def _available(self) -> Event | None:
        """The next event handed over (after this stream's operations), or None when the
        batch is used up. Never waits."""
        inbox = self._inbox
        if inbox is None:
            raise Discovered(self)
        if self._expands:
            return self._available_expanded(inbox)
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

    def _available_expanded(self, inbox: Inbox) -> Event | None:
        """`_available` after a flat_map: the values of `inbox.current` are taken one at a
        time, all of them before the next event (so an event is done, and its offset may be
        committed, only when its last value is processed)."""
        while True:
            pending = self._pending
            if pending is not None:
                value = next(pending, _DONE)
                if value is not _DONE:
                    event = inbox.current
                    assert event is not None
                    return event._replace(value=value)
                self._pending = None
            if inbox.pos >= len(inbox.events):
                return None
            event = inbox.events[inbox.pos]
            inbox.pos += 1
            inbox.current = event
            self._pending = expand(self.ops, event.value)

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

    async def branch(
        self,
        branches: Mapping[Any, Callable[[Any], Any]],  # {Topic or topic name: predicate}
        *,
        default: Topic | str | None = None,
    ) -> None:
        """Send each value to the topic of the first predicate it satisfies, or to `default`
        (None: drop it), keyed as its event, in the agent's transaction. The agent's body is
        `await stream.branch({...})`: it never returns. Each branch topic is a stream that
        other agents (or other apps) process, with their own chains."""
        routes = [(self._declared(t, "branch"), p) for t, p in dict(branches).items()]
        if not routes:
            raise ConfigurationError("branch() needs at least one {topic: predicate}")
        for topic, predicate in routes:
            if not callable(predicate):
                raise ConfigurationError(f"branch: the predicate of {topic.name!r} is not callable")
        otherwise = None if default is None else self._declared(default, "branch")
        while True:
            event = await self._next()
            value = event.value
            target = next((topic for topic, predicate in routes if predicate(value)), otherwise)
            if target is not None:
                await target.send(
                    key=event.key, value=value, headers=event.headers, timestamp=event.timestamp
                )


_DONE = object()


class _Values:
    __slots__ = ("_stream",)

    def __init__(self, stream: Stream) -> None:
        self._stream = stream

    def __aiter__(self) -> _Values:
        return self

    async def __anext__(self) -> Any:
        return (await self._stream._next()).value
