"""The commit cycle: the one place where a batch of work becomes durable.

Under exactly-once, every cycle is one broker transaction:

    0. begin        the transaction is opened before the first event of the cycle
    1. outputs      the agents' outputs are already in the producer (agents are idle)
    2. changelog    the latest value of every table key changed this cycle
    3. offsets      the processed offsets of every owned partition, with the group metadata
    4. commit       outputs, changelog and offsets become visible atomically, or not at all
    5. checkpoint   the local store takes the changes and the changelog offsets they reach

Under at-least-once the same steps run without a transaction: step 3 writes the outputs and
the changelog (flush), step 4 commits the offsets; a crash between the two repeats the cycle's
events, so their outputs and table updates are applied twice (the documented difference).

The offsets committed are the ones the worker tracked as processed (`track()`, after the agents
processed a batch), never read from the consumer at commit time: the consumer's position is
where its next fetch starts, and no call site of `commit()` (a rebalance callback inside a
fetch, a stop, a take() flush) can then commit a fetched batch that was not processed.

Any failure before step 4 completes: `abort()` aborts the transaction, undoes the tables'
changes and rewinds the consumer and the processed offsets to the committed offsets. A failure
in step 5 loses nothing: the changelog is the truth and the store catches up from it at the
next restore. Until then the store is behind what committed, so this cycle commits nothing
more (every later commit() raises): a store-backed table, whose rows are the store's, must
restore first (the worker exits and its restart does).

    cycle = CommitCycle(producer, consumer, tables, store, exactly_once=True)
    cycle.start(assigned)        # new partitions: nothing processed past their start
    await cycle.begin()
    ...                          # agents process a batch
    cycle.track(positions)       # ... and only then is it processed
    await cycle.commit()
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from runtime.errors import AppError, ProducerFencedError, ResourceError
from runtime.transport import Consumer, Producer
from runtime.types import RecordMetadata, TopicPartition
from runtime.worker.store import Change, StateStore
from runtime.worker.tables import TableState

log = logging.getLogger(__name__)

STEPS = ("after_outputs", "after_changelog", "after_offsets", "after_commit", "after_checkpoint")


class CommitCycle:
    def __init__(
        self,
        producer: Producer,
        consumer: Consumer,
        tables: Mapping[str, TableState],
        store: StateStore,
        *,
        exactly_once: bool,
        fault: Callable[[str], None] | None = None,
    ) -> None:
        self.producer = producer
        self.consumer = consumer
        self.tables = tables
        self.store = store
        self.exactly_once = exactly_once
        self.fault = fault or (lambda step: None)
        self.open = False
        self.store_behind: BaseException | None = None  # step 5 failed: restore first
        # per owned partition, the offset after the last record processed (what commits)
        self.processed: dict[TopicPartition, int] = {}

    # --- processed offsets --------------------------------------------------------------

    def start(self, tps: Iterable[TopicPartition]) -> None:
        """Partitions just assigned: processed up to where their consumption starts."""
        for tp in tps:
            self.processed[tp] = self.consumer.position(tp)

    def track(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Every record before these offsets has been processed (by every agent)."""
        self.processed.update(offsets)

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        """Partitions revoked (after their last commit)."""
        for tp in tps:
            self.processed.pop(tp, None)

    async def begin(self) -> None:
        """0. Open the cycle's transaction (a no-op under at-least-once)."""
        if self.open:
            return
        if self.exactly_once:
            await self.producer.begin_transaction()
        self.open = True

    async def commit(self) -> None:
        if not self.open:
            return
        if self.store_behind is not None:
            raise ResourceError(
                f"the local store missed a checkpoint ({self.store_behind}): nothing commits "
                "until the worker restarts and restores it from the changelogs"
            )
        # 1. outputs: the agents are idle, their outputs are buffered in the producer.
        self.fault("after_outputs")

        # 2. changelog: the latest value per changed key, one record each.
        changes, changelog_ends = self._produce_changelog()
        self.fault("after_changelog")

        # 3. offsets: what was processed, for every owned partition (so a member that lost one
        #    cannot commit). (at-least-once: the outputs and the changelog are written now,
        #    the offsets in step 4)
        offsets = {tp: self._processed(tp) for tp in self.consumer.assignment()}
        if self.exactly_once:
            await self.producer.send_offsets_to_transaction(offsets, self.consumer.group_metadata())
        else:
            await self.producer.flush()
        self.fault("after_offsets")

        # 4. commit.
        if self.exactly_once:
            await self.producer.commit_transaction()
        else:
            await self.consumer.commit(offsets)
        self.open = False
        for table in self.tables.values():
            table.committed()
        self.fault("after_commit")

        # 5. checkpoint the local store (a cache: failing here loses nothing).
        checkpoints = {key: end for key, end in changelog_ends.items() if end is not None}
        try:
            await self.store.save(changes, checkpoints)
        except BaseException as exc:
            self.store_behind = exc
            raise
        for table in self.tables.values():
            table.saved()
        self.fault("after_checkpoint")

    def _processed(self, tp: TopicPartition) -> int:
        offset = self.processed.get(tp)
        if offset is None:  # a partition assigned without start(): a bug, never guess
            raise AppError(f"no processed offset tracked for {tp}; nothing commits")
        return offset

    def _produce_changelog(self) -> tuple[list[Change], dict[tuple[str, int], int | None]]:
        """Produce the cycle's changelog records; returns the store changes and, per table
        partition, where the changelog will end (filled in when the records are written)."""
        changes: list[Change] = []
        ends: dict[tuple[str, int], int | None] = {}
        for table in self.tables.values():
            spec = table.spec
            by_partition: dict[int, list[tuple[bytes, bytes | None]]] = {}
            for partition, key_bytes, value_bytes in table.encoded_changes():
                changes.append((spec.name, partition, key_bytes, value_bytes))
                by_partition.setdefault(partition, []).append((key_bytes, value_bytes))
            for partition, rows in by_partition.items():
                where = (spec.name, partition)
                ends[where] = None
                for i, (key_bytes, value_bytes) in enumerate(rows, 1):
                    self.producer.produce(
                        spec.changelog,
                        value_bytes,
                        key_bytes,
                        partition=partition,
                        on_delivery=self._end_recorder(ends, where) if i == len(rows) else None,
                    )
        return changes, ends

    @staticmethod
    def _end_recorder(
        ends: dict[tuple[str, int], int | None], key: tuple[str, int]
    ) -> Callable[[RecordMetadata | None, BaseException | None], None]:
        def record(meta: RecordMetadata | None, error: BaseException | None) -> None:
            if meta is not None:
                ends[key] = meta.offset + 1

        return record

    async def abort(self) -> None:
        """Undo the open cycle: abort the transaction, undo table changes, rewind."""
        if self.exactly_once and self.open:
            try:
                await self.producer.abort_transaction()
            except ProducerFencedError:
                log.warning("producer fenced while aborting; re-initialising")
                await self.producer.init_transactions()
        self.open = False
        for table in self.tables.values():
            table.rollback()
        await self.consumer.seek_to_committed()
        self.start(self.consumer.assignment())  # processed: the committed offsets again
