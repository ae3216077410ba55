"""What a worker runs, as plain data: topics, tables, agents and repartition steps.

`streams.App` builds an `AppSpec` from the user's declarations; the worker needs nothing from
the user API beyond it, so `runtime` never imports `streams`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

Op = tuple[str, Callable[[Any], Any]]  # ("filter" | "map" | "flat_map" | "peek", function)


class CodecLike(Protocol):
    @property
    def name(self) -> str: ...

    def encode(self, value: Any) -> bytes: ...

    def decode(self, data: bytes) -> Any: ...


@dataclasses.dataclass
class TopicSpec:
    name: str
    partitions: int
    key: CodecLike
    value: CodecLike
    compacted: bool = False
    internal: bool = False  # created and owned by the app (changelogs, repartition topics)


@dataclasses.dataclass
class RepartitionSpec:
    """Re-key the events of `source` with `key_fn` and write them to `target` (group_by);
    without `key_fn`, forward them with their own keys (through)."""

    source: str
    target: str
    ops: list[Op]  # applied before keying
    key_fn: Callable[[Any], Any] | None
    agent: str = ""  # the agent whose group_by this is (its on_error applies)


@dataclasses.dataclass
class AgentSpec:
    name: str
    topic: str  # the topic whose events reach the agent (a repartition topic after group_by)
    run: Callable[[Any], AsyncIterator[Any] | Awaitable[None]]  # called with the Inbox
    sinks: list[str]
    on_error: str | None = None  # fail | skip | dead_letter; None: the app's setting
    dead_letter: str | None = None  # its dead-letter topic; None: the app's


@dataclasses.dataclass(frozen=True)
class WindowSpec:
    """Event-time windows of a table; every time is in integer milliseconds.

    kind      "tumbling" | "hopping" | "sliding" | "session"
    size      window size (tumbling, hopping), time difference (sliding) or gap (session)
    step      advance of hopping windows (= size when tumbling)
    grace     how long after its end a window still accepts late records
    expires   how long after its end a window is kept for reads (>= grace)
    """

    kind: str
    size: int
    step: int
    grace: int
    expires: int
    timestamp: Callable[[Any], Any] | None = None  # event time from the value (seconds)
    merge: Callable[[Any, Any], Any] | None = None  # sessions: combine two merged values
    emit_to: str | None = None  # topic of final results
    idle_close: int | None = None  # close windows after this much wall-clock idleness
    dead_letter: str | None = None  # topic of late records


@dataclasses.dataclass
class TableSpec:
    name: str
    changelog: str
    partitions: int
    key: CodecLike
    value: CodecLike
    default: Callable[[], Any] | None
    window: WindowSpec | None = None
    store: str = "local"  # "local": rows in the local store, a bounded cache; "memory": a dict


@dataclasses.dataclass
class TimerSpec:
    name: str
    interval: float | None  # None: runs once at start (a task)
    fn: Callable[[], Awaitable[None]]


@dataclasses.dataclass
class AppSpec:
    app_id: str
    topics: dict[str, TopicSpec]
    agents: list[AgentSpec]
    repartitions: list[RepartitionSpec]
    tables: list[TableSpec]
    timers: list[TimerSpec]

    def source_topics(self) -> list[str]:
        names = {a.topic for a in self.agents} | {r.source for r in self.repartitions}
        return sorted(names)
