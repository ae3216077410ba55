"""What only the Kafka back end has: URLs and client settings, librdkafka's partitioner and
assignors, a bounded wait for an unreachable cluster, the optional dependency, and the event
loop staying free while librdkafka blocks."""

from __future__ import annotations

import asyncio
import builtins
import itertools
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

import streams
from runtime import errors
from runtime.partitioner import partition_for_key
from runtime.testing import SESSION_TIMEOUT_MS, unique
from runtime.transport import READ_COMMITTED, connect
from runtime.transport.kafka import KafkaOptions, KafkaTransport
from runtime.types import TopicPartition
from tests.transport.conftest import poll_until


@pytest.fixture
async def kafka(kafka_url: str) -> AsyncIterator[KafkaTransport]:
    transport = connect(kafka_url)
    assert isinstance(transport, KafkaTransport)
    yield transport
    await transport.close()


async def test_keys_land_where_the_embedded_broker_puts_them(kafka: KafkaTransport) -> None:
    topic = unique("placement")
    await kafka.create_topic(topic, 7)
    producer = kafka.producer()
    keys = [b"user-%d" % i for i in range(200)] + [b"", b"\xff" * 7, "ключ".encode()]
    metas = await asyncio.gather(*(producer.send(topic, b"v", key=k) for k in keys))
    assert [m.partition for m in metas] == [partition_for_key(k, 7) for k in keys]
    await producer.close()


async def test_copartitioned_members_own_the_same_partitions_of_every_topic(
    kafka: KafkaTransport,
) -> None:
    topics = [unique("source"), unique("changelog")]
    for topic in topics:
        await kafka.create_topic(topic, 4)
    group = unique("g")
    members = [
        kafka.consumer(group, assignor="copartitioned", session_timeout_ms=SESSION_TIMEOUT_MS)
        for _ in range(2)
    ]
    for member in members:
        await member.subscribe(topics)

    def split() -> bool:
        return all(len(m.assignment()) == 4 for m in members)

    await poll_until(members, split, timeout=60)
    for member in members:
        numbers = {t: {tp.partition for tp in member.assignment() if tp.topic == t} for t in topics}
        assert numbers[topics[0]] == numbers[topics[1]]
    for member in members:
        await member.close()


async def test_an_unreachable_cluster_fails_fast_with_a_typed_error() -> None:
    transport = connect("kafka://127.0.0.1:1?timeout=1")
    for attempt in (
        transport.list_topics(),
        transport.producer().send("t", b"v"),
        transport.consumer("g").subscribe(["t"]),
    ):
        started = time.monotonic()
        with pytest.raises(errors.BrokerUnavailableError, match="cannot reach Kafka"):
            await attempt
        assert time.monotonic() - started < 3.0
    await transport.close()


def test_urls_and_client_settings() -> None:
    options = KafkaOptions.from_url(
        "kafka://a:9092,b:9092?security.protocol=SASL_SSL&replication_factor=3&timeout=2.5",
        client_config={"sasl.password": "secret"},
    )
    assert options.bootstrap == "a:9092,b:9092"
    assert options.client_config == {"security.protocol": "SASL_SSL", "sasl.password": "secret"}
    assert (options.replication_factor, options.timeout_s) == (3, 2.5)
    assert options.static_membership
    assert not KafkaOptions.from_url("kafka://a:9092?static_membership=false").static_membership
    with pytest.raises(errors.ConfigurationError, match="set by streams"):
        KafkaOptions.from_url("kafka://a:9092?enable.idempotence=false")
    with pytest.raises(errors.ConfigurationError, match=r"bad Kafka client settings.*colour"):
        connect("kafka://a:9092?colour=blue")
    with pytest.raises(errors.ConfigurationError, match="bad replication_factor"):
        connect("kafka://a:9092?replication_factor=three")
    assert connect("kafka://a:9092?debug=cgrp&acks=all").url.endswith("acks=all")
    with pytest.raises(errors.ConfigurationError, match="bad Kafka URL"):
        connect("kafka:///no-host")
    transport = connect("kafka://a:9092", client_config={"client.id": "mine"})
    assert isinstance(transport, KafkaTransport)
    with pytest.raises(errors.ConfigurationError, match="client_config"):
        connect("memory://", client_config={"client.id": "mine"})


def test_without_confluent_kafka_the_url_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(sys.modules):
        if name.startswith(("confluent_kafka", "runtime.transport.kafka")):
            monkeypatch.delitem(sys.modules, name)
    real_import = builtins.__import__

    def no_confluent(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.split(".")[0] == "confluent_kafka":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_confluent)
    with pytest.raises(errors.ConfigurationError, match=r"pip install 'streams\[kafka\]'"):
        connect("kafka://127.0.0.1:9092")


async def test_the_event_loop_runs_while_librdkafka_blocks(kafka: KafkaTransport) -> None:
    """A ticker keeps ticking through a long fetch, a group join and a transaction."""
    topic = unique("loop")
    await kafka.create_topic(topic, 1)
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    task = asyncio.ensure_future(ticker())
    try:
        consumer = kafka.consumer(
            unique("g"), isolation=READ_COMMITTED, session_timeout_ms=SESSION_TIMEOUT_MS
        )
        await consumer.subscribe([topic])
        started = time.monotonic()
        while not consumer.assignment():  # Tansu answers the first join after ~3 s
            await consumer.getmany(timeout=2.0)
        producer = kafka.producer(transactional_id=unique("tx"))
        await producer.init_transactions()
        await producer.begin_transaction()
        producer.produce(topic, b"v", partition=0)
        tp = TopicPartition(topic, 0)
        await producer.send_offsets_to_transaction({tp: 0}, consumer.group_metadata())
        await producer.commit_transaction()
        await consumer.getmany(timeout=1.0)
        elapsed = time.monotonic() - started
        await consumer.close()
        await producer.close()
    finally:
        task.cancel()
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert elapsed > 1.0
    assert max(gaps) < 0.25, f"the loop stalled for {max(gaps):.3f} s"


def test_app_settings_pass_client_settings_to_kafka_only() -> None:
    """broker_config (a dict in code, JSON in $STREAMS_BROKER_CONFIG) reaches the Kafka
    client; an embedded broker URL ignores it, so one app runs on both."""
    config = {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "app",
        "sasl.password": "secret",
    }
    settings = streams.Settings.resolve(
        "shop", {"broker": "kafka://a:9092", "broker_config": config}, environ={}
    )
    transport = settings.connect()
    assert isinstance(transport, KafkaTransport)
    assert transport.options.client_config == config
    from_env = streams.Settings.resolve(
        "shop",
        {"broker": "kafka://a:9092"},
        environ={"STREAMS_BROKER_CONFIG": '{"client.id": "from-env"}'},
    )
    assert from_env.broker_config == {"client.id": "from-env"}
    embedded = settings.override(broker="memory://")
    assert type(embedded.connect()).__name__ == "EmbeddedTransport"
    with pytest.raises(errors.ConfigurationError, match=r"STREAMS_BROKER_CONFIG.*JSON object"):
        streams.Settings.resolve("shop", {}, environ={"STREAMS_BROKER_CONFIG": "[1, 2]"})
