"""Records that cannot be processed: the policies (fail, skip, dead_letter) and dead letters.

A record fails when its key or value cannot be decoded, when re-keying it for `group_by`
raises (a map before it, the key function, the encoding), when the agent raises while
processing it, or when the agent's output for it cannot be encoded. Its agent's policy says
what happens (`on_error`, per app and per agent; `on_decode_error` may override it for
decode errors):

    fail          the worker stops with RecordError naming topic[partition]@offset
    skip          the record is logged and counted, and processing goes on
    dead_letter   the record, unchanged, goes to the dead-letter topic in the cycle's
                  transaction, with `streams.error.*` headers saying where and why

    policies = agent_policies(spec, settings)       # agent name -> AgentPolicy
    policies["count"].on_error                       # "skip"
    headers = dead_letter_headers(record, "count", "agent", KeyError("total"))

A worker process that stops for a record writes its one-line reason to the file named by
$STREAMS_FAILURE_FILE (`write_failure`): the supervisor reads it there to see that a restarted
worker keeps failing at the same record, and gives up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any, Protocol

from runtime.types import Event, Headers, Record
from runtime.worker.spec import AppSpec, TopicSpec

POLICIES = ("fail", "skip", "dead_letter")
DECODE_POLICIES = (*POLICIES, "stop")  # "stop" is the older name of "fail"
HEADER = "streams.error."
FAILURE_FILE_ENV = "STREAMS_FAILURE_FILE"
MESSAGE_LIMIT = 2000  # characters of an exception message kept in a header


class PolicySettings(Protocol):
    @property
    def on_error(self) -> str: ...
    @property
    def on_decode_error(self) -> str | None: ...
    @property
    def dead_letter_topic(self) -> str: ...


class RawCodec:
    """Bytes unchanged: the codec of dead-letter topics the app did not declare itself."""

    name = "raw"

    def encode(self, value: Any) -> bytes:
        return bytes(value)

    def decode(self, data: bytes) -> Any:
        return data


@dataclasses.dataclass(frozen=True)
class AgentPolicy:
    """What happens to a record that one agent (with its group_by) cannot process."""

    on_error: str  # fail | skip | dead_letter
    on_decode_error: str  # fail | skip | dead_letter
    dead_letter: TopicSpec | None  # where dead letters go (when either policy is dead_letter)


def agent_policies(spec: AppSpec, settings: PolicySettings) -> dict[str, AgentPolicy]:
    """Each agent's policies: its own `on_error=` or the app's; for decode errors the app's
    `on_decode_error` if set, else the agent's policy. A dead-letter topic missing from
    `spec.topics` is added there (raw codecs, the source's partition count), so that the
    worker creates it like every other topic of the app."""
    policies = {}
    for agent in spec.agents:
        on_error = agent.on_error or settings.on_error
        decode = settings.on_decode_error
        on_decode_error = on_error if decode is None else ("fail" if decode == "stop" else decode)
        topic = None
        if "dead_letter" in (on_error, on_decode_error):
            name = agent.dead_letter or settings.dead_letter_topic
            topic = spec.topics.get(name)
            if topic is None:
                partitions = spec.topics[agent.topic].partitions
                topic = TopicSpec(name, partitions, RawCodec(), RawCodec())
                spec.topics[name] = topic
        policies[agent.name] = AgentPolicy(on_error, on_decode_error, topic)
    return policies


def where(event: Event | Record) -> str:
    """topic[partition]@offset"""
    return f"{event.topic}[{event.partition}]@{event.offset}"


def exception_name(exc: BaseException) -> str:
    cls = type(exc)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def one_line(text: str) -> str:
    return " ".join(text.split())


def dead_letter_headers(record: Record, agent: str, stage: str, exc: BaseException) -> Headers:
    """The record's own headers, then where it came from and why it failed."""
    message = str(exc)[:MESSAGE_LIMIT]
    return [
        *(record.headers or ()),
        (HEADER + "topic", record.topic.encode()),
        (HEADER + "partition", str(record.partition).encode()),
        (HEADER + "offset", str(record.offset).encode()),
        (HEADER + "agent", agent.encode()),
        (HEADER + "stage", stage.encode()),
        (HEADER + "exception", exception_name(exc).encode()),
        (HEADER + "message", message.encode("utf-8", errors="replace")),
    ]


def write_failure(line: str) -> None:
    """Leave the line that stopped this worker process where its supervisor looks (the file
    named by $STREAMS_FAILURE_FILE, if set)."""
    path = os.environ.get(FAILURE_FILE_ENV)
    if path:
        with contextlib.suppress(OSError), open(path, "w", encoding="utf-8") as file:
            file.write(one_line(line) + "\n")


def read_failure(path: str) -> str | None:
    """The line a stopped worker left in `path`, if any."""
    try:
        with open(path, encoding="utf-8") as file:
            return file.read().strip() or None
    except OSError:
        return None


__all__ = [
    "DECODE_POLICIES",
    "FAILURE_FILE_ENV",
    "HEADER",
    "POLICIES",
    "AgentPolicy",
    "RawCodec",
    "agent_policies",
    "dead_letter_headers",
    "read_failure",
    "where",
    "write_failure",
]
