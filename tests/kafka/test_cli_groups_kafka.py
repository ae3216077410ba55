"""`streams groups reset-offsets` and `groups delete` against a Kafka-protocol broker (the
session's Tansu), through the same commands as on the embedded broker."""

from __future__ import annotations

import asyncio

import pytest

from runtime.testing import SESSION_TIMEOUT_MS, unique
from runtime.transport import connect
from runtime.types import TopicPartition
from streams.cli import main


async def _group_that_read(url: str, topic: str, group: str) -> None:
    """`group` commits offset 3 of partition 0, then leaves."""
    async with connect(url) as transport:
        consumer = transport.consumer(group, session_timeout_ms=SESSION_TIMEOUT_MS)
        await consumer.subscribe([topic])
        deadline = asyncio.get_running_loop().time() + 30
        while not consumer.assignment():
            assert asyncio.get_running_loop().time() < deadline, "no assignment"
            await consumer.getmany(timeout=0.5)
        await consumer.commit({TopicPartition(topic, 0): 3})
        await consumer.close()


async def _committed(url: str, group: str) -> dict[TopicPartition, int]:
    async with connect(url) as transport:
        return dict((await transport.describe_group(group)).offsets)


def test_reset_and_delete_a_group_on_kafka(
    kafka_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    topic, group = unique("words"), unique("g")
    assert main(["topics", "create", topic, "--broker", kafka_url]) == 0
    for i in range(4):  # one record per request: Tansu's high watermark is right for those
        assert main(["send", topic, f"w{i}", "--broker", kafka_url]) == 0
    asyncio.run(_group_that_read(kafka_url, topic, group))
    tp = TopicPartition(topic, 0)
    assert asyncio.run(_committed(kafka_url, group)) == {tp: 3}
    capsys.readouterr()

    reset = ["groups", "reset-offsets", group, "--topic", topic, "--broker", kafka_url]
    assert main([*reset, "--to-earliest", "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "topic\tpartition\told\tnew",
        f"{topic}\t0\t3\t0",
    ]
    assert asyncio.run(_committed(kafka_url, group)) == {tp: 3}
    assert main([*reset, "--shift-by", "-2"]) == 0
    assert asyncio.run(_committed(kafka_url, group)) == {tp: 1}
    assert main([*reset, "--to-earliest"]) == 0
    assert asyncio.run(_committed(kafka_url, group)) == {tp: 0}

    assert main(["groups", "delete", group, "--broker", kafka_url]) == 0
    assert asyncio.run(_committed(kafka_url, group)) == {}
