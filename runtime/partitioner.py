"""Kafka's default partitioner: murmur2 for keyed records, sticky for keyless ones.

Both back ends place a key on the same partition as the Java client does:

    partition_for_key(b"abc", 1000)  # 107, as Kafka's DefaultPartitioner
"""

from __future__ import annotations

import itertools

_M = 0x5BD1E995
_SEED = 0x9747B28C
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's `Utils.murmur2`: a signed 32-bit hash of `data`."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = length % 4
    if tail == 3:
        h ^= data[whole + 2] << 16
    if tail >= 2:
        h ^= data[whole + 1] << 8
    if tail >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for_key(key: bytes, partitions: int) -> int:
    """`toPositive(murmur2(key)) % partitions`, exactly as Kafka's default partitioner."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class Partitioner:
    """Picks partitions for one producer: murmur2 for keys (cached), sticky for keyless records.

    A keyless record goes to the current sticky partition of its topic; `next_batch(topic)`
    moves that topic on to the next partition (called when a batch is sent), so keyless records
    fill whole batches and spread evenly across partitions over time.
    """

    def __init__(self, cache_size: int = 100_000) -> None:
        self._cache: dict[tuple[bytes, int], int] = {}
        self._cache_size = cache_size
        self._sticky: dict[str, int] = {}
        self._counters: dict[str, itertools.count[int]] = {}

    def partition(self, topic: str, key: bytes | None, partitions: int) -> int:
        if key is None:
            current = self._sticky.get(topic)
            if current is None or current >= partitions:
                counter = self._counters.get(topic)
                if counter is None:
                    counter = self._counters[topic] = itertools.count()
                current = next(counter) % partitions
                self._sticky[topic] = current
            return current
        cached = self._cache.get((key, partitions))
        if cached is None:
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            cached = self._cache[(key, partitions)] = partition_for_key(key, partitions)
        return cached

    def next_batch(self, topic: str) -> None:
        """Move keyless records of `topic` on to another partition."""
        self._sticky.pop(topic, None)
