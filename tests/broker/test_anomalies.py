"""The anomalies of the Kafka semantics digest (section 6), reproduced on the embedded broker
and shown NOT to happen.

Each test builds the exact interleaving that produces the anomaly in a faulty broker (a lost
ack, a zombie producer, a delayed write or EndTxn, a crash, a zombie group member, a
transaction timeout) and checks the broker rejects or repairs it. Anomalies that only concern
a multi-node cluster or the stream processor (window edges, rewind after abort, G0 cycles) are
not broker properties and are tested elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from runtime import errors
from runtime.broker import READ_COMMITTED, READ_UNCOMMITTED, Broker, ProduceBatch
from runtime.broker.schema import ABORT_MARKER, ABORTED, COMMIT_MARKER
from runtime.types import GroupMetadata, Record, TopicPartition

OUT0 = TopicPartition("out", 0)
OUT1 = TopicPartition("out", 1)
IN0 = TopicPartition("in", 0)


# --- helpers --------------------------------------------------------------------------------


class FakeClock:
    """A mutable clock in milliseconds, for `Broker(path, clock=clock)`."""

    def __init__(self, now: int = 1_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


def batch(tp: TopicPartition, seq: int, *values: bytes, ts: int = 0) -> ProduceBatch:
    """A keyless batch of `values` for `tp` starting at producer sequence `seq`."""
    return ProduceBatch(
        tp.topic, tp.partition, seq, [None] * len(values), list(values), [ts] * len(values)
    )


def read_all(
    broker: Broker, tp: TopicPartition, isolation: str = READ_COMMITTED, page: int = 1000
) -> list[Record]:
    """Every record `isolation` lets a consumer see, from the log start, fetching pages of
    `page` records and following `next_offset` as a consumer does."""
    offset = broker.partition_info(tp.topic, tp.partition).log_start
    records: list[Record] = []
    for _ in range(10_000):
        result = broker.fetch([(tp, offset)], max_records=page, isolation=isolation)[tp]
        records += result.records
        if result.next_offset == offset:
            return records
        offset = result.next_offset
    raise AssertionError("fetch never stopped advancing")


def values(records: Sequence[Record]) -> list[bytes | None]:
    return [r.value for r in records]


def kinds(broker: Broker, tp: TopicPartition) -> list[int]:
    """The `kind` column of every stored batch of `tp`, in offset order."""
    rows = broker.conn.execute(
        "SELECT b.kind FROM batches b JOIN partitions p ON p.id = b.tp"
        " JOIN topics t ON t.id = p.topic_id WHERE t.name = ? AND p.partition = ?"
        " ORDER BY b.base_offset",
        (tp.topic, tp.partition),
    ).fetchall()
    return [r[0] for r in rows]


def snapshot(broker: Broker) -> list[str]:
    """The whole database as SQL text: equal snapshots mean nothing changed."""
    return list(broker.conn.iterdump())


def assert_lso_released(broker: Broker, tp: TopicPartition) -> None:
    info = broker.partition_info(tp.topic, tp.partition)
    assert info.last_stable == info.high_watermark, f"{tp} LSO still pinned: {info}"


def join_and_own(broker: Broker, group: str, topic: str, **kwargs: int) -> GroupMetadata:
    """A member that joined `group` and owns every partition of `topic`."""
    member, _ = broker.join_group(group, [topic], **kwargs)
    state = broker.heartbeat(group, member)
    assert state.assignment, "the only member should own the topic"
    return GroupMetadata(group, state.generation, member)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def broker(clock: FakeClock) -> Broker:
    b = Broker(clock=clock)
    b.create_topic("out", 3)
    b.create_topic("in", 1)
    return b


# --- 1. lost ack + resend -------------------------------------------------------------------


@pytest.fixture
def five_batches(broker: Broker) -> tuple[int, int]:
    """An idempotent producer that wrote seq 0-4 as five one-record batches at offsets 0-4."""
    pid, epoch = broker.init_producer_id()
    for seq in range(5):
        assert broker.produce(pid, epoch, [batch(OUT0, seq, b"v%d" % seq)]) == [seq]
    return pid, epoch


def test_resend_of_acknowledged_batch_returns_original_offset(
    broker: Broker, five_batches: tuple[int, int]
) -> None:
    """Lost ack: a retry of seq 0 gets its original offset and writes nothing."""
    pid, epoch = five_batches
    before = snapshot(broker)
    assert broker.produce(pid, epoch, [batch(OUT0, 0, b"v0")]) == [0]
    assert broker.produce(pid, epoch, [batch(OUT0, 3, b"v3")]) == [3]
    assert snapshot(broker) == before
    assert values(read_all(broker, OUT0, READ_UNCOMMITTED)) == [b"v0", b"v1", b"v2", b"v3", b"v4"]


def test_resend_mixed_with_new_batch_writes_only_the_new_one(
    broker: Broker, five_batches: tuple[int, int]
) -> None:
    """Lost ack: a request carrying a resent batch and a new one appends only the new one."""
    pid, epoch = five_batches
    offsets = broker.produce(pid, epoch, [batch(OUT0, 4, b"v4"), batch(OUT0, 5, b"v5")])
    assert offsets == [4, 5]
    assert values(read_all(broker, OUT0, READ_UNCOMMITTED)) == [b"v%d" % i for i in range(6)]


def test_resend_of_multi_record_batch_returns_its_base_offset(broker: Broker) -> None:
    """Lost ack: a resent batch of several records is matched on its first AND last sequence."""
    pid, epoch = broker.init_producer_id()
    assert broker.produce(pid, epoch, [batch(OUT0, 0, b"a", b"b", b"c")]) == [0]
    assert broker.produce(pid, epoch, [batch(OUT0, 3, b"d", b"e")]) == [3]
    before = snapshot(broker)
    assert broker.produce(pid, epoch, [batch(OUT0, 0, b"a", b"b", b"c")]) == [0]
    assert snapshot(broker) == before
    # Same first sequence, different last one: neither a duplicate nor the next batch.
    with pytest.raises(errors.OutOfOrderSequenceError):
        broker.produce(pid, epoch, [batch(OUT0, 0, b"a", b"b")])
    assert snapshot(broker) == before


def test_retry_older_than_cached_batches_is_out_of_order(
    broker: Broker, five_batches: tuple[int, int]
) -> None:
    """Lost ack: a retry older than the 5 cached batches is OutOfOrderSequence, not appended."""
    pid, epoch = five_batches
    assert broker.produce(pid, epoch, [batch(OUT0, 5, b"v5")]) == [5]  # evicts seq 0
    before = snapshot(broker)
    with pytest.raises(errors.OutOfOrderSequenceError) as info:
        broker.produce(pid, epoch, [batch(OUT0, 0, b"v0")])
    assert "expected 6" in str(info.value)
    assert snapshot(broker) == before
    # seq 1 is still among the five cached batches
    assert broker.produce(pid, epoch, [batch(OUT0, 1, b"v1")]) == [1]
    assert snapshot(broker) == before


def test_sequence_gap_is_rejected(broker: Broker, five_batches: tuple[int, int]) -> None:
    """Lost ack: a batch that skips sequences (a lost batch in between) is not appended."""
    pid, epoch = five_batches
    before = snapshot(broker)
    with pytest.raises(errors.OutOfOrderSequenceError):
        broker.produce(pid, epoch, [batch(OUT0, 6, b"v6")])
    assert snapshot(broker) == before


def test_failed_request_leaves_no_batch_behind(
    broker: Broker, five_batches: tuple[int, int]
) -> None:
    """Lost ack: a request is all or nothing, so its retry never finds half of it written."""
    pid, epoch = five_batches
    before = snapshot(broker)
    with pytest.raises(errors.OutOfOrderSequenceError):
        broker.produce(pid, epoch, [batch(OUT1, 0, b"ok"), batch(OUT0, 9, b"gap")])
    assert snapshot(broker) == before
    assert broker.produce(pid, epoch, [batch(OUT1, 0, b"ok"), batch(OUT0, 5, b"v5")]) == [0, 5]


# --- 2. zombie producer ---------------------------------------------------------------------


@pytest.fixture
def zombie(broker: Broker) -> tuple[int, int, GroupMetadata]:
    """Producer A of transactional id "app-0" with an open transaction (records on out[0] and
    out[1], offsets for in[0]); then B initialised the same transactional id."""
    group = join_and_own(broker, "g", "in")
    broker.commit_offsets(group, {IN0: 3})
    pid, epoch_a = broker.init_producer_id("app-0")
    broker.produce(pid, epoch_a, [batch(OUT0, 0, b"a0"), batch(OUT1, 0, b"a1")], transactional=True)
    broker.send_offsets_to_transaction(pid, epoch_a, {IN0: 10}, group)
    pid_b, epoch_b = broker.init_producer_id("app-0")
    assert pid_b == pid and epoch_b > epoch_a
    return pid, epoch_a, group


def test_zombie_open_transaction_is_aborted_by_new_instance(
    broker: Broker, zombie: tuple[int, int, GroupMetadata]
) -> None:
    """Zombie producer: B's init aborts A's open transaction: markers, LSO, offsets dropped."""
    for tp in (OUT0, OUT1):
        assert kinds(broker, tp) == [ABORTED, ABORT_MARKER]
        assert_lso_released(broker, tp)
        assert read_all(broker, tp) == []
    assert broker.describe_group("g").pending_offsets == {}
    assert broker.committed_offsets("g", [IN0], require_stable=True) == {IN0: 3}


def test_zombie_produce_is_fenced(broker: Broker, zombie: tuple[int, int, GroupMetadata]) -> None:
    """Zombie producer: A's later produce (any sequence, transactional or not) is fenced."""
    pid, epoch_a, _ = zombie
    before = snapshot(broker)
    for seq, transactional in ((1, True), (0, True), (0, False)):
        with pytest.raises(errors.ProducerFencedError):
            broker.produce(pid, epoch_a, [batch(OUT0, seq, b"zombie")], transactional=transactional)
    assert snapshot(broker) == before


def test_zombie_send_offsets_is_fenced(
    broker: Broker, zombie: tuple[int, int, GroupMetadata]
) -> None:
    """Zombie producer: A's later send_offsets_to_transaction is fenced, no offsets pending."""
    pid, epoch_a, group = zombie
    before = snapshot(broker)
    with pytest.raises(errors.ProducerFencedError):
        broker.send_offsets_to_transaction(pid, epoch_a, {IN0: 20}, group)
    assert snapshot(broker) == before
    assert broker.describe_group("g").pending_offsets == {}


@pytest.mark.parametrize("commit", [True, False])
def test_zombie_end_transaction_is_fenced(
    broker: Broker, zombie: tuple[int, int, GroupMetadata], commit: bool
) -> None:
    """Zombie producer: A's later end_transaction is fenced and publishes nothing."""
    pid, epoch_a, _ = zombie
    before = snapshot(broker)
    with pytest.raises(errors.ProducerFencedError):
        broker.end_transaction(pid, epoch_a, commit=commit)
    assert snapshot(broker) == before
    assert read_all(broker, OUT0) == []
    assert broker.committed_offsets("g", [IN0]) == {IN0: 3}


def test_new_instance_works_after_fencing_the_zombie(
    broker: Broker, zombie: tuple[int, int, GroupMetadata]
) -> None:
    """Zombie producer: only B's transaction becomes visible, never A's records or offsets."""
    pid, _, group = zombie
    epoch_b = broker.init_producer_id("app-0")[1]  # a third instance fences B too
    broker.produce(pid, epoch_b, [batch(OUT0, 0, b"b0")], transactional=True)
    broker.send_offsets_to_transaction(pid, epoch_b, {IN0: 7}, group)
    broker.end_transaction(pid, epoch_b, commit=True)
    assert values(read_all(broker, OUT0)) == [b"b0"]
    assert read_all(broker, OUT1) == []
    assert broker.committed_offsets("g", [IN0]) == {IN0: 7}


# --- 3. delayed write after abort (hanging transaction, KIP-890) ----------------------------


@pytest.mark.parametrize("commit", [False, True])
def test_delayed_write_after_end_of_transaction_is_rejected(
    broker: Broker, clock: FakeClock, commit: bool
) -> None:
    """Hanging transaction: a write delayed past its transaction's end is fenced, LSO free."""
    pid, epoch = broker.init_producer_id("app-0", transaction_timeout_ms=10_000)
    broker.produce(pid, epoch, [batch(OUT0, 0, b"t0")], transactional=True)
    new_epoch = broker.end_transaction(pid, epoch, commit=commit)
    assert new_epoch == epoch + 1  # bumped at every end of transaction
    before = snapshot(broker)
    for seq in (1, 0):  # the next write, or a resend of the first one
        with pytest.raises(errors.ProducerFencedError):
            broker.produce(pid, epoch, [batch(OUT0, seq, b"late")], transactional=True)
    assert snapshot(broker) == before
    assert_lso_released(broker, OUT0)
    # No hanging transaction for the timeout to find, and the producer is not fenced.
    clock.advance(60_000)
    assert broker.expire_transactions() == []
    broker.produce(pid, new_epoch, [batch(OUT0, 0, b"next")], transactional=True)
    broker.end_transaction(pid, new_epoch, commit=True)
    expected = [b"t0", b"next"] if commit else [b"next"]
    assert values(read_all(broker, OUT0)) == expected


# --- 4. delayed write joins the next transaction --------------------------------------------


def test_delayed_write_cannot_join_next_transaction(broker: Broker) -> None:
    """Delayed write: a late produce from transaction N is rejected while N+1 is open."""
    pid, epoch = broker.init_producer_id("app-0")
    broker.produce(pid, epoch, [batch(OUT0, 0, b"n")], transactional=True)
    next_epoch = broker.end_transaction(pid, epoch, commit=True)
    broker.produce(pid, next_epoch, [batch(OUT0, 0, b"n+1")], transactional=True)
    before = snapshot(broker)
    with pytest.raises(errors.ProducerFencedError):
        broker.produce(pid, epoch, [batch(OUT0, 1, b"late-n")], transactional=True)
    with pytest.raises(errors.ProducerFencedError):  # also on a partition N+1 has not touched
        broker.produce(pid, epoch, [batch(OUT1, 0, b"late-n")], transactional=True)
    assert snapshot(broker) == before
    broker.end_transaction(pid, next_epoch, commit=True)
    assert values(read_all(broker, OUT0, READ_UNCOMMITTED)) == [b"n", b"n+1"]
    assert read_all(broker, OUT1, READ_UNCOMMITTED) == []


# --- 5. delayed EndTxn ----------------------------------------------------------------------


def test_delayed_abort_does_not_abort_next_transaction(broker: Broker) -> None:
    """Delayed EndTxn: a late abort with N's epoch cannot abort transaction N+1."""
    pid, epoch = broker.init_producer_id("app-0")
    broker.produce(pid, epoch, [batch(OUT0, 0, b"n")], transactional=True)
    next_epoch = broker.end_transaction(pid, epoch, commit=True)
    broker.produce(pid, next_epoch, [batch(OUT0, 0, b"n+1")], transactional=True)
    before = snapshot(broker)
    with pytest.raises(errors.ProducerFencedError):
        broker.end_transaction(pid, epoch, commit=False)
    assert snapshot(broker) == before
    assert broker.partition_info("out", 0).last_stable == 2  # N+1 still open
    broker.end_transaction(pid, next_epoch, commit=True)
    assert values(read_all(broker, OUT0)) == [b"n", b"n+1"]


def test_delayed_commit_does_not_commit_next_transaction(broker: Broker) -> None:
    """Delayed EndTxn: a late commit with N's epoch cannot commit transaction N+1."""
    pid, epoch = broker.init_producer_id("app-0")
    broker.produce(pid, epoch, [batch(OUT0, 0, b"n")], transactional=True)
    next_epoch = broker.end_transaction(pid, epoch, commit=False)
    broker.produce(pid, next_epoch, [batch(OUT0, 0, b"n+1")], transactional=True)
    before = snapshot(broker)
    with pytest.raises(errors.ProducerFencedError):
        broker.end_transaction(pid, epoch, commit=True)
    assert snapshot(broker) == before
    assert read_all(broker, OUT0) == []
    broker.end_transaction(pid, next_epoch, commit=False)
    assert read_all(broker, OUT0) == []
    assert_lso_released(broker, OUT0)


def test_repeated_end_transaction_is_fenced(broker: Broker) -> None:
    """Delayed EndTxn: a resent EndTxn of an ended transaction writes no second marker."""
    pid, epoch = broker.init_producer_id("app-0")
    broker.produce(pid, epoch, [batch(OUT0, 0, b"n")], transactional=True)
    broker.end_transaction(pid, epoch, commit=True)
    before = snapshot(broker)
    for commit in (True, False):
        with pytest.raises(errors.ProducerFencedError):
            broker.end_transaction(pid, epoch, commit=commit)
    assert snapshot(broker) == before
    assert values(read_all(broker, OUT0)) == [b"n"]


# --- 6. aborted read ------------------------------------------------------------------------


ABORT_CAUSES = ["end_transaction", "timeout", "fencing"]


def abort_by(broker: Broker, clock: FakeClock, cause: str, pid: int, epoch: int) -> None:
    if cause == "end_transaction":
        broker.end_transaction(pid, epoch, commit=False)
    elif cause == "timeout":
        clock.advance(2_000)
        assert broker.expire_transactions() == [pid]
    else:
        broker.init_producer_id("doomed")


@pytest.mark.parametrize("cause", ABORT_CAUSES)
@pytest.mark.parametrize("page", [1, 1000])
def test_read_committed_never_sees_aborted_data(
    broker: Broker, clock: FakeClock, cause: str, page: int
) -> None:
    """Aborted read: aborted records, interleaved with committed ones, are never returned."""
    doomed, d_epoch = broker.init_producer_id("doomed", transaction_timeout_ms=1_000)
    good, g_epoch = broker.init_producer_id("good", transaction_timeout_ms=60_000)
    plain, p_epoch = broker.init_producer_id()
    broker.produce(plain, p_epoch, [batch(OUT0, 0, b"plain-1")])
    broker.produce(
        doomed, d_epoch, [batch(OUT0, 0, b"x1", b"x2"), batch(OUT1, 0, b"x3")], transactional=True
    )
    broker.produce(good, g_epoch, [batch(OUT0, 0, b"good-1")], transactional=True)
    broker.produce(doomed, d_epoch, [batch(OUT0, 2, b"x4")], transactional=True)
    broker.produce(plain, p_epoch, [batch(OUT0, 1, b"plain-2")])
    broker.produce(good, g_epoch, [batch(OUT1, 0, b"good-2")], transactional=True)
    # Nothing from an open transaction, nor anything after its first offset, is readable yet.
    assert values(read_all(broker, OUT0, page=page)) == [b"plain-1"]
    abort_by(broker, clock, cause, doomed, d_epoch)
    broker.end_transaction(good, g_epoch, commit=True)
    assert values(read_all(broker, OUT0, page=page)) == [b"plain-1", b"good-1", b"plain-2"]
    assert values(read_all(broker, OUT1, page=page)) == [b"good-2"]
    for tp in (OUT0, OUT1):
        assert_lso_released(broker, tp)
    # read_uncommitted does see them: the test above is not vacuous
    assert b"x4" in values(read_all(broker, OUT0, READ_UNCOMMITTED))


@pytest.mark.parametrize("cause", ABORT_CAUSES)
def test_read_committed_fetch_from_inside_aborted_range(
    broker: Broker, clock: FakeClock, cause: str
) -> None:
    """Aborted read: a fetch starting in the middle of aborted records skips them all."""
    doomed, d_epoch = broker.init_producer_id("doomed", transaction_timeout_ms=1_000)
    broker.produce(doomed, d_epoch, [batch(OUT0, 0, b"x0", b"x1", b"x2")], transactional=True)
    abort_by(broker, clock, cause, doomed, d_epoch)
    plain, p_epoch = broker.init_producer_id()
    broker.produce(plain, p_epoch, [batch(OUT0, 0, b"after")])
    result = broker.fetch([(OUT0, 1)], isolation=READ_COMMITTED)[OUT0]
    assert values(result.records) == [b"after"]
    assert result.next_offset == result.high_watermark


# --- 7. torn transaction --------------------------------------------------------------------


def test_commit_marks_every_touched_partition_and_publishes_offsets(broker: Broker) -> None:
    """Torn transaction: every touched partition gets the COMMIT marker, with the offsets."""
    group = join_and_own(broker, "g", "in")
    pid, epoch = broker.init_producer_id("app-0")
    broker.produce(pid, epoch, [batch(OUT0, 0, b"a"), batch(OUT1, 0, b"b")], transactional=True)
    broker.produce(pid, epoch, [batch(IN0, 0, b"c")], transactional=True)
    broker.send_offsets_to_transaction(pid, epoch, {IN0: 5}, group)
    broker.end_transaction(pid, epoch, commit=True)
    for tp in (OUT0, OUT1, IN0):
        assert kinds(broker, tp)[-1] == COMMIT_MARKER, tp
        assert_lso_released(broker, tp)
    assert COMMIT_MARKER not in kinds(broker, TopicPartition("out", 2))  # untouched
    assert broker.committed_offsets("g", [IN0]) == {IN0: 5}


def test_commit_failing_between_markers_leaves_transaction_intact(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Torn transaction: a crash after the first marker rolls the whole commit back."""
    group = join_and_own(broker, "g", "in")
    pid, epoch = broker.init_producer_id("app-0")
    broker.produce(pid, epoch, [batch(OUT0, 0, b"a"), batch(OUT1, 0, b"b")], transactional=True)
    broker.send_offsets_to_transaction(pid, epoch, {IN0: 5}, group)
    before = snapshot(broker)
    real_append_marker = broker.log.append_marker
    calls = []

    def crash_on_second_marker(*args: object, **kwargs: object) -> int:
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("coordinator crashed between markers")
        return real_append_marker(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(broker.log, "append_marker", crash_on_second_marker)
    with pytest.raises(RuntimeError):
        broker.end_transaction(pid, epoch, commit=True)
    monkeypatch.undo()
    assert len(calls) == 2
    assert snapshot(broker) == before
    assert broker.describe_group("g").pending_offsets == {IN0: 5}
    # The producer can still complete its transaction, atomically.
    broker.end_transaction(pid, epoch, commit=True)
    assert [kinds(broker, tp)[-1] for tp in (OUT0, OUT1)] == [COMMIT_MARKER, COMMIT_MARKER]
    assert broker.committed_offsets("g", [IN0]) == {IN0: 5}


def test_commit_failing_at_offsets_survives_reopen_untorn(tmp_path: Path) -> None:
    """Torn transaction: a crash while publishing offsets leaves no marker in the file."""
    path = str(tmp_path / "b.db")
    first = Broker(path)
    first.create_topic("out", 3)
    first.create_topic("in", 1)
    group = join_and_own(first, "g", "in", session_timeout_ms=600_000)
    pid, epoch = first.init_producer_id("app-0")
    first.produce(pid, epoch, [batch(OUT0, 0, b"a"), batch(OUT1, 0, b"b")], transactional=True)
    first.send_offsets_to_transaction(pid, epoch, {IN0: 5}, group)
    # Make the last step of the commit (publishing the offsets) fail.
    first.conn.execute(
        "CREATE TRIGGER crash BEFORE INSERT ON offsets BEGIN SELECT RAISE(ABORT, 'crash'); END"
    )
    with pytest.raises(errors.DatabaseError):
        first.end_transaction(pid, epoch, commit=True)
    first.conn.execute("DROP TRIGGER crash")
    del first

    second = Broker(path)
    for tp in (OUT0, OUT1):
        assert COMMIT_MARKER not in kinds(second, tp)
        assert second.partition_info(tp.topic, tp.partition).last_stable == 0
    assert second.describe_group("g").pending_offsets == {IN0: 5}
    second.end_transaction(pid, epoch, commit=True)
    assert values(read_all(second, OUT0)) == [b"a"]
    assert values(read_all(second, OUT1)) == [b"b"]
    assert second.committed_offsets("g", [IN0]) == {IN0: 5}


# --- 8. zombie group member (KIP-447) -------------------------------------------------------


@pytest.fixture
def moved(broker: Broker) -> tuple[GroupMetadata, GroupMetadata, TopicPartition]:
    """Group "g" on topic "out": member 1 owned all of it, member 2 joined and member 1
    released one partition, which member 2 now owns. Offsets 1 are committed everywhere.
    Returns (old metadata of member 1, metadata of member 2, the moved partition)."""
    old = join_and_own(broker, "g", "out")
    broker.commit_offsets(old, {TopicPartition("out", p): 1 for p in range(3)})
    member2, _ = broker.join_group("g", ["out"])
    revoking = broker.heartbeat("g", old.member_id).revoking
    assert len(revoking) == 1
    broker.heartbeat("g", old.member_id, released=revoking)
    state2 = broker.heartbeat("g", member2)
    assert state2.assignment == revoking
    (tp,) = revoking
    return old, GroupMetadata("g", state2.generation, member2), tp


def test_zombie_member_commit_for_lost_partition_is_rejected(
    broker: Broker, moved: tuple[GroupMetadata, GroupMetadata, TopicPartition]
) -> None:
    """Zombie member: a commit with the old generation for a moved partition is rejected."""
    old, _, tp = moved
    before = snapshot(broker)
    with pytest.raises(errors.IllegalGenerationError):
        broker.commit_offsets(old, {tp: 99})
    assert snapshot(broker) == before
    assert broker.committed_offsets("g", [tp]) == {tp: 1}


def test_zombie_member_txn_offsets_for_lost_partition_are_rejected(
    broker: Broker, moved: tuple[GroupMetadata, GroupMetadata, TopicPartition]
) -> None:
    """Zombie member: send_offsets_to_transaction for a moved partition is rejected."""
    old, _, tp = moved
    pid, epoch = broker.init_producer_id("member-1")
    broker.produce(pid, epoch, [batch(IN0, 0, b"x")], transactional=True)
    before = snapshot(broker)
    with pytest.raises(errors.IllegalGenerationError):
        broker.send_offsets_to_transaction(pid, epoch, {tp: 99}, old)
    assert snapshot(broker) == before
    broker.end_transaction(pid, epoch, commit=True)
    assert broker.committed_offsets("g", [tp], require_stable=True) == {tp: 1}


@pytest.mark.parametrize("transactional", [False, True])
def test_stale_generation_commit_after_partition_came_back_is_rejected(
    broker: Broker,
    moved: tuple[GroupMetadata, GroupMetadata, TopicPartition],
    transactional: bool,
) -> None:
    """Zombie task: metadata from before a partition moved away and back is ILLEGAL_GENERATION
    (a task of the first ownership must not overwrite offsets of the second)."""
    old, new, tp = moved
    broker.commit_offsets(new, {tp: 50})
    broker.leave_group("g", new.member_id)
    state = broker.heartbeat("g", old.member_id)
    assert tp in state.assignment and state.generation > old.generation
    pid, epoch = broker.init_producer_id("member-1")
    broker.produce(pid, epoch, [batch(IN0, 0, b"x")], transactional=True)
    before = snapshot(broker)
    with pytest.raises(errors.IllegalGenerationError):
        if transactional:
            broker.send_offsets_to_transaction(pid, epoch, {tp: 10}, old)
        else:
            broker.commit_offsets(old, {tp: 10})
    assert snapshot(broker) == before
    assert broker.committed_offsets("g", [tp], require_stable=False) == {tp: 50}


def test_new_owner_can_commit_moved_partition(
    broker: Broker, moved: tuple[GroupMetadata, GroupMetadata, TopicPartition]
) -> None:
    """Zombie member: the fencing is not vacuous, the new owner's commit is accepted."""
    _, new, tp = moved
    broker.commit_offsets(new, {tp: 42})
    assert broker.committed_offsets("g", [tp]) == {tp: 42}


@pytest.mark.parametrize("how", ["session_timeout", "leave"])
def test_removed_member_commits_are_rejected(broker: Broker, clock: FakeClock, how: str) -> None:
    """Zombie member: a member removed from the group cannot commit, in or out of a txn."""
    old = join_and_own(broker, "g", "in", session_timeout_ms=1_000)
    broker.commit_offsets(old, {IN0: 1})
    pid, epoch = broker.init_producer_id("member-1", transaction_timeout_ms=600_000)
    broker.produce(pid, epoch, [batch(OUT0, 0, b"x")], transactional=True)
    if how == "leave":
        broker.leave_group("g", old.member_id)
    else:
        clock.advance(1_001)
    before = snapshot(broker)
    with pytest.raises(errors.UnknownMemberIdError):
        broker.commit_offsets(old, {IN0: 9})
    with pytest.raises(errors.UnknownMemberIdError):
        broker.send_offsets_to_transaction(pid, epoch, {IN0: 9}, old)
    assert snapshot(broker) == before
    assert broker.committed_offsets("g", [IN0], require_stable=True) == {IN0: 1}


@pytest.fixture
def pending_zombie(broker: Broker, clock: FakeClock) -> tuple[int, int, GroupMetadata]:
    """Member 1 owned in[0] (committed offset 3) and sent offset 10 for it to its open
    transaction, then its session expired and member 2 got in[0]. Returns member 1's producer
    (pid, epoch) and member 2's metadata."""
    old = join_and_own(broker, "g", "in", session_timeout_ms=1_000)
    broker.commit_offsets(old, {IN0: 3})
    pid, epoch = broker.init_producer_id("member-1", transaction_timeout_ms=60_000)
    broker.produce(pid, epoch, [batch(OUT0, 0, b"zombie-out")], transactional=True)
    broker.send_offsets_to_transaction(pid, epoch, {IN0: 10}, old)
    clock.advance(5_000)
    new = join_and_own(broker, "g", "in", session_timeout_ms=60_000)
    assert [m.member_id for m in broker.describe_group("g").members] == [new.member_id]
    return pid, epoch, new


def test_new_owner_gets_unstable_offset_while_zombie_txn_pending(
    broker: Broker, pending_zombie: tuple[int, int, GroupMetadata]
) -> None:
    """Zombie member: the new owner's stable offset fetch raises, never returns stale 3."""
    with pytest.raises(errors.UnstableOffsetCommitError) as info:
        broker.committed_offsets("g", [IN0], require_stable=True)
    assert info.value.retriable


@pytest.mark.parametrize("commit", [True, False])
def test_new_owner_gets_resolved_offset_after_zombie_txn_ends(
    broker: Broker, pending_zombie: tuple[int, int, GroupMetadata], commit: bool
) -> None:
    """Zombie member: once the old transaction ends, the offset matches its outcome."""
    pid, epoch, _ = pending_zombie
    broker.end_transaction(pid, epoch, commit=commit)
    expected = 10 if commit else 3
    assert broker.committed_offsets("g", [IN0], require_stable=True) == {IN0: expected}
    assert len(read_all(broker, OUT0)) == (1 if commit else 0)


def test_new_owner_gets_old_offset_after_zombie_txn_times_out(
    broker: Broker, clock: FakeClock, pending_zombie: tuple[int, int, GroupMetadata]
) -> None:
    """Zombie member: the timeout abort of the old transaction drops its pending offsets."""
    clock.advance(60_000)
    assert broker.committed_offsets("g", [IN0], require_stable=True) == {IN0: 3}


def test_send_offsets_without_group_metadata_is_refused(broker: Broker) -> None:
    """Zombie member: offsets without a member id (unfenceable, KIP-447 gap) are refused."""
    pid, epoch = broker.init_producer_id("app-0")
    broker.produce(pid, epoch, [batch(OUT0, 0, b"x")], transactional=True)
    before = snapshot(broker)
    with pytest.raises(errors.InvalidTxnStateError):
        broker.send_offsets_to_transaction(pid, epoch, {IN0: 1}, GroupMetadata("g", -1, ""))
    assert snapshot(broker) == before


# --- transaction timeout ----------------------------------------------------------------------


@pytest.fixture
def open_txn(broker: Broker, clock: FakeClock) -> tuple[int, int]:
    """An open transaction with a 1 s timeout, on out[0] and out[1], started now."""
    pid, epoch = broker.init_producer_id("app-0", transaction_timeout_ms=1_000)
    broker.produce(pid, epoch, [batch(OUT0, 0, b"t0"), batch(OUT1, 0, b"t1")], transactional=True)
    assert broker.partition_info("out", 0).last_stable == 0
    return pid, epoch


def assert_timed_out(broker: Broker, pid: int, epoch: int) -> None:
    for tp in (OUT0, OUT1):
        assert kinds(broker, tp) == [ABORTED, ABORT_MARKER]
        assert_lso_released(broker, tp)
        assert read_all(broker, tp) == []
    with pytest.raises(errors.ProducerFencedError):
        broker.produce(pid, epoch, [batch(OUT0, 1, b"late")], transactional=True)
    with pytest.raises(errors.ProducerFencedError):
        broker.end_transaction(pid, epoch, commit=True)


def test_transaction_within_timeout_is_not_aborted(
    broker: Broker, clock: FakeClock, open_txn: tuple[int, int]
) -> None:
    """Transaction timeout: not fired early; the transaction can still commit."""
    pid, epoch = open_txn
    clock.advance(999)
    assert broker.expire_transactions() == []
    broker.end_transaction(pid, epoch, commit=True)
    assert values(read_all(broker, OUT0)) == [b"t0"]


def test_expired_transaction_is_aborted_by_expire_transactions(
    broker: Broker, clock: FakeClock, open_txn: tuple[int, int]
) -> None:
    """Transaction timeout: expire_transactions aborts it, fences the producer, frees LSO."""
    pid, epoch = open_txn
    clock.advance(1_001)
    assert broker.expire_transactions() == [pid]
    assert_timed_out(broker, pid, epoch)


def test_expired_transaction_is_aborted_by_read_committed_fetch(
    broker: Broker, clock: FakeClock, open_txn: tuple[int, int]
) -> None:
    """Transaction timeout: the next read_committed fetch aborts it and reads past it."""
    pid, epoch = open_txn
    clock.advance(1_001)
    result = broker.fetch([(OUT0, 0)], isolation=READ_COMMITTED)[OUT0]
    assert result.records == []
    assert result.last_stable == result.high_watermark == result.next_offset == 2
    assert_timed_out(broker, pid, epoch)


def test_expired_transaction_is_aborted_by_next_write(
    broker: Broker, clock: FakeClock, open_txn: tuple[int, int]
) -> None:
    """Transaction timeout: any later write (here to another topic) aborts it first."""
    pid, epoch = open_txn
    clock.advance(1_001)
    other, other_epoch = broker.init_producer_id()
    broker.produce(other, other_epoch, [batch(IN0, 0, b"x")])
    assert_timed_out(broker, pid, epoch)


def test_transaction_timeout_counts_from_first_write(broker: Broker, clock: FakeClock) -> None:
    """Transaction timeout: the timer starts with the transaction, not at init or last end."""
    pid, epoch = broker.init_producer_id("app-0", transaction_timeout_ms=1_000)
    clock.advance(5_000)
    broker.produce(pid, epoch, [batch(OUT0, 0, b"t0")], transactional=True)
    clock.advance(900)
    assert broker.expire_transactions() == []
    epoch = broker.end_transaction(pid, epoch, commit=True)
    clock.advance(5_000)
    broker.produce(pid, epoch, [batch(OUT0, 0, b"t1")], transactional=True)
    clock.advance(900)
    assert broker.expire_transactions() == []
    clock.advance(200)
    assert broker.expire_transactions() == [pid]


def test_timed_out_producer_can_reinitialise(
    broker: Broker, clock: FakeClock, open_txn: tuple[int, int]
) -> None:
    """Transaction timeout: the fenced application recovers by re-initialising its id."""
    pid, _ = open_txn
    clock.advance(1_001)
    broker.expire_transactions()
    same_pid, epoch = broker.init_producer_id("app-0", transaction_timeout_ms=1_000)
    assert same_pid == pid
    broker.produce(pid, epoch, [batch(OUT0, 0, b"retry")], transactional=True)
    broker.end_transaction(pid, epoch, commit=True)
    assert values(read_all(broker, OUT0)) == [b"retry"]


# --- 10. crash mid transaction --------------------------------------------------------------


def test_crash_mid_transaction_is_aborted_by_next_instance(tmp_path: Path) -> None:
    """Crash mid transaction: a new broker and instance abort it; it is never visible."""
    path = str(tmp_path / "b.db")
    crashed = Broker(path)
    crashed.create_topic("out", 3)
    plain, p_epoch = crashed.init_producer_id()
    crashed.produce(plain, p_epoch, [batch(OUT0, 0, b"before")])
    pid, epoch = crashed.init_producer_id("app-0")
    crashed.produce(
        pid, epoch, [batch(OUT0, 0, b"lost-0"), batch(OUT1, 0, b"lost-1")], transactional=True
    )
    crashed.produce(plain, p_epoch, [batch(OUT0, 1, b"after")])
    assert values(read_all(crashed, OUT0)) == [b"before"]
    del crashed  # discarded mid-transaction, without close() or end_transaction()

    restarted = Broker(path)
    assert values(read_all(restarted, OUT0)) == [b"before"]  # still held back by the LSO
    assert read_all(restarted, OUT1) == []
    same_pid, new_epoch = restarted.init_producer_id("app-0")
    assert same_pid == pid and new_epoch > epoch
    assert values(read_all(restarted, OUT0)) == [b"before", b"after"]
    assert read_all(restarted, OUT1) == []
    for tp in (OUT0, OUT1):
        assert_lso_released(restarted, tp)
        assert kinds(restarted, tp)[-1] == ABORT_MARKER
    with pytest.raises(errors.ProducerFencedError):
        restarted.end_transaction(pid, epoch, commit=True)
    assert values(read_all(restarted, OUT0)) == [b"before", b"after"]


# --- 12. producer state is not lost during an open transaction ------------------------------


def test_producer_state_survives_restart_during_open_transaction(
    tmp_path: Path,
) -> None:
    """Producer state: after a broker restart, dedup and the open transaction both survive."""
    path = str(tmp_path / "b.db")
    first = Broker(path)
    first.create_topic("out", 3)
    pid, epoch = first.init_producer_id("app-0")
    first.produce(pid, epoch, [batch(OUT0, 0, b"a")], transactional=True)
    first.produce(pid, epoch, [batch(OUT0, 1, b"b")], transactional=True)
    del first

    second = Broker(path)
    assert second.produce(pid, epoch, [batch(OUT0, 1, b"b")], transactional=True) == [1]
    with pytest.raises(errors.OutOfOrderSequenceError):
        second.produce(pid, epoch, [batch(OUT0, 3, b"gap")], transactional=True)
    second.produce(pid, epoch, [batch(OUT0, 2, b"c")], transactional=True)
    second.end_transaction(pid, epoch, commit=True)
    assert values(read_all(second, OUT0)) == [b"a", b"b", b"c"]


def test_producer_state_survives_retention_during_open_transaction(clock: FakeClock) -> None:
    """Producer state: retention cannot drop an open transaction's batches or sequences."""
    broker = Broker(clock=clock)
    broker.create_topic("out", 3, retention_ms=1_000)
    plain, p_epoch = broker.init_producer_id()
    broker.produce(plain, p_epoch, [batch(OUT0, 0, b"old", ts=clock.now)])
    pid, epoch = broker.init_producer_id("app-0", transaction_timeout_ms=900_000)
    broker.produce(pid, epoch, [batch(OUT0, 0, b"t0", ts=clock.now)], transactional=True)
    broker.produce(plain, p_epoch, [batch(OUT0, 1, b"old2", ts=clock.now)])
    clock.advance(800_000)  # far past retention, within the transaction timeout
    broker.maintain()
    info = broker.partition_info("out", 0)
    assert info.log_start == info.last_stable == 1
    assert broker.produce(pid, epoch, [batch(OUT0, 0, b"t0")], transactional=True) == [1]
    broker.produce(pid, epoch, [batch(OUT0, 1, b"t1")], transactional=True)
    broker.end_transaction(pid, epoch, commit=True)
    assert values(read_all(broker, OUT0)) == [b"t0", b"old2", b"t1"]
