"""A synchronous idempotent producer over one `Broker`, for tools, tests and benchmarks.

    producer = BatchProducer(broker)
    producer.send("words", [(b'"apple"', b"apple"), (None, b"keyless")])

Keyed records go where Kafka's default partitioner puts them (murmur2); keyless ones to one
partition per call. Sequence numbers are kept per partition, so the broker's idempotence
checks apply as for any producer. (Applications use `runtime.transport` instead.)
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from runtime.broker.core import Broker, ProduceBatch
from runtime.partitioner import Partitioner


class BatchProducer:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.pid, self.epoch = broker.init_producer_id()
        self._sequences: dict[tuple[str, int], int] = {}
        self._partitioner = Partitioner()

    def send(
        self,
        topic: str,
        records: Iterable[tuple[bytes | None, bytes | None]],
        timestamps: Iterable[int] | None = None,
    ) -> dict[int, int]:
        """Write `records` (key, value) in one broker call, with their `timestamps` (ms)
        or now; returns the number of records written per partition."""
        count = self.broker.describe_topic(topic).partitions
        now = time.time_ns() // 1_000_000
        columns: dict[int, tuple[list[bytes | None], list[bytes | None], list[int]]] = {}
        times = iter(timestamps) if timestamps is not None else None
        for key, value in records:
            partition = self._partitioner.partition(topic, key, count)
            keys, values, stamps = columns.setdefault(partition, ([], [], []))
            keys.append(key)
            values.append(value)
            stamps.append(now if times is None else next(times))
        self._partitioner.next_batch(topic)
        batches = []
        for partition, (keys, values, stamps) in columns.items():
            sequence = self._sequences.get((topic, partition), 0)
            batches.append(ProduceBatch(topic, partition, sequence, keys, values, stamps))
        self.broker.produce(self.pid, self.epoch, batches)
        for batch in batches:
            self._sequences[(topic, batch.partition)] = batch.base_seq + len(batch.values)
        return {batch.partition: len(batch.values) for batch in batches}
