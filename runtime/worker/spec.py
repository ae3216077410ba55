"""What a worker runs, as plain data: topics, tables, agents and repartition steps.

`streams.App` builds an `AppSpec` from the user's declarations; the worker needs nothing from
the user API beyond it, so `runtime` never imports `streams`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

Op = tuple[str, Callable[[Any], Any]]  # ("filter" | "map", function)


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
    """Re-key the events of `source` with `key_fn` and write them to `target`."""

    source: str
    target: str
    ops: list[Op]  # applied before keying
    key_fn: Callable[[Any], Any]


@dataclasses.dataclass
class AgentSpec:
    name: str
    topic: str  # the topic whose events reach the agent (a repartition topic after group_by)
    run: Callable[[Any], AsyncIterator[Any] | Awaitable[None]]  # called with the Inbox
    sinks: list[str]


@dataclasses.dataclass
class TableSpec:
    name: str
    changelog: str
    partitions: int
    key: CodecLike
    value: CodecLike
    default: Callable[[], Any] | None


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
