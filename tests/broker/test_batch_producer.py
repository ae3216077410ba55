"""BatchProducer: Kafka's placement for keys, contiguous sequences across calls."""

from __future__ import annotations

from runtime.broker import READ_UNCOMMITTED, Broker
from runtime.broker.producer import BatchProducer
from runtime.partitioner import partition_for_key
from runtime.types import TopicPartition


def test_keys_land_where_kafka_puts_them_and_sequences_continue() -> None:
    broker = Broker()
    broker.create_topic("t", 4)
    producer = BatchProducer(broker)
    keys = [b"k%d" % i for i in range(50)]
    first = producer.send("t", [(k, b"1") for k in keys])
    second = producer.send("t", [(k, b"2") for k in keys])  # sequences continue: accepted
    assert first == second and sum(first.values()) == 50
    for p in range(4):
        tp = TopicPartition("t", p)
        records = broker.fetch([(tp, 0)], isolation=READ_UNCOMMITTED)[tp].records
        assert all(partition_for_key(r.key, 4) == p for r in records)  # type: ignore[arg-type]
        assert [r.value for r in records] == [b"1"] * first.get(p, 0) + [b"2"] * first.get(p, 0)
