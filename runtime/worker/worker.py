"""The worker: joins the app's group, restores tables, runs agents, commits.

One worker per process (or several in one process, for tests). Its loop:

    poll      getmany from every owned partition (group changes are applied here)
    restore   tables of newly owned partitions, from the local store and the changelog,
              before any event of those partitions is processed
    process   decode, re-key (group_by) and hand each batch to the agents
    commit    when `commit_interval` passed or `commit_every` events were processed

    worker = Worker(spec, transport, settings)
    await worker.start()
    await worker.run(stop)      # until `stop` is set; then commits, leaves the group
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

from runtime.errors import (
    AgentError,
    AppError,
    RecordDecodeError,
    StreamsError,
    TableKeyNotOwnedError,
    TableWriteOutsideAgentError,
    TopicExistsError,
    TopologyError,
    UnknownTopicError,
)
from runtime.transport import READ_COMMITTED, Consumer, Producer, Transport
from runtime.types import Event, Record, TopicPartition
from runtime.worker.agents import AgentRunner
from runtime.worker.cached import StoreTableState
from runtime.worker.commit import CommitCycle
from runtime.worker.failures import (
    AgentPolicy,
    PolicySettings,
    agent_policies,
    dead_letter_headers,
    one_line,
    where,
)
from runtime.worker.ops import chain
from runtime.worker.slots import Slot, claim_slot
from runtime.worker.spec import AppSpec, RepartitionSpec, TableSpec, TopicSpec
from runtime.worker.store import MEMORY, StateStore
from runtime.worker.tables import TableState
from runtime.worker.windows import WindowedState

log = logging.getLogger(__name__)
STANDBY_INTERVAL_S = 0.5  # how often standby partitions are tailed
RESTORE_SAVE_EVERY = 100_000  # replayed keys saved to the store at once (bounded memory)
STANDBY_BATCH = 20_000  # changelog records copied per standby partition per round
KEY_CACHE_SIZE = 100_000  # decoded input keys remembered per topic
_IMMUTABLE_KEYS = frozenset((str, int, float, bool, bytes))
_new_event = tuple.__new__
MISSING: Any = object()


class WorkerSettings(PolicySettings, Protocol):
    """The settings a worker reads (streams.Settings provides them); the error policies'
    (on_error, on_decode_error, dead_letter_topic) come with PolicySettings."""

    @property
    def processing_guarantee(self) -> str: ...
    @property
    def commit_interval(self) -> float: ...
    @property
    def commit_every(self) -> int: ...
    @property
    def state_dir(self) -> str: ...
    @property
    def max_poll_records(self) -> int: ...
    @property
    def transaction_timeout_ms(self) -> int: ...
    @property
    def session_timeout_ms(self) -> int: ...
    @property
    def table_standby_replicas(self) -> int: ...
    @property
    def table_cache_size(self) -> int: ...
    @property
    def exactly_once(self) -> bool: ...


class Worker:
    store: StateStore  # set by start()
    producer: Producer
    consumer: Consumer
    cycle: CommitCycle

    def __init__(
        self,
        spec: AppSpec,
        transport: Transport,
        settings: WorkerSettings,
        *,
        worker_id: str | None = None,
        slot: int | None = None,
        fault: Callable[[str], None] | None = None,
    ) -> None:
        self.spec = spec
        self.transport = transport
        self.settings = settings
        self.worker_id = worker_id or "0"  # replaced by the claimed slot unless given
        self._claim = worker_id is None
        self._preferred_slot = slot
        self.slot: Slot | None = None
        self.fault = fault
        self.tables = {t.name: self._table_state(t) for t in spec.tables}
        self._windowed = [t for t in self.tables.values() if isinstance(t, WindowedState)]
        self._idle_closing = [t for t in self._windowed if t.window.idle_close is not None]
        self.runners = [AgentRunner(a, self._emit, self.tables) for a in spec.agents]
        self.policies: dict[str, AgentPolicy] = agent_policies(spec, settings)
        # records an agent failed on in this cycle, set aside until their offsets commit:
        # partition -> offset -> agent -> (stage, exception)
        self._set_aside: dict[TopicPartition, dict[int, dict[str, tuple[str, Exception]]]] = {}
        self._commit_soon = False  # commit at the end of this poll (a set-aside record passed)
        self.routes: dict[str, list[AgentRunner | RepartitionSpec]] = {}
        for runner in self.runners:
            self.routes.setdefault(runner.spec.topic, []).append(runner)
        for step in spec.repartitions:
            self.routes.setdefault(step.source, []).append(step)
        self._owned: set[int] = set()  # partition numbers whose tables are restored
        self._to_restore: set[int] = set()
        self._timers: list[asyncio.Task[None]] = []
        self._standby_due = 0.0
        self._standby_reader: Any = None
        self.standby_records = 0  # changelog records copied into the store as a standby
        self.restored_records = 0  # changelog records replayed when taking partitions over
        self._sink_keys: dict[
            str, dict[tuple[type, Any], bytes]
        ] = {}  # encoded output keys, per sink
        self._sinks: dict[str, list[tuple[str, TopicSpec]]] = {}  # per agent
        self._decoded_keys: dict[str, dict[bytes, Any]] = {}  # decoded input keys, per topic
        self.events_processed = 0
        # committed records that could not be processed (an aborted cycle's do not count):
        self.decode_errors = 0  # undecodable records skipped or dead-lettered
        self.skipped = 0  # records skipped by on_error="skip" (decode errors included)
        self.dead_letters = 0  # records sent to a dead-letter topic
        self._failures = collections.Counter[str]()  # the same, in the open cycle
        self.started = False
        self._clean = True  # whether stop() closes the producer (a crash leaves it)
        self._resources = contextlib.AsyncExitStack()  # what start() acquired, to release

    # --- start and stop -----------------------------------------------------------------

    def _table_state(self, spec: TableSpec) -> TableState:
        """A table's backend: windowed tables and `store="memory"` ones live in a dict, as
        do all with an in-memory store (state_dir ":memory:"); the others in the store."""
        if spec.window is not None:
            return WindowedState(spec)
        if spec.store == "memory" or self.settings.state_dir == MEMORY:
            return TableState(spec)
        return StoreTableState(spec, cache_size=self.settings.table_cache_size)

    async def start(self) -> None:
        """Claim a slot, create the topics, open the store, the producer and the consumer.
        All or nothing: if a step fails, what the earlier steps acquired is released and the
        step's own error is raised (never one of the clean-up's)."""
        try:
            await self._start()
        except BaseException:
            try:
                await self._release()
            except Exception as cleanup:  # the start-up error is the one to report
                log.warning("releasing a worker that failed to start: %s", cleanup)
            raise
        self.started = True

    async def _start(self) -> None:
        if self._claim:
            self.slot = await claim_slot(
                self.transport, self.spec.app_id, self.settings.state_dir, self._preferred_slot
            )
            self.worker_id = str(self.slot.number)
            self._resources.callback(self.slot.release)
        await self._create_topics()
        state_dir = self.settings.state_dir
        if state_dir != MEMORY:
            state_dir = os.path.join(state_dir, f"worker-{self.worker_id}")
        self.store = await StateStore.open(state_dir)
        self._resources.push_async_callback(self.store.close)
        for table in self.tables.values():
            if isinstance(table, StoreTableState):
                table.open(self.store.path)
                self._resources.callback(table.close)
        exactly_once = self.settings.exactly_once
        self.producer = self.transport.producer(
            transactional_id=f"{self.spec.app_id}-{self.worker_id}" if exactly_once else None,
            transaction_timeout_ms=self.settings.transaction_timeout_ms,
            # exactly-once: the commit cycle flushes (nothing is visible before the commit);
            # at-least-once: outputs go out as they are produced, as Kafka's producer sends
            # them, so a crash before the offsets commit repeats them
            linger_ms=1_000_000 if exactly_once else 5,
            batch_size=50_000 if exactly_once else 10_000,
        )
        self._resources.push_async_callback(self._close_producer)
        if exactly_once:
            await self.producer.init_transactions()  # fences our predecessor, aborts its work
        for table in self._windowed:
            table.bind(self.producer.produce, self.spec.topics)
        owner = "" if self.slot is None else f"@{self.slot.owner}"
        self.consumer = self.transport.consumer(
            self.spec.app_id,
            isolation=READ_COMMITTED,
            # <app>@<host>:<supervisor pid>-<slot>: who holds the slot, read by claim_slot
            client_id=f"{self.spec.app_id}{owner}-{self.worker_id}",
            session_timeout_ms=self.settings.session_timeout_ms,
            heartbeat_interval_ms=max(50, min(1000, self.settings.session_timeout_ms // 3)),
            assignor="copartitioned",  # partition p of every app topic, and of its tables
            instance_id=f"{self.spec.app_id}-{self.worker_id}",  # a restart takes over at once
            standby_replicas=self.settings.table_standby_replicas if self.tables else 0,
        )
        self._resources.push_async_callback(self.consumer.close)
        self.cycle = CommitCycle(
            self.producer,
            self.consumer,
            self.tables,
            self.store,
            exactly_once=exactly_once,
            fault=self.fault,
        )
        await self.consumer.subscribe(
            self.spec.source_topics(), on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        for runner in self.runners:
            runner.start()
            self._resources.push_async_callback(runner.stop)
        for timer in self.spec.timers:
            self._timers.append(asyncio.ensure_future(self._run_timer(timer)))
        self._last_commit = time.monotonic()
        self._since_commit = 0

    async def _create_topics(self) -> None:
        await self._check_changelogs()
        for topic in self.spec.topics.values():
            try:
                await self.transport.create_topic(
                    topic.name, topic.partitions, compacted=topic.compacted
                )
            except TopicExistsError:
                existing = await self.transport.describe_topic(topic.name)
                if existing.partitions != topic.partitions:
                    raise TopologyError(
                        f"topic {topic.name!r} has {_partitions(existing.partitions)} but app "
                        f"{self.spec.app_id!r} declares {topic.partitions} (tables and streams "
                        f"must be co-partitioned): delete the topic and create it again with "
                        f"{topic.partitions} partitions, or declare partitions="
                        f"{existing.partitions}"
                    ) from None

    async def _check_changelogs(self) -> None:
        """A table whose changelog is gone while the group has committed offsets has lost
        its state: recreating the changelog empty would restart it from nothing (a count of
        11 would become 1). Stop instead; the operator restores the topic or resets the app."""
        if not self.tables:
            return
        present = {t.name for t in await self.transport.list_topics()}
        missing = [t.changelog for t in self.spec.tables if t.changelog not in present]
        if not missing:
            return
        group = await self.transport.describe_group(self.spec.app_id)
        if group.offsets:
            raise TopologyError(
                f"changelog topic {missing[0]!r} is gone but group {self.spec.app_id!r} has "
                "committed offsets: its table cannot be restored; restore the topic, or reset "
                "the app (delete its topics and its group's offsets) to start from nothing"
            )

    async def stop(self, *, clean: bool = True) -> None:
        """Commit what was processed (if `clean`), leave the group, release everything."""
        for task in self._timers:
            task.cancel()
        try:
            if clean and self.started:
                await self.commit()
        except BaseException:
            self.started = False
            try:
                await self._release(close_producer=clean)
            except Exception as cleanup:  # the commit's error is the one to report
                log.warning("releasing the worker after a failed commit: %s", cleanup)
            raise
        self.started = False  # from here on, revocations commit nothing
        await self._release(close_producer=clean)

    async def _release(self, *, close_producer: bool = True) -> None:
        """Release what start() acquired, last first; every step runs even if one fails."""
        for task in self._timers:
            task.cancel()
        self._timers = []
        self._clean = close_producer
        resources, self._resources = self._resources, contextlib.AsyncExitStack()
        self._standby_reader = None
        await resources.aclose()

    async def _close_producer(self) -> None:
        if self._clean:
            await self.producer.close()

    async def _run_timer(self, timer: Any) -> None:
        if timer.interval is None:
            await timer.fn()
            return
        while True:
            await asyncio.sleep(timer.interval)
            try:
                await timer.fn()
            except Exception:
                log.exception("timer %s failed", timer.name)

    # --- the loop -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, progress_interval: float = 10.0) -> None:
        """Poll until `stop` is set, logging the processing rate and lag regularly."""
        last_report, last_count = time.monotonic(), self.events_processed
        while not stop.is_set():
            await self.poll(timeout=min(0.1, self.settings.commit_interval))
            now = time.monotonic()
            if now - last_report >= progress_interval:
                rate = (self.events_processed - last_count) / (now - last_report)
                log.info(
                    "worker %s: %.0f events/s, lag %d, partitions %s",
                    self.worker_id,
                    rate,
                    await self.lag(),
                    sorted(self._owned),
                )
                last_report, last_count = now, self.events_processed

    async def lag(self) -> int:
        """Records of owned partitions not processed yet (up to the last stable offset)."""
        assignment = self.consumer.assignment()
        ends = await self.consumer.end_offsets(assignment)
        return sum(max(0, end - self.consumer.position(tp)) for tp, end in ends.items())

    async def poll(self, timeout: float = 0.1) -> int:
        """One round: fetch, restore, process, maybe commit. Returns events processed."""
        batch = await self.consumer.getmany(
            timeout=timeout, max_records=self.settings.max_poll_records
        )
        if self._to_restore:
            await self._restore()
        processed = 0
        if batch:
            await self.cycle.begin()
            try:
                for tp, records in batch.items():
                    processed += await self._process(tp, records)
            except BaseException as exc:
                await self._abort()
                if not await self._setting_aside(exc):
                    raise
                return 0
            self.events_processed += processed
            self._since_commit += processed
        # Every record fetched is processed now (a set-aside cut moved its partition's
        # position back to the record after the cut): these offsets are what commits.
        consumer = self.consumer
        self.cycle.track({tp: consumer.position(tp) for tp in consumer.assignment()})
        now = time.monotonic()
        if self._idle_closing and any(t.idle_due(now) for t in self._idle_closing):
            await self.cycle.begin()  # idle partitions close their windows
            for table in self._idle_closing:
                table.close_idle(now)
        if self._standby_due <= now and self.settings.table_standby_replicas and self.tables:
            self._standby_due = now + STANDBY_INTERVAL_S
            await self._tail_standbys()
        due = now - self._last_commit >= self.settings.commit_interval
        soon, self._commit_soon = self._commit_soon, False
        if self.cycle.open and (due or soon or self._since_commit >= self.settings.commit_every):
            await self.commit()
        return processed

    async def commit(self) -> None:
        if not self.cycle.open:
            return
        try:
            for runner in self.runners:
                await runner.flush()  # events held by take() are processed before a commit
            await self.cycle.commit()
        except UnknownTopicError as exc:  # deleted under us: restarting would recreate it empty
            await self._abort()
            raise TopologyError(
                f"{exc} (a topic of app {self.spec.app_id!r} was deleted while it ran): restore "
                "the topic, or reset the app (delete its topics and its group's offsets)"
            ) from exc
        except StreamsError as exc:
            await self._abort()
            if not await self._setting_aside(exc):
                raise
            return
        self._last_commit = time.monotonic()
        self._since_commit = 0
        if self._failures:
            self._count_failures()
        if self._set_aside:
            self._forget_set_aside()

    async def _abort(self) -> None:
        self._failures.clear()
        try:
            await self.cycle.abort()
        except StreamsError as exc:
            log.error("abort failed: %s", exc)

    # --- processing ---------------------------------------------------------------------

    def _decode(
        self, topic: TopicSpec, records: list[Record]
    ) -> tuple[list[Event], list[tuple[Record, Exception]]]:
        """The records as events, and those that could not be decoded (with why)."""
        decode_key, decode_value = topic.key.decode, topic.value.decode
        keys = self._decoded_keys.setdefault(topic.name, {})
        events: list[Event] = []
        append = events.append
        bad: list[tuple[Record, Exception]] = []
        for r in records:
            name, partition, offset, raw_key, raw_value, timestamp, headers = r
            if raw_key is None:
                key = None
            else:
                key = keys.get(raw_key, MISSING)
                if key is MISSING:
                    try:
                        key = decode_key(raw_key)
                    except (ValueError, TypeError) as exc:
                        bad.append((r, _DecodeFailure("key", topic.key.name, exc)))
                        continue
                    if type(key) in _IMMUTABLE_KEYS:  # the same object each time is safe
                        if len(keys) >= KEY_CACHE_SIZE:
                            keys.clear()
                        keys[raw_key] = key
            try:
                value = None if raw_value is None else decode_value(raw_value)
            except (ValueError, TypeError) as exc:
                bad.append((r, _DecodeFailure("value", topic.value.name, exc)))
                continue
            append(_new_event(Event, (key, value, headers, timestamp, name, partition, offset)))
        return events, bad

    async def _process(self, tp: TopicPartition, records: list[Record]) -> int:
        routes = self.routes.get(tp.topic)
        if not routes:
            return 0
        set_aside = self._set_aside.get(tp)
        if set_aside:
            records = self._up_to_set_aside(tp, records, set_aside)
        events, bad = self._decode(self.spec.topics[tp.topic], records)
        if bad:
            self._failures["decode_errors"] += len(bad)
        for route in routes:
            if isinstance(route, RepartitionSpec):
                policy = self.policies[route.agent] if route.agent else None
                for record, failure in bad:
                    self._failed(route.agent, policy, "decode", record, failure)
                self._repartition(route, events, records)
                continue
            name = route.spec.name
            for record, failure in bad:
                self._failed(name, self.policies[name], "decode", record, failure)
            if set_aside:
                await route.process(self._without_set_aside(name, set_aside, events, records))
            else:
                await route.process(events)
        return len(records)

    def _repartition(
        self, step: RepartitionSpec, events: list[Event], records: list[Record]
    ) -> None:
        target = self.spec.topics[step.target]
        encode_key, encode_value = target.key.encode, target.value.encode
        produce = self.producer.produce
        key_fn = step.key_fn
        values_of = chain(step.ops)
        for event in events:
            try:
                # every value the event becomes, encoded before any is produced: a failure
                # on its third value must not leave the first two in the repartition topic
                out = []
                for value in values_of(event.value):  # none if filtered, several (flat_map)
                    if key_fn is None:  # through(): the event's own key
                        key_bytes = None if event.key is None else encode_key(event.key)
                    else:
                        key_bytes = encode_key(key_fn(value))
                    out.append((key_bytes, encode_value(value)))
            except Exception as exc:
                policy = self.policies[step.agent] if step.agent else None
                self._failed(step.agent, policy, "group_by", _record_at(records, event), exc)
                continue
            for key_bytes, value_bytes in out:
                produce(
                    step.target,
                    value_bytes,
                    key_bytes,
                    headers=event.headers,
                    timestamp=event.timestamp,
                )

    def _emit(self, runner: AgentRunner, output: Any) -> None:
        """Send an agent's output to its sinks, keyed by the event being processed."""
        event = runner.inbox.current
        key = None if event is None else event.key
        produce = self.producer.produce
        sinks = self._sinks.get(runner.spec.name)
        if sinks is None:
            sinks = self._sinks[runner.spec.name] = [
                (name, self.spec.topics[name]) for name in runner.spec.sinks
            ]
        for name, sink in sinks:
            if key is None:
                key_bytes = None
            else:
                cache = self._sink_keys.get(name)
                key_bytes = None if cache is None else cache.get((type(key), key))
                if key_bytes is None:
                    key_bytes = self._sink_key(name, sink, key)
            produce(name, None if output is None else sink.value.encode(output), key_bytes)

    # --- records that cannot be processed (runtime/worker/failures.py) -------------------

    def _failed(
        self,
        agent: str,
        policy: AgentPolicy | None,
        stage: str,
        record: Record,
        exc: Exception,
    ) -> None:
        """Apply the agent's policy to a record it cannot process: raise RecordError (fail),
        log and count it (skip), or send it unchanged to the dead-letter topic in this
        cycle's transaction (dead_letter)."""
        if policy is None:
            action = "fail"
        else:
            action = policy.on_decode_error if stage == "decode" else policy.on_error
        cause = exc.__cause__ if isinstance(exc, _DecodeFailure) else exc
        assert isinstance(cause, BaseException)
        line = f"{_describe(agent, stage, exc)} at {where(record)}: {_reason(exc)}"
        if action == "fail":
            error_type = RecordDecodeError if stage == "decode" else AgentError
            raise error_type(line, events=[record], agent=agent, stage=stage) from cause
        if action == "skip":
            self._failures["skipped"] += 1
            log.warning("%s; skipped (on_error=skip%s)", line, _of_agent(agent, stage))
            return
        assert policy is not None and policy.dead_letter is not None
        topic = policy.dead_letter
        self._failures["dead_letters"] += 1
        self.producer.produce(
            topic.name,
            record.value,
            record.key,
            partition=record.partition % topic.partitions,
            headers=dead_letter_headers(record, agent, stage, cause),
            timestamp=record.timestamp,
        )
        log.warning("%s; sent to %s%s", line, topic.name, _of_agent(agent, stage))

    async def _setting_aside(self, exc: BaseException) -> bool:
        """After an aborted cycle: if an agent failed on records and its policy is skip or
        dead_letter, remember them (the redone cycle passes them to the policy instead of
        the agent) and restart every agent afresh; True then. False: the error stands."""
        if not isinstance(exc, AgentError) or not exc.events or exc.agent is None:
            return False
        policy = self.policies.get(exc.agent)
        cause = exc.__cause__
        if policy is None or policy.on_error == "fail" or not isinstance(cause, Exception):
            return False
        if _not_the_records(cause):
            return False  # the app's topology or the broker: no record is at fault
        for event in exc.events:
            tp = TopicPartition(event.topic, event.partition)
            agents = self._set_aside.setdefault(tp, {}).setdefault(event.offset, {})
            if exc.agent in agents:
                return False  # failed again although set aside: do not loop
            agents[exc.agent] = (exc.stage, cause)
        log.info("%s; redoing the cycle without it (on_error=%s)", exc, policy.on_error)
        for runner in self.runners:
            await runner.restart()
        return True

    def _up_to_set_aside(
        self,
        tp: TopicPartition,
        records: list[Record],
        set_aside: dict[int, dict[str, tuple[str, Exception]]],
    ) -> list[Record]:
        """The records of `tp` up to its last set-aside one; the consumer goes back to the
        one after it, and the cycle commits at the end of this poll. So a redone cycle ends
        right after the record that failed, and a next failing record redoes only what
        follows it."""
        if not records:
            return records
        first, last = records[0].offset, records[-1].offset
        cut = max((o for o in set_aside if first <= o <= last), default=None)
        if cut is None or cut == last:
            if cut is not None:
                self._commit_soon = True
            return records
        self.consumer.seek(tp, cut + 1)
        self._commit_soon = True
        return [r for r in records if r.offset <= cut]

    def _without_set_aside(
        self,
        agent: str,
        set_aside: dict[int, dict[str, tuple[str, Exception]]],
        events: list[Event],
        records: list[Record],
    ) -> list[Event]:
        """`events` without those `agent` failed on, which get its policy instead."""
        kept = []
        for event in events:
            failed = set_aside.get(event.offset, {}).get(agent)
            if failed is None:
                kept.append(event)
                continue
            stage, exc = failed
            self._failed(agent, self.policies[agent], stage, _record_at(records, event), exc)
        return kept

    def _count_failures(self) -> None:
        self.decode_errors += self._failures["decode_errors"]
        self.skipped += self._failures["skipped"]
        self.dead_letters += self._failures["dead_letters"]
        self._failures.clear()

    def _forget_set_aside(self) -> None:
        """Drop set-aside records whose offsets are committed (or no longer ours)."""
        assignment = self.consumer.assignment()
        for tp in list(self._set_aside):
            if tp not in assignment:
                del self._set_aside[tp]
                continue
            position = self.cycle.processed.get(tp, 0)  # committed: processed, after a commit
            offsets = self._set_aside[tp]
            for offset in [o for o in offsets if o < position]:
                del offsets[offset]
            if not offsets:
                del self._set_aside[tp]

    def _sink_key(self, name: str, sink: TopicSpec, key: Any) -> bytes:
        """The encoded output key, cached per sink; by (type, key), since 1, 1.0 and True are
        equal dict keys but encode differently. Unhashable keys are encoded each time."""
        cache = self._sink_keys.setdefault(name, {})
        try:
            cached = cache.get((type(key), key))
        except TypeError:
            return sink.key.encode(key)
        if cached is None:
            if len(cache) >= 100_000:
                cache.clear()
            cached = cache[(type(key), key)] = sink.key.encode(key)
        return cached

    # --- assignment ---------------------------------------------------------------------

    async def _on_revoke(self, tps: set[TopicPartition]) -> None:
        # Runs inside getmany, between batches: commit what was processed, then let go.
        if self.started:
            await self.commit()
        self.cycle.forget(tps)
        remaining = {tp.partition for tp in self.consumer.assignment() - tps}
        for partition in self._owned - remaining:
            for table in self.tables.values():
                table.detach(partition)
            self._owned.discard(partition)
        self._to_restore &= remaining
        log.info("worker %s: revoked %s", self.worker_id, sorted(tps))

    async def _on_assign(self, tps: set[TopicPartition]) -> None:
        # Runs inside getmany before it fetches, so the positions are those of processed
        # events: commit them now, so that no transaction stays open (and may time out)
        # during the restore. Then bookkeeping only: the loop restores the tables before
        # any event of the new partitions is processed.
        self.cycle.start(tps)  # their starting offsets: nothing of them is processed yet
        if self.started:
            await self.commit()
        self._to_restore |= {tp.partition for tp in tps} - self._owned
        log.info("worker %s: assigned %s", self.worker_id, sorted(tps))

    async def _restore(self) -> None:
        partitions, self._to_restore = sorted(self._to_restore), set()
        if not self.tables:
            self._owned.update(partitions)
            return
        started = time.monotonic()
        restored = 0
        reader = self.transport.consumer(isolation=READ_COMMITTED)
        try:
            for table in self.tables.values():
                for partition in partitions:
                    restored += await self._restore_partition(reader, table, partition)
        finally:
            await reader.close()
        self._owned.update(partitions)
        self.restored_records += restored
        log.info(
            "worker %s: restored %d changelog records for partitions %s in %.3f s",
            self.worker_id,
            restored,
            partitions,
            time.monotonic() - started,
        )

    async def _tail_standbys(self) -> None:
        """Copy new changelog records of standby partitions into the local store (rows and
        checkpoint together, as a restore does), a bounded amount per call, so that taking
        such a partition over replays only what was written since."""
        partitions = {tp.partition for tp in self.consumer.standby()}
        partitions -= self._owned | self._to_restore
        if not partitions:
            return
        if self._standby_reader is None:
            self._standby_reader = self.transport.consumer(isolation=READ_COMMITTED)
            self._resources.push_async_callback(self._standby_reader.close)
        for table in self.tables.values():
            for partition in sorted(partitions):
                self.standby_records += await self._tail(table, partition)

    async def _tail(self, table: TableState, partition: int) -> int:
        tp = TopicPartition(table.spec.changelog, partition)
        checkpoint, info = await self._fitting_checkpoint(
            table, tp, await self.store.checkpoint(table.spec.name, partition)
        )
        start = info.log_start if checkpoint is None else checkpoint
        if start >= info.last_stable:
            return 0
        reader = self._standby_reader
        await reader.assign([tp])
        reader.seek(tp, start)
        batch = await reader.getmany(timeout=0, max_records=STANDBY_BATCH)
        records = batch.get(tp, [])
        if reader.position(tp) > start:
            await self._save_copy(
                table,
                partition,
                {r.key: r.value for r in records if r.key is not None},
                reader.position(tp),
            )
        return len(records)

    async def _fitting_checkpoint(
        self, table: TableState, tp: TopicPartition, checkpoint: int | None
    ) -> tuple[int | None, Any]:
        """The store's checkpoint of a changelog partition if it fits the changelog (and the
        partition's offsets); one that does not (ahead of its end, behind its start) means
        the store's copy is not a prefix of it: the copy is wiped and None returned."""
        info = await self.transport.partition_info(tp.topic, tp.partition)
        if checkpoint is None or info.log_start <= checkpoint <= info.high_watermark:
            return checkpoint, info
        log.warning(
            "store checkpoint %d of %s does not fit the changelog (%d..%d): rebuilding",
            checkpoint,
            tp,
            info.log_start,
            info.high_watermark,
        )
        await self.store.wipe(table.spec.name, tp.partition)
        return None, info

    async def _save_copy(
        self, table: TableState, partition: int, latest: dict[bytes, bytes | None], position: int
    ) -> None:
        """Save changelog rows (latest value per key) with the offset they reach, together:
        the store must equal the changelog up to its checkpoint, or a later checkpoint would
        claim rows it never got."""
        await self.store.save(
            [(table.spec.name, partition, key, value) for key, value in latest.items()],
            {(table.spec.name, partition): position},
        )

    async def _settled_end(self, tp: TopicPartition) -> int:
        """The changelog's end once no transaction is open on it. We own the partition, so an
        open transaction there is a previous owner's (dead or fenced): it ends when that
        worker restarts or when it times out. Restoring only up to it could miss records
        committed after it began."""
        waited = False
        deadline = time.monotonic() + self.settings.transaction_timeout_ms / 1000 + 30
        while True:
            info = await self.transport.partition_info(tp.topic, tp.partition)
            if info.last_stable >= info.high_watermark or time.monotonic() > deadline:
                return info.last_stable
            if not waited:
                log.info(
                    "worker %s: waiting for a previous owner's transaction on %s to end",
                    self.worker_id,
                    tp,
                )
                waited = True
            await asyncio.sleep(0.05)

    async def _restore_partition(self, reader: Any, table: TableState, partition: int) -> int:
        tp = TopicPartition(table.spec.changelog, partition)
        if table.loads_rows:
            rows, stored = await self.store.load(table.spec.name, partition)
        else:  # a store-backed table reads its rows where they are
            rows, stored = {}, await self.store.checkpoint(table.spec.name, partition)
        checkpoint, info = await self._fitting_checkpoint(table, tp, stored)
        if checkpoint is None:
            rows = {}
        table.attach(partition, rows)
        start = info.log_start if checkpoint is None else checkpoint
        end = await self._settled_end(tp)
        if start >= end:
            table.restored(partition)
            return 0
        await reader.assign([tp])
        reader.seek(tp, start)
        count = 0
        replayed: dict[bytes, bytes | None] = {}  # latest value per key, as the changelog says
        progress = _Progress(f"restoring {tp.topic}[{partition}]", start, end)
        while reader.position(tp) < end:
            progress.show(reader.position(tp))
            before = reader.position(tp)
            batch = await reader.getmany(timeout=5.0, max_records=10_000)
            records = batch.get(tp, [])
            if not records and reader.position(tp) == before:
                raise StreamsError(f"restore of {tp} stalled at offset {before} (end {end})")
            table.apply_changelog(partition, records)
            for record in records:
                if record.key is not None:
                    replayed[record.key] = record.value
            count += len(records)
            if len(replayed) >= RESTORE_SAVE_EVERY:  # a prefix of the changelog: consistent
                await self._save_copy(table, partition, replayed, reader.position(tp))
                replayed = {}
        progress.done()
        table.restored(partition)
        await self._save_copy(table, partition, replayed, reader.position(tp))
        return count


class _Progress:
    """Restore progress: a bar on a terminal (stderr), a log line every 5 s otherwise."""

    def __init__(self, what: str, start: int, end: int) -> None:
        self.what, self.start, self.total = what, start, max(1, end - start)
        self.tty = sys.stderr.isatty()
        self.next = time.monotonic() + (0.2 if self.tty else 5.0)
        self.shown = False

    def show(self, position: int) -> None:
        now = time.monotonic()
        if now < self.next:
            return
        self.next = now + (0.2 if self.tty else 5.0)
        done = position - self.start
        fraction = min(1.0, done / self.total)
        if self.tty:
            bar = "#" * int(fraction * 30)
            sys.stderr.write(f"\r{self.what} [{bar:<30}] {fraction:4.0%} {done}/{self.total}")
            sys.stderr.flush()
            self.shown = True
        else:
            log.info(
                "%s: %d of %d changelog records (%.0f%%)",
                self.what,
                done,
                self.total,
                fraction * 100,
            )

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()


class _DecodeFailure(Exception):
    """Why a record could not be decoded (its cause is the codec's exception)."""

    def __init__(self, part: str, codec: str, exc: Exception) -> None:
        super().__init__(str(exc))
        self.part, self.codec = part, codec
        self.__cause__ = exc


def _describe(agent: str, stage: str, exc: Exception) -> str:
    if isinstance(exc, _DecodeFailure):
        return f"cannot decode the {exc.part} (codec {exc.codec})"
    if stage == "group_by":
        return f"agent {agent!r}: its group_by failed"
    if stage == "sink":
        return f"agent {agent!r} failed encoding its output"
    return f"agent {agent!r} failed"


def _of_agent(agent: str, stage: str) -> str:
    return f", agent {agent!r}" if stage == "decode" else ""


def _reason(exc: Exception) -> str:
    return one_line(str(exc)) if isinstance(exc, _DecodeFailure) else one_line(repr(exc))


def _not_the_records(exc: BaseException) -> bool:
    """Errors that say the app's topology or the broker is wrong, not the record: they stop
    the worker whatever the policy."""
    if isinstance(exc, (TableKeyNotOwnedError, TableWriteOutsideAgentError)):
        return True
    return isinstance(exc, StreamsError) and not isinstance(exc, AppError)


def _record_at(records: list[Record], event: Event) -> Record:
    """The record an event was decoded from (a rare path: failures only)."""
    for record in records:
        if record.offset == event.offset:
            return record
    raise AppError(f"no record at {where(event)} in this batch")  # cannot happen


def _partitions(n: int) -> str:
    return f"{n} partition" if n == 1 else f"{n} partitions"


__all__ = ["Worker", "WorkerSettings"]
