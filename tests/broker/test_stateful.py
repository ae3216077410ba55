"""Stateful property test: the synchronous broker core against a small reference model of the log.

A hypothesis state machine drives one `Broker` (an SQLite file, a fake clock, one topic of three
partitions) through random interleavings of:

- idempotent producers: new batches (one call may span partitions and is all or nothing),
  resends of one of the last five batches (acknowledged with the original offset, not written
  again), resends of older batches and sequence gaps (OutOfOrderSequenceError), restarts. As in
  Kafka, a producer's first batch on a partition may start at any sequence; after that, and
  from 0 in every new epoch, sequences must be contiguous;
- transactional producers: writes, commits, aborts, crashes (a new instance of the same
  transactional id aborts what the old one left open), zombies (fenced epochs) that write,
  resend, end transactions or send offsets, and transactions that outlive their timeout;
- a consumer group: members that join, heartbeat (releasing what they are asked to revoke) and
  leave, and commit offsets directly or through transactions, with their current generation, an
  older one (refused for partitions granted since) or one from the future (refused);
- consumers: fetches from any offset, in both isolation levels, with small record budgets;
- closing and reopening the broker file.

The model keeps one slot per offset and partition (a plain record, a transactional record or a
control marker) and the fate of every transaction. After every step, for every partition: paged
full reads in both isolation levels equal the model (offsets, keys, values, timestamps,
headers), so offsets are contiguous and nothing is lost, duplicated or read uncommitted; the
high watermark, last stable offset, log start and batch count equal the model's; and the
group's committed offsets and ownership equal the model's, with UnstableOffsetCommitError
exactly while an open transaction holds offsets for a partition.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from runtime import errors
from runtime.broker import READ_COMMITTED, READ_UNCOMMITTED, Broker, ProduceBatch
from runtime.types import GroupMetadata, Record, TopicPartition

TOPIC = "t"
PARTITIONS = 3
TPS = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
GROUP = "g"
RECENT_BATCHES = 5  # batches per (producer, partition) the broker deduplicates against
NEVER_MS = 10**12  # session and rebalance timeouts that no clock advance reaches
IDEMPOTENT = ("i0", "i1")
TRANSACTIONAL = ("tx0", "tx1")
PRODUCERS = IDEMPOTENT + TRANSACTIONAL
MEMBERS = ("m0", "m1")
ISOLATIONS = (READ_COMMITTED, READ_UNCOMMITTED)
PAGE = {READ_COMMITTED: 3, READ_UNCOMMITTED: 7}  # records per fetch in the full reads

OPEN, COMMITTED, ABORTED = "open", "committed", "aborted"

# (key, tombstone, timestamp, headers) of a record; (partition, records) of a batch
RecordSpec = tuple[bytes | None, bool, int, list[tuple[str, bytes]] | None]
BatchSpec = tuple[int, list[RecordSpec]]

partitions = st.integers(0, PARTITIONS - 1)
timeouts = st.sampled_from([300, 1_000, 5_000, 60_000])
header_lists = st.one_of(
    st.none(),
    st.lists(
        st.tuples(st.sampled_from(["h", "trace"]), st.binary(max_size=3)), min_size=1, max_size=2
    ),
)
# values are made unique by the machine
record_specs = st.lists(
    st.tuples(
        st.sampled_from([None, b"", b"a", b"b"]), st.booleans(), st.integers(0, 2**41), header_lists
    ),
    min_size=1,
    max_size=4,
)
batch_specs = st.lists(st.tuples(partitions, record_specs), min_size=1, max_size=3)
# (index of the batch to corrupt, how far its base sequence is off), in one call out of four
seq_faults = st.one_of(
    st.none(),
    st.none(),
    st.none(),
    st.tuples(st.integers(0, 2), st.sampled_from([-7, -2, -1, 1, 3])),
)
# which generation a commit carries: 0 the member's latest, k an older one, -1 a future one
ages = st.one_of(st.just(0), st.just(0), st.integers(-1, 3))
offset_maps = st.dictionaries(partitions, st.integers(0, 200), min_size=1, max_size=PARTITIONS)


# --- the reference model ---------------------------------------------------------------------


@dataclass(eq=False)
class Txn:
    deadline: int
    state: str = OPEN
    first_offsets: dict[int, int] = field(default_factory=dict)  # partition -> first offset
    offsets: dict[TopicPartition, int] = field(default_factory=dict)  # pending group offsets


@dataclass
class Slot:
    """One offset of a partition: a record, or a control marker (record None)."""

    record: Record | None
    txn: Txn | None


@dataclass
class Sent:
    """A batch the broker wrote for a producer in its current epoch."""

    batch: ProduceBatch
    transactional: bool
    offset: int

    @property
    def next_seq(self) -> int:
        return self.batch.base_seq + len(self.batch.values)


@dataclass(eq=False)
class Producer:
    """A producer client as it sees itself: `fenced` is set when the broker moved its epoch on
    behind its back (a timeout), or for zombies (instances replaced or ended)."""

    pid: int
    epoch: int
    txn_id: str | None = None
    timeout_ms: int = 60_000
    sent: dict[int, list[Sent]] = field(default_factory=dict)
    txn: Txn | None = None
    fenced: bool = False

    def next_seq(self, partition: int) -> int:
        sent = self.sent.get(partition)
        return sent[-1].next_seq if sent else 0

    def zombie(self) -> Producer:
        return Producer(
            self.pid,
            self.epoch,
            self.txn_id,
            self.timeout_ms,
            copy.deepcopy(self.sent),
            None,
            fenced=True,
        )


@dataclass
class Member:
    member_id: str
    generations: list[int]  # the distinct generations it was told, oldest first
    active: bool = True
    acquired: dict[TopicPartition, int] = field(default_factory=dict)  # owned -> granted in
    revoking: frozenset[TopicPartition] = frozenset()

    @property
    def owned(self) -> frozenset[TopicPartition]:
        return frozenset(self.acquired)

    def metadata(self, generation: int) -> GroupMetadata:
        return GroupMetadata(GROUP, generation, self.member_id)

    def offsets_error(
        self, offsets: dict[TopicPartition, int], generation: int, group_generation: int
    ) -> type[Exception] | None:
        """What the broker must raise when this member commits `offsets` with `generation`:
        only a live member may commit, only partitions it owns, and only with a generation no
        older than the one each partition was granted in, and not ahead of the group's."""
        if not self.active:
            return errors.UnknownMemberIdError
        if not set(offsets) <= self.owned:
            return errors.IllegalGenerationError
        if generation > group_generation or any(self.acquired[tp] > generation for tp in offsets):
            return errors.IllegalGenerationError
        return None


class Model:
    def __init__(self) -> None:
        self.slots: list[list[Slot]] = [[] for _ in range(PARTITIONS)]
        self.batches = [0] * PARTITIONS
        self.producers: dict[str, Producer] = {}
        self.zombies: list[Producer] = []
        self.sequenced: set[tuple[int, int]] = set()  # (pid, partition) with sequence state
        self.members: dict[str, Member] = {}  # by client name, including members that left
        self.committed: dict[TopicPartition, int] = {}

    # --- views ----------------------------------------------------------------------------

    def open_txns(self) -> list[Txn]:
        return [p.txn for p in self.producers.values() if p.txn is not None]

    def high_watermark(self, partition: int) -> int:
        return len(self.slots[partition])

    def last_stable(self, partition: int) -> int:
        return min(
            (t.first_offsets[partition] for t in self.open_txns() if partition in t.first_offsets),
            default=self.high_watermark(partition),
        )

    def end_offset(self, partition: int, isolation: str) -> int:
        if isolation == READ_COMMITTED:
            return self.last_stable(partition)
        return self.high_watermark(partition)

    def visible(self, partition: int, isolation: str) -> list[Record]:
        """What a consumer must see, in offset order."""
        slots = self.slots[partition][: self.end_offset(partition, isolation)]
        if isolation == READ_UNCOMMITTED:
            return [s.record for s in slots if s.record is not None]
        assert all(s.txn is None or s.txn.state != OPEN for s in slots), "open txn below LSO"
        return [
            s.record
            for s in slots
            if s.record is not None and (s.txn is None or s.txn.state == COMMITTED)
        ]

    def pending_offsets(self) -> set[TopicPartition]:
        return {tp for t in self.open_txns() for tp in t.offsets}

    # --- changes --------------------------------------------------------------------------

    def produce(
        self, producer: Producer, batches: list[ProduceBatch], transactional: bool, now: int
    ) -> list[int]:
        """Apply one produce call and return its base offsets, or raise the error the broker
        must raise (the caller then throws this copy of the model away)."""
        if producer.fenced:
            raise errors.ProducerFencedError
        offsets = []
        for batch in batches:
            sent = producer.sent.setdefault(batch.partition, [])
            count = len(batch.values)
            duplicate = [
                s.offset
                for s in sent[-RECENT_BATCHES:]
                if s.batch.base_seq == batch.base_seq and len(s.batch.values) == count
            ]
            if duplicate:
                offsets.append(duplicate[0])
                continue
            known = (producer.pid, batch.partition) in self.sequenced
            if known and batch.base_seq != producer.next_seq(batch.partition):
                raise errors.OutOfOrderSequenceError
            if transactional and producer.txn_id is None:
                raise errors.InvalidTxnStateError
            if not transactional and producer.txn is not None:
                raise errors.InvalidTxnStateError
            txn = None
            if transactional:
                txn = self.begin(producer, now)
            base = self.append(batch, txn)
            if txn is not None:
                txn.first_offsets.setdefault(batch.partition, base)
            sent.append(Sent(batch, transactional, base))
            self.sequenced.add((producer.pid, batch.partition))
            offsets.append(base)
        return offsets

    def begin(self, producer: Producer, now: int) -> Txn:
        if producer.txn is None:
            producer.txn = Txn(now + producer.timeout_ms)
        return producer.txn

    def append(self, batch: ProduceBatch, txn: Txn | None) -> int:
        slots = self.slots[batch.partition]
        base = len(slots)
        headers = batch.headers or [None] * len(batch.values)
        for i, (key, value, ts) in enumerate(
            zip(batch.keys, batch.values, batch.timestamps, strict=True)
        ):
            record = Record(TOPIC, batch.partition, base + i, key, value, ts, headers[i])
            slots.append(Slot(record, txn))
        self.batches[batch.partition] += 1
        return base

    def end(self, producer: Producer, commit: bool) -> None:
        """Close the producer's open transaction: one marker per partition it wrote to."""
        txn = producer.txn
        assert txn is not None
        for partition in sorted(txn.first_offsets):
            self.slots[partition].append(Slot(None, txn))
            self.batches[partition] += 1
        txn.state = COMMITTED if commit else ABORTED
        if commit:
            self.committed.update(txn.offsets)
        producer.txn = None
        producer.sent = {}

    def expire(self, now: int) -> list[int]:
        """Abort transactions past their deadline and fence their producers; returns pids."""
        expired = []
        for producer in self.producers.values():
            if producer.txn is not None and producer.txn.deadline < now:
                self.end(producer, commit=False)
                producer.fenced = True
                expired.append(producer.pid)
        return expired


# --- the state machine -----------------------------------------------------------------------


class BrokerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="broker-stateful-")
        self.path = str(Path(self.dir, "broker.db"))
        self.now = 1_000_000
        self.serial = 0
        self.model = Model()
        self.broker = self.open_broker()
        self.broker.create_topic(TOPIC, PARTITIONS)

    def open_broker(self) -> Broker:
        return Broker(self.path, synchronous="off", clock=lambda: self.now)

    def teardown(self) -> None:
        self.broker.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @initialize(txn_timeouts=st.tuples(timeouts, timeouts))
    def start_producers(self, txn_timeouts: tuple[int, int]) -> None:
        for name in IDEMPOTENT:
            pid, epoch = self.broker.init_producer_id()
            assert epoch == 0
            self.model.producers[name] = Producer(pid, epoch)
        for name, timeout in zip(TRANSACTIONAL, txn_timeouts, strict=True):
            pid, epoch = self.broker.init_producer_id(name, transaction_timeout_ms=timeout)
            self.model.producers[name] = Producer(pid, epoch, name, timeout)
        pids = [p.pid for p in self.model.producers.values()]
        assert len(set(pids)) == len(pids)
        self.join(MEMBERS[0])
        self.heartbeat(MEMBERS[0], release=False)
        assert self.model.members[MEMBERS[0]].owned == frozenset(TPS)

    # --- helpers --------------------------------------------------------------------------

    def make_batches(
        self,
        producer: Producer,
        specs: list[BatchSpec],
        fault: tuple[int, int] | None = None,
    ) -> list[ProduceBatch]:
        """Batches with the next sequences (one of them off by `fault`, if given, but never
        negative) and values unique across the whole run."""
        next_seq: dict[int, int] = {}
        batches = []
        for i, (partition, records) in enumerate(specs):
            seq = next_seq.get(partition, producer.next_seq(partition))
            if fault is not None and fault[0] % len(specs) == i:
                base = abs(seq + fault[1])
            else:
                base = seq
                next_seq[partition] = seq + len(records)
            values = []
            for _, tombstone, _, _ in records:
                self.serial += 1
                values.append(None if tombstone else b"v%d" % self.serial)
            batches.append(
                ProduceBatch(
                    TOPIC,
                    partition,
                    base,
                    [r[0] for r in records],
                    values,
                    [r[2] for r in records],
                    [r[3] for r in records],
                )
            )
        return batches

    def produce_and_check(
        self, producer: Producer, batches: list[ProduceBatch], transactional: bool
    ) -> None:
        trial, trial_producer = copy.deepcopy((self.model, producer))
        try:
            expected = trial.produce(trial_producer, batches, transactional, self.now)
        except errors.StreamsError as exc:
            with pytest.raises(type(exc)):
                self.broker.produce(
                    producer.pid, producer.epoch, batches, transactional=transactional
                )
            return
        offsets = self.broker.produce(
            producer.pid, producer.epoch, batches, transactional=transactional
        )
        assert offsets == expected
        self.model = trial

    def member(self, name: str) -> Member | None:
        return self.model.members.get(name)

    def restart_transactional(self, name: str, timeout: int) -> None:
        """A new instance of transactional id `name`: it fences the old one, which becomes a
        zombie, and aborts whatever the old one left open."""
        old = self.model.producers[name]
        pid, epoch = self.broker.init_producer_id(name, transaction_timeout_ms=timeout)
        assert pid == old.pid
        assert epoch > old.epoch
        if old.txn is not None:
            self.model.end(old, commit=False)
        self.model.zombies.append(old.zombie())
        self.model.producers[name] = Producer(pid, epoch, name, timeout)

    def recover_if_fenced(self, name: str) -> None:
        """What a client does after ProducerFencedError (its transaction timed out): start a
        new instance."""
        producer = self.model.producers[name]
        if producer.fenced:
            self.restart_transactional(name, producer.timeout_ms)

    # --- idempotent and transactional producers ---------------------------------------------

    @rule(name=st.sampled_from(IDEMPOTENT), specs=batch_specs, fault=seq_faults)
    def produce(self, name: str, specs: list[BatchSpec], fault: tuple[int, int] | None) -> None:
        """Plain batches, possibly to several partitions in one call; a faulty sequence makes
        the whole call fail."""
        producer = self.model.producers[name]
        batches = self.make_batches(producer, specs, fault)
        self.produce_and_check(producer, batches, transactional=False)

    @rule(name=st.sampled_from(TRANSACTIONAL), specs=batch_specs, fault=seq_faults)
    def produce_transactional(
        self, name: str, specs: list[BatchSpec], fault: tuple[int, int] | None
    ) -> None:
        """Transactional batches; the first one starts a transaction."""
        producer = self.model.producers[name]
        batches = self.make_batches(producer, specs, fault)
        self.produce_and_check(producer, batches, transactional=True)
        self.recover_if_fenced(name)

    @rule(name=st.sampled_from(PRODUCERS), specs=batch_specs)
    def produce_in_the_other_mode(self, name: str, specs: list[BatchSpec]) -> None:
        """Transactional batches from an idempotent producer are refused; plain batches from a
        transactional producer only while it has no open transaction."""
        producer = self.model.producers[name]
        batches = self.make_batches(producer, specs)
        self.produce_and_check(producer, batches, transactional=producer.txn_id is None)
        self.recover_if_fenced(name)

    @rule(
        pick=st.integers(0, 10**6),
        back=st.one_of(st.integers(0, 1), st.integers(0, RECENT_BATCHES + 2)),
    )
    def resend(self, pick: int, back: int) -> None:
        """A lost acknowledgement: a producer sends again the batch it sent `back` batches ago
        to some partition (or its oldest one there). One of the last five is acknowledged with
        its original offset; an older one is OutOfOrderSequence."""
        candidates = [
            (name, sent)
            for name, producer in self.model.producers.items()
            for sent in producer.sent.values()
            if sent
        ]
        if not candidates:
            return
        name, sent = candidates[pick % len(candidates)]
        original = sent[-1 - min(back, len(sent) - 1)]
        self.produce_and_check(self.model.producers[name], [original.batch], original.transactional)
        self.recover_if_fenced(name)

    @rule(name=st.sampled_from(IDEMPOTENT))
    def restart_idempotent_producer(self, name: str) -> None:
        pid, epoch = self.broker.init_producer_id()
        assert epoch == 0
        assert pid not in {p.pid for p in self.model.producers.values()}
        self.model.producers[name] = Producer(pid, epoch)

    @rule(pick=st.integers(0, 3), commit=st.booleans())
    def end_transaction(self, pick: int, commit: bool) -> None:
        """Commit or abort (producers with an open transaction are picked more often)."""
        names = sorted(TRANSACTIONAL, key=lambda n: self.model.producers[n].txn is None)
        self.finish_transaction(names[pick % len(names)], commit)

    def finish_transaction(self, name: str, commit: bool) -> None:
        producer = self.model.producers[name]
        if producer.fenced:
            with pytest.raises(errors.ProducerFencedError):
                self.broker.end_transaction(producer.pid, producer.epoch, commit)
            self.recover_if_fenced(name)
            return
        if producer.txn is None:
            with pytest.raises(errors.InvalidTxnStateError):
                self.broker.end_transaction(producer.pid, producer.epoch, commit)
            return
        epoch = self.broker.end_transaction(producer.pid, producer.epoch, commit)
        assert epoch > producer.epoch
        self.model.zombies.append(producer.zombie())  # a delayed request from the old epoch
        self.model.end(producer, commit)
        producer.epoch = epoch

    @rule(
        name=st.sampled_from(TRANSACTIONAL),
        specs=batch_specs,
        member_name=st.sampled_from(MEMBERS),
        offsets=offset_maps,
        commit=st.booleans(),
    )
    def exactly_once_cycle(
        self,
        name: str,
        specs: list[BatchSpec],
        member_name: str,
        offsets: dict[int, int],
        commit: bool,
    ) -> None:
        """One cycle of an exactly-once worker: write results, send the consumed offsets of
        partitions the member owns, then commit (or abort)."""
        self.produce_transactional(name, specs, fault=None)
        self.send_offsets_to_transaction(name, member_name, offsets, owned_only=True, zombie=False)
        self.finish_transaction(name, commit)

    @rule(name=st.sampled_from(TRANSACTIONAL), timeout=timeouts)
    def crash_transactional_producer(self, name: str, timeout: int) -> None:
        """The client dies and is restarted (in the middle of a transaction or not)."""
        self.restart_transactional(name, timeout)

    @rule(index=st.integers(0, 20), specs=batch_specs, resend=st.booleans())
    def zombie_produces(self, index: int, specs: list[BatchSpec], resend: bool) -> None:
        if not self.model.zombies:
            return
        zombie = self.model.zombies[index % len(self.model.zombies)]
        resendable = [s for sent in zombie.sent.values() for s in sent]
        if resend and resendable:
            original = resendable[index % len(resendable)]
            self.produce_and_check(zombie, [original.batch], original.transactional)
        else:
            self.produce_and_check(zombie, self.make_batches(zombie, specs), transactional=True)

    @rule(index=st.integers(0, 20), commit=st.booleans())
    def zombie_ends_transaction(self, index: int, commit: bool) -> None:
        if not self.model.zombies:
            return
        zombie = self.model.zombies[index % len(self.model.zombies)]
        with pytest.raises(errors.ProducerFencedError):
            self.broker.end_transaction(zombie.pid, zombie.epoch, commit)

    @rule(
        ms=st.sampled_from([100, 250, 1_000, 4_000]),
        trigger=st.sampled_from(
            ["expire_transactions", "write", "read_committed", "committed_offsets"]
        ),
    )
    def advance_clock(self, ms: int, trigger: str) -> None:
        """Time passes; transactions past their deadline are aborted by the next write, the
        next read_committed fetch or offset fetch, or an explicit expire_transactions()."""
        self.now += ms
        expired = self.model.expire(self.now)
        if trigger == "expire_transactions":
            assert sorted(self.broker.expire_transactions()) == sorted(expired)
        elif trigger == "write":
            self.broker.init_producer_id()
        elif trigger == "read_committed":
            self.broker.fetch([(TPS[0], 0)], isolation=READ_COMMITTED)
        else:
            self.broker.committed_offsets(GROUP, [], require_stable=True)

    @rule()
    def reopen_broker(self) -> None:
        self.broker.close()
        self.broker = self.open_broker()

    # --- the consumer group --------------------------------------------------------------

    @rule(name=st.sampled_from(MEMBERS))
    def join(self, name: str) -> None:
        member = self.member(name)
        if member is not None and member.active:
            return
        member_id, generation = self.broker.join_group(
            GROUP,
            [TOPIC],
            client_id=name,
            session_timeout_ms=NEVER_MS,
            rebalance_timeout_ms=NEVER_MS,
        )
        assert all(member_id != m.member_id for m in self.model.members.values())
        self.model.members[name] = Member(member_id, [generation])

    @rule(name=st.sampled_from(MEMBERS), release=st.booleans())
    def heartbeat(self, name: str, release: bool) -> None:
        member = self.member(name)
        if member is None:
            return
        released = member.revoking if release else frozenset()
        if not member.active:
            with pytest.raises(errors.UnknownMemberIdError):
                self.broker.heartbeat(GROUP, member.member_id, released=released)
            return
        state = self.broker.heartbeat(GROUP, member.member_id, released=released)
        kept = {tp: g for tp, g in member.acquired.items() if tp not in released}
        assert set(kept) <= state.assignment, "a partition was taken without being released"
        assert state.revoking <= state.assignment
        assert state.generation >= member.generations[-1]
        if state.generation != member.generations[-1]:
            member.generations.append(state.generation)
        member.acquired = {tp: kept.get(tp, state.generation) for tp in state.assignment}
        member.revoking = state.revoking

    @rule(name=st.sampled_from(MEMBERS))
    def leave(self, name: str) -> None:
        member = self.member(name)
        if member is None or not member.active:
            return
        self.broker.leave_group(GROUP, member.member_id)
        member.active = False
        member.acquired = {}
        member.revoking = frozenset()

    @rule(name=st.sampled_from(MEMBERS), offsets=offset_maps, owned_only=st.booleans(), age=ages)
    def commit_offsets(
        self, name: str, offsets: dict[int, int], owned_only: bool, age: int
    ) -> None:
        member = self.member(name)
        if member is None:
            return
        tp_offsets = self.choose_offsets(member, offsets, owned_only)
        generation, group_generation = self.pick_generation(member, age)
        metadata = member.metadata(generation)
        error = member.offsets_error(tp_offsets, generation, group_generation)
        if error is not None:
            with pytest.raises(error):
                self.broker.commit_offsets(metadata, tp_offsets)
            return
        self.broker.commit_offsets(metadata, tp_offsets)
        self.model.committed.update(tp_offsets)

    @rule(
        producer_name=st.sampled_from(TRANSACTIONAL),
        member_name=st.sampled_from(MEMBERS),
        offsets=offset_maps,
        owned_only=st.booleans(),
        zombie=st.booleans(),
        age=ages,
    )
    def send_offsets_to_transaction(
        self,
        producer_name: str,
        member_name: str,
        offsets: dict[int, int],
        owned_only: bool,
        zombie: bool,
        age: int = 0,
    ) -> None:
        """Offsets sent with a transaction are published by its commit, dropped by its abort;
        fenced producers and members that left or do not own a partition are refused."""
        member = self.member(member_name)
        if member is None:
            return
        producer = self.model.producers[producer_name]
        if zombie and self.model.zombies:
            producer = self.model.zombies[-1]  # an instance fenced by a newer one
        tp_offsets = self.choose_offsets(member, offsets, owned_only)
        generation, group_generation = self.pick_generation(member, age)
        metadata = member.metadata(generation)
        error = (
            errors.ProducerFencedError
            if producer.fenced
            else member.offsets_error(tp_offsets, generation, group_generation)
        )
        if error is not None:
            with pytest.raises(error):
                self.broker.send_offsets_to_transaction(
                    producer.pid, producer.epoch, tp_offsets, metadata
                )
            self.recover_if_fenced(producer_name)
            return
        self.broker.send_offsets_to_transaction(producer.pid, producer.epoch, tp_offsets, metadata)
        self.model.begin(producer, self.now).offsets.update(tp_offsets)

    def pick_generation(self, member: Member, age: int) -> tuple[int, int]:
        """(the generation to commit with, the group's generation): the member's latest for
        age 0, an older one it was told for age > 0, one past the group's for age -1."""
        group_generation = self.broker.describe_group(GROUP).generation
        if age < 0:
            return group_generation + 1, group_generation
        return member.generations[max(0, len(member.generations) - 1 - age)], group_generation

    @staticmethod
    def choose_offsets(
        member: Member, offsets: dict[int, int], owned_only: bool
    ) -> dict[TopicPartition, int]:
        tp_offsets = {TPS[p]: offset for p, offset in offsets.items()}
        if owned_only:
            owned = {tp: o for tp, o in tp_offsets.items() if tp in member.owned}
            if owned:
                return owned
        return tp_offsets

    # --- consumers --------------------------------------------------------------------------

    @rule(
        requests=st.lists(
            st.tuples(partitions, st.integers(0, 10**6)),
            min_size=1,
            max_size=PARTITIONS,
            unique_by=lambda r: r[0],
        ),
        max_records=st.integers(1, 10),
        isolation=st.sampled_from(ISOLATIONS),
    )
    def fetch(self, requests: list[tuple[int, int]], max_records: int, isolation: str) -> None:
        """One fetch of several partitions from arbitrary valid offsets: each partition gets
        the visible records from its offset, within what is left of the record budget."""
        starts = [(p, seed % (self.model.high_watermark(p) + 1)) for p, seed in requests]
        results = self.broker.fetch(
            [(TPS[p], offset) for p, offset in starts],
            max_records=max_records,
            isolation=isolation,
        )
        assert list(results) == [TPS[p] for p, _ in starts]
        budget = max_records
        for partition, offset in starts:
            result = results[TPS[partition]]
            following = [r for r in self.model.visible(partition, isolation) if r.offset >= offset]
            expected = following[:budget]
            assert result.records == expected
            assert result.high_watermark == self.model.high_watermark(partition)
            assert result.last_stable == self.model.last_stable(partition)
            end = self.model.end_offset(partition, isolation)
            if budget == 0:  # nothing left for this partition: it stays where it was
                assert result.next_offset == offset
            elif len(expected) < budget:  # the partition was read to its end
                assert result.next_offset == max(offset, end)
            else:  # the budget ran out: resume after the last record, before the next one
                upper = following[budget].offset if len(following) > budget else end
                assert expected[-1].offset < result.next_offset <= upper
            budget -= len(expected)

    @rule(partition=partitions, beyond=st.integers(1, 3), isolation=st.sampled_from(ISOLATIONS))
    def fetch_out_of_range(self, partition: int, beyond: int, isolation: str) -> None:
        offset = self.model.high_watermark(partition) + beyond
        with pytest.raises(errors.OffsetOutOfRangeError):
            self.broker.fetch([(TPS[partition], offset)], isolation=isolation)

    # --- invariants --------------------------------------------------------------------------

    def read_all(self, partition: int, isolation: str) -> list[Record]:
        """Everything a consumer reads from the log start, PAGE records per fetch."""
        tp = TPS[partition]
        end = self.model.end_offset(partition, isolation)
        offset, records = 0, []
        for _ in range(self.model.high_watermark(partition) + 2):
            result = self.broker.fetch(
                [(tp, offset)], max_records=PAGE[isolation], isolation=isolation
            )[tp]
            assert len(result.records) <= PAGE[isolation]
            assert all(offset <= r.offset < result.next_offset for r in result.records)
            assert result.next_offset <= end
            records += result.records
            if result.next_offset == end:
                return records
            assert result.next_offset > offset, "a fetch made no progress"
            offset = result.next_offset
        raise AssertionError(f"reading {tp} ({isolation}) did not reach offset {end}")

    @invariant()
    def log_matches_model(self) -> None:
        for partition in range(PARTITIONS):
            info = self.broker.partition_info(TOPIC, partition)
            assert info.log_start == 0
            assert info.high_watermark == self.model.high_watermark(partition)
            assert info.last_stable == self.model.last_stable(partition)
            assert info.batches == self.model.batches[partition]
            for isolation in ISOLATIONS:
                records = self.read_all(partition, isolation)
                offsets = [r.offset for r in records]
                assert offsets == sorted(set(offsets)), "offsets repeat or go backwards"
                assert records == self.model.visible(partition, isolation), isolation

    @invariant()
    def committed_offsets_match_model(self) -> None:
        pending = self.model.pending_offsets()
        for tp in TPS:
            if tp in pending:
                with pytest.raises(errors.UnstableOffsetCommitError):
                    self.broker.committed_offsets(GROUP, [tp])
            else:
                expected = {tp: self.model.committed[tp]} if tp in self.model.committed else {}
                assert self.broker.committed_offsets(GROUP, [tp]) == expected
        assert self.broker.committed_offsets(GROUP, TPS, require_stable=False) == (
            self.model.committed
        )

    @invariant()
    def group_matches_model(self) -> None:
        active = [m for m in self.model.members.values() if m.active]
        owned = [tp for m in active for tp in m.owned]
        assert len(owned) == len(set(owned)), "a partition has two owners"
        if not self.model.members:
            return
        group = self.broker.describe_group(GROUP)
        assignment = {m.member_id: m.assignment for m in group.members}
        assert assignment == {m.member_id: m.owned for m in active}
        assert group.offsets == self.model.committed
        assert set(group.pending_offsets) == self.model.pending_offsets()


BrokerMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestBrokerStateful = BrokerMachine.TestCase
