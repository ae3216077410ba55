"""The transport contract's fixture: one test body, run against each back end.

`backend` is parametrized three ways: the embedded broker (an SQLite file), the Kafka back end
(confluent-kafka) against the session's Tansu broker ("kafka"), and the Kafka back end against
our own `streams broker serve` over an SQLite file ("served", runtime/protocol). Names are unique
per test, so Kafka tests share one broker. A test marked `@pytest.mark.tansu_xfail(reason=...)`
is an expected failure on Tansu only (strict: it is reported, and flips to a failure the day
Tansu gets it right); on our server every test must pass.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from runtime.testing import SESSION_TIMEOUT_MS, unique
from runtime.transport import Consumer, Transport, connect
from runtime.types import Record

PARTITIONS = 4


@dataclasses.dataclass
class Backend:
    kind: str  # "sqlite" or "kafka" (the Kafka back end, on Tansu or on our server)
    transport: Transport
    topic: str  # a fresh topic with PARTITIONS partitions

    def consumer(self, group_id: str | None = None, **options: Any) -> Consumer:
        """A consumer with a session timeout short enough for Tansu's first join."""
        options.setdefault("session_timeout_ms", SESSION_TIMEOUT_MS)
        return self.transport.consumer(group_id, **options)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        marker = item.get_closest_marker("tansu_xfail")
        callspec = getattr(item, "callspec", None)
        if marker is None or callspec is None or callspec.params.get("backend") != "kafka":
            continue
        item.add_marker(pytest.mark.xfail(strict=True, reason=f"tansu: {marker.kwargs['reason']}"))


@pytest.fixture(params=["sqlite", "kafka", "served"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "kafka":
        url = request.getfixturevalue("kafka_url")
    elif request.param == "served":
        url = request.getfixturevalue("served_broker").url
    else:
        url = f"sqlite:///{tmp_path}/broker.db"
    async with connect(url) as transport:
        topic = unique("events")
        await transport.create_topic(topic, PARTITIONS)
        kind = "sqlite" if request.param == "sqlite" else "kafka"
        yield Backend(kind, transport, topic)


async def read(consumer: Consumer, count: int | None = None, timeout: float = 10.0) -> list[Record]:
    """Records until `count` arrived (then one short poll more, to catch extras) or, without
    a count, until a poll returns nothing after the first records (or `timeout`)."""
    out: list[Record] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = count is not None and len(out) >= count
        batch = await consumer.getmany(timeout=0.3 if done or count is None else 1.0)
        for records in batch.values():
            out.extend(records)
        if not batch and (done or (count is None and out)):
            break
    return out


async def poll_until(
    consumers: Iterable[Consumer], condition: Callable[[], bool], timeout: float = 30.0
) -> None:
    """Keep every member polling (rebalances happen inside getmany) until `condition`."""
    members = list(consumers)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.gather(*(c.getmany(timeout=0.05) for c in members))


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)
