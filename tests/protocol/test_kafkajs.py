"""kafkajs 2.2.4 (npm) against `streams broker serve`: a producer, a consumer group of two
members splitting the partitions, and a transactional consume-transform-produce loop.

The Node scripts are in node/ (installed by `npm ci` from the committed package-lock.json
when node_modules is missing). Producer and group tests run against Tansu as well; the
transactional one runs on ours only: kafkajs transactions fail on Tansu 0.6 with an unexpected
server error (shared/reference/tansu.md, deviation 9), and Tansu returns aborted records to
read_committed readers (deviation 3).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from runtime.partitioner import partition_for_key
from runtime.testing import KafkaBroker, TansuBroker, unique
from tests.protocol.clients import (
    NodeScript,
    committed_offsets,
    create_topic,
    install_kafkajs,
    produce,
    read_all,
)


@pytest.fixture(scope="module", autouse=True)
def kafkajs() -> None:
    install_kafkajs()


@pytest.fixture(params=["streams", "tansu"])
def broker(request: pytest.FixtureRequest) -> KafkaBroker:
    fixture = "served_broker" if request.param == "streams" else "tansu_broker"
    broker: KafkaBroker = request.getfixturevalue(fixture)
    return broker


@pytest.fixture
def scripts() -> Iterator[list[NodeScript]]:
    """Scripts started by a test, stopped (by pid) whatever happens to it."""
    started: list[NodeScript] = []
    yield started
    for script in started:
        script.stop()


@pytest.mark.parametrize("idempotent", [False, True], ids=["plain", "idempotent"])
def test_producer(broker: KafkaBroker, idempotent: bool, request: pytest.FixtureRequest) -> None:
    if idempotent and isinstance(broker, TansuBroker):
        reason = "tansu rejects InitProducerId below v3; kafkajs sends v1 (deviation 6)"
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))
    topic = unique("kafkajs-produce")
    create_topic(broker, topic, 3)
    options = {"bootstrap": broker.bootstrap, "topic": topic, "count": 250}
    lines = NodeScript("produce.js", idempotent=int(idempotent), **options).finish()
    acks = [line for line in lines if line["event"] == "ack"]
    assert acks and all(ack["errorCode"] == 0 for ack in acks)
    assert lines[-1] == {"event": "produced", "count": 250}

    records = read_all(broker, topic, 3, expected=250)
    seen = sorted((r.key(), r.value()) for r in records)
    assert seen == sorted((b"key-%d" % i, b"value-%d" % i) for i in range(250))
    for record in records:
        assert record.headers() == [("source", b"kafkajs")]
        # kafkajs' default partitioner is Java's murmur2: the record is where the client sent it
        assert record.partition() == partition_for_key(record.key(), 3)


def _last_assignment(script: NodeScript) -> list[int] | None:
    assignments = [line["partitions"] for line in script.lines if line["event"] == "assignment"]
    return assignments[-1] if assignments else None


def test_consumer_group_of_two_members_splits_the_partitions(
    broker: KafkaBroker, scripts: list[NodeScript]
) -> None:
    topic, group = unique("kafkajs-group"), unique("kafkajs-group")
    create_topic(broker, topic, 4)
    options: dict[str, Any] = {"bootstrap": broker.bootstrap, "topic": topic, "group": group}
    first = NodeScript("consume.js", **options)
    scripts.append(first)
    first.wait_for(lambda _: _last_assignment(first) == [0, 1, 2, 3])
    second = NodeScript("consume.js", **options)
    scripts.append(second)

    def split(_: object) -> bool:
        a, b = _last_assignment(first), _last_assignment(second)
        return bool(a and b and not set(a) & set(b) and sorted(a + b) == [0, 1, 2, 3])

    for script in (first, second):
        script.wait_for(split, timeout=90)

    produce(broker, topic, [(b"key-%d" % i, b"value-%d" % i) for i in range(200)])
    first.wait_for(lambda _: len(first.messages()) + len(second.messages()) >= 200, timeout=60)
    second.wait_for(lambda _: len(first.messages()) + len(second.messages()) >= 200, timeout=60)
    for script in (first, second):
        script.stop()

    assignments = {id(first): _last_assignment(first), id(second): _last_assignment(second)}
    values: list[str] = []
    for script in (first, second):
        assert script.process.returncode == 0, script.stderr
        received = script.messages()
        assert received, "each member gets records of its own partitions"
        assert {m["partition"] for m in received} <= set(assignments[id(script)] or [])
        values += [m["value"] for m in received]
    assert sorted(values) == sorted(f"value-{i}" for i in range(200))  # each exactly once


def test_transactional_producer_with_send_offsets(served_broker: KafkaBroker) -> None:
    broker = served_broker
    source, output, group = unique("kafkajs-in"), unique("kafkajs-out"), unique("kafkajs-txn")
    create_topic(broker, source, 2)
    create_topic(broker, output, 2)
    inputs = [(b"key-%d" % i, b"word-%d" % i) for i in range(120)]
    produce(broker, source, inputs)

    lines = NodeScript(
        "transactional.js",
        bootstrap=broker.bootstrap,
        topic=source,
        output=output,
        group=group,
        count=len(inputs),
        transactionalId=unique("kafkajs-txn-id"),
    ).finish()
    assert lines[-1] == {"event": "done", "processed": len(inputs)}
    assert sum(line["records"] for line in lines if line["event"] == "aborted") == len(inputs)

    # A kafkajs read_committed reader sees every input once, from committed transactions only.
    reader = NodeScript("consume.js", bootstrap=broker.bootstrap, topic=output)
    try:
        reader.wait_for(lambda _: len(reader.messages()) >= len(inputs))
        time.sleep(1.5)  # then stop: extras (duplicates, aborted records) would show
    finally:
        reader.stop()
    values = sorted(m["value"] for m in reader.messages())
    assert values == sorted(f"committed:WORD-{i}" for i in range(len(inputs)))

    # The aborted transactions' records are in the log: a read_uncommitted reader sees them.
    everything = read_all(broker, output, 2, isolation="read_uncommitted", expected=2 * len(inputs))
    aborted = [r.value() for r in everything if r.value().startswith(b"aborted:")]
    assert sorted(aborted) == sorted(b"aborted:WORD-%d" % i for i in range(len(inputs)))

    # The group's offsets are the ones the committed transactions sent: the end of the input.
    ends = [0, 0]
    for key, _ in inputs:
        ends[partition_for_key(key, 2)] += 1
    assert committed_offsets(broker, group, source, 2) == ends
