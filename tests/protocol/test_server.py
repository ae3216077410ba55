"""The Kafka-protocol server (runtime/protocol): real clients (confluent-kafka) and raw requests.

The contract suite runs the Kafka back end against this server too (tests/transport, "served");
here: what a client library would not send (bad CRCs, unknown versions, transactions left
open), compression, several servers over one file, and SIGTERM.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from runtime.broker import Broker
from runtime.protocol import ProtocolServer
from runtime.protocol.client import RawClient
from runtime.protocol.records import decode_batches, encode_batch
from runtime.testing import ServedBroker, unique

UNKNOWN_TOPIC_OR_PARTITION = 3
CORRUPT_MESSAGE = 2
UNSUPPORTED_VERSION = 35
UNSUPPORTED_COMPRESSION_TYPE = 76


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ProtocolServer]:
    served = ProtocolServer.start_in_thread(f"sqlite:///{tmp_path}/broker.db", port=0)
    try:
        yield served
    finally:
        served.stop()


def create_topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        future.result(10)


def consume(bootstrap: str, topic: str, count: int, **config: object) -> list[object]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique("reader"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **config,
        }
    )
    consumer.subscribe([topic])
    out = []
    deadline = time.monotonic() + 20
    try:
        while len(out) < count and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                out.append(message)
        extra_until = time.monotonic() + 1.0
        while time.monotonic() < extra_until:  # anything past `count` is a failure
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                out.append(message)
    finally:
        consumer.close()
    return out


def produce_request(topic: str, partition: int, records: bytes) -> dict[str, object]:
    return {
        "transactional_id": None,
        "acks": -1,
        "timeout": 10_000,
        "topic_data": [
            {"name": topic, "partition_data": [{"index": partition, "records": records}]}
        ],
    }


def one_batch(value: bytes = b"v", **options: int) -> bytes:
    return encode_batch(0, [b"k"], [value], [int(time.time() * 1000)], None, None, **options)


@pytest.mark.parametrize("compression", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_records_keys_headers_and_compression_round_trip(
    server: ProtocolServer, compression: str
) -> None:
    topic = unique("round")
    create_topic(server.bootstrap, topic, 3)
    producer = Producer(
        {
            "bootstrap.servers": server.bootstrap,
            "enable.idempotence": True,
            "compression.type": compression,
            "linger.ms": 5,
        }
    )
    for i in range(300):
        producer.produce(topic, key=b"k%d" % i, value=b"v%d" % i, headers=[("n", b"%d" % i)])
    assert producer.flush(10) == 0
    got = consume(server.bootstrap, topic, 300)
    assert sorted(m.value() for m in got) == sorted(b"v%d" % i for i in range(300))  # type: ignore[attr-defined]
    for message in got:
        n = message.value()[1:]  # type: ignore[attr-defined]
        assert message.key() == b"k" + n  # type: ignore[attr-defined]
        assert message.headers() == [("n", n)]  # type: ignore[attr-defined]


def test_an_unknown_compression_is_refused_and_nothing_stored(server: ProtocolServer) -> None:
    topic = unique("lz4")
    create_topic(server.bootstrap, topic)
    batch = bytearray(one_batch())
    # claim codec 5 (none such) in the attributes and fix the CRC: the server must refuse it
    struct.pack_into(">h", batch, 21, 5)
    from crc32c import crc32c

    struct.pack_into(">I", batch, 17, crc32c(bytes(batch[21:])))
    with RawClient("127.0.0.1", server.port) as client:
        response = client.request(0, 9, produce_request(topic, 0, bytes(batch)))
        part = response.responses[0].partition_responses[0]
        assert part.error_code == UNSUPPORTED_COMPRESSION_TYPE
        offsets = client.request(
            2,
            5,
            {
                "replica_id": -1,
                "isolation_level": 0,
                "topics": [
                    {"name": topic, "partitions": [{"partition_index": 0, "timestamp": -1}]}
                ],
            },
        )
        assert offsets.topics[0].partitions[0].offset == 0


def test_bad_crc_is_corrupt_message_and_nothing_is_stored(server: ProtocolServer) -> None:
    topic = unique("crc")
    create_topic(server.bootstrap, topic)
    good = one_batch(b"good")
    bad = bytearray(one_batch(b"evil"))
    bad[-1] ^= 0xFF  # a flipped bit in the value: the CRC no longer matches
    with RawClient("127.0.0.1", server.port) as client:
        response = client.request(0, 9, produce_request(topic, 0, bytes(bad)))
        assert response.responses[0].partition_responses[0].error_code == CORRUPT_MESSAGE
        response = client.request(0, 9, produce_request(topic, 0, good))
        assert response.responses[0].partition_responses[0].error_code == 0
        assert response.responses[0].partition_responses[0].base_offset == 0
    assert [m.value() for m in consume(server.bootstrap, topic, 1)] == [b"good"]  # type: ignore[attr-defined]


def test_produce_to_a_missing_topic_is_unknown_topic(server: ProtocolServer) -> None:
    with RawClient("127.0.0.1", server.port) as client:
        response = client.request(0, 9, produce_request(unique("missing"), 0, one_batch()))
        assert response.responses[0].partition_responses[0].error_code == (
            UNKNOWN_TOPIC_OR_PARTITION
        )
        metadata = client.request(3, 12, {"topics": [{"name": unique("missing")}]})
        assert metadata.topics[0].error_code == UNKNOWN_TOPIC_OR_PARTITION


def test_unknown_versions_are_answered_then_closed(server: ProtocolServer) -> None:
    with RawClient("127.0.0.1", server.port) as client:
        # ApiVersions newer than ours: v0 layout, UNSUPPORTED_VERSION, our list; still open
        client.send_frame(struct.pack(">hhih", 18, 99, 7, -1))
        payload = client.read_frame()
        assert payload is not None
        correlation, code, count = struct.unpack_from(">ihi", payload)
        assert (correlation, code) == (7, UNSUPPORTED_VERSION)
        listed = {struct.unpack_from(">h", payload, 10 + 6 * i)[0] for i in range(count)}
        assert {0, 1, 3, 11, 14, 22, 26} <= listed
        assert client.request(18, 3, {}).error_code == 0
        # an unknown API key: the error, then the connection closes
        client.send_frame(struct.pack(">hhih", 999, 0, 8, -1))
        payload = client.read_frame()
        assert payload is not None and struct.unpack_from(">ih", payload) == (8, 35)
        assert client.read_frame() is None
    with RawClient("127.0.0.1", server.port) as client:  # the server is fine
        assert client.request(18, 3, {}).error_code == 0


def test_an_oversized_frame_closes_only_that_connection(server: ProtocolServer) -> None:
    topic = unique("big")
    create_topic(server.bootstrap, topic)
    with (
        RawClient("127.0.0.1", server.port) as healthy,
        RawClient("127.0.0.1", server.port) as rogue,
    ):
        rogue.send_frame(b"\x00" * 16, length=2_000_000_000)
        assert rogue.read_frame() is None
        response = healthy.request(0, 9, produce_request(topic, 0, one_batch(b"after")))
        assert response.responses[0].partition_responses[0].error_code == 0


def test_a_transaction_left_open_is_aborted_by_its_timeout(server: ProtocolServer) -> None:
    topic = unique("abandoned")
    create_topic(server.bootstrap, topic)
    with RawClient("127.0.0.1", server.port) as client:
        init = client.request(
            22, 4, {"transactional_id": unique("txn"), "transaction_timeout": 1000}
        )
        assert init.error_code == 0
        pid, epoch = init.producer_id, init.producer_epoch
        added = client.request(
            24,
            3,
            {
                "v3_and_below_transactional_id": "x",
                "v3_and_below_producer_id": pid,
                "v3_and_below_producer_epoch": epoch,
                "v3_and_below_topics": [{"name": topic, "partitions": [0]}],
            },
        )
        assert (
            added.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code == 0
        )
        batch = one_batch(
            b"never", producer_id=pid, producer_epoch=epoch, base_sequence=0, attributes=0x10
        )
        response = client.request(0, 9, produce_request(topic, 0, batch))
        assert response.responses[0].partition_responses[0].error_code == 0
    # the client is gone, its transaction open: the LSO is pinned until the timeout aborts it
    broker = Broker(str(Path(server.broker.path)))
    try:
        info = broker.partition_info(topic, 0)
        assert info.last_stable == 0
        deadline = time.monotonic() + 10
        while broker.partition_info(topic, 0).last_stable == 0:
            assert time.monotonic() < deadline, "the abandoned transaction was never aborted"
            time.sleep(0.1)
        assert broker.partition_info(topic, 0).high_watermark == 2  # the record and ABORT
    finally:
        broker.close()
    assert consume(server.bootstrap, topic, 0, **{"isolation.level": "read_committed"}) == []


def test_read_committed_hides_aborted_records(server: ProtocolServer) -> None:
    topic = unique("txn")
    create_topic(server.bootstrap, topic)
    producer = Producer({"bootstrap.servers": server.bootstrap, "transactional.id": unique("t")})
    producer.init_transactions(10)
    producer.begin_transaction()
    producer.produce(topic, value=b"aborted")
    producer.flush(10)
    producer.abort_transaction(10)
    producer.begin_transaction()
    producer.produce(topic, value=b"committed")
    producer.commit_transaction(10)
    committed = consume(server.bootstrap, topic, 1, **{"isolation.level": "read_committed"})
    assert [m.value() for m in committed] == [b"committed"]  # type: ignore[attr-defined]
    everything = consume(server.bootstrap, topic, 2, **{"isolation.level": "read_uncommitted"})
    assert [m.value() for m in everything] == [b"aborted", b"committed"]  # type: ignore[attr-defined]


def test_a_zombie_producer_is_fenced(server: ProtocolServer) -> None:
    topic = unique("zombie")
    create_topic(server.bootstrap, topic)
    txn_id = unique("t")
    old = Producer({"bootstrap.servers": server.bootstrap, "transactional.id": txn_id})
    old.init_transactions(10)
    old.begin_transaction()
    old.produce(topic, value=b"zombie")
    old.flush(10)
    new = Producer({"bootstrap.servers": server.bootstrap, "transactional.id": txn_id})
    new.init_transactions(10)  # fences `old` and aborts its transaction
    with pytest.raises(Exception) as raised:
        old.commit_transaction(10)
    error = raised.value.args[0]
    assert error.code() in (
        KafkaError._FENCED,
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
    )
    assert consume(server.bootstrap, topic, 0, **{"isolation.level": "read_committed"}) == []


def test_two_servers_share_one_file_and_one_group(tmp_path: Path) -> None:
    database = tmp_path / "shared.db"
    with (
        ServedBroker.start(tmp_path / "a", database) as first,
        ServedBroker.start(tmp_path / "b", database) as second,
    ):
        topic = unique("shared")
        create_topic(first.bootstrap, topic, 2)
        producer = Producer({"bootstrap.servers": first.bootstrap})
        for i in range(20):
            producer.produce(topic, value=b"%d" % i, partition=i % 2)
        assert producer.flush(10) == 0
        group = unique("g")
        members = [
            Consumer(
                {
                    "bootstrap.servers": server.bootstrap,
                    "group.id": group,
                    "auto.offset.reset": "earliest",
                    "session.timeout.ms": 6000,
                    "partition.assignment.strategy": "cooperative-sticky",
                }
            )
            for server in (first, second)
        ]
        for member in members:
            member.subscribe([topic])
        seen: list[bytes] = []
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            for member in members:
                message = member.poll(0.1)
                if message is not None and message.error() is None:
                    seen.append(message.value())  # type: ignore[arg-type]
            owned = [m.assignment() for m in members]
            if len(seen) >= 20 and all(len(a) == 1 for a in owned):
                break
        assert sorted(seen) == sorted(b"%d" % i for i in range(20))
        owned = [{tp.partition for tp in m.assignment()} for m in members]
        assert sorted(owned, key=min) == [{0}, {1}], owned  # one partition per server's member
        for member in members:
            member.close()


def test_sigterm_stops_the_server_cleanly(tmp_path: Path) -> None:
    served = ServedBroker.start(tmp_path)
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(10) == 0
    assert "stopped" in served.log.read_text()
    broker = Broker(str(tmp_path / "broker.db"))  # the file was closed cleanly: it opens
    broker.close()


def test_fetch_hands_back_batches_that_decode() -> None:
    blob = encode_batch(5, [b"a", None], [b"1", b"2"], [1000, 1001], [[("h", b"x")], None], None)
    (batch,) = decode_batches(blob)
    assert batch.base_offset == 5
    assert batch.keys == [b"a", None] and batch.values == [b"1", b"2"]
    assert batch.timestamps == [1000, 1001] and batch.headers == [[("h", b"x")], None]


def test_acks_0_gets_no_response_and_the_records_are_stored(server: ProtocolServer) -> None:
    topic = unique("acks0")
    create_topic(server.bootstrap, topic)
    producer = Producer(
        {"bootstrap.servers": server.bootstrap, "acks": 0, "enable.idempotence": False}
    )
    for i in range(50):
        producer.produce(topic, value=b"%d" % i)
    assert producer.flush(10) == 0
    got = consume(server.bootstrap, topic, 50)
    assert sorted(m.value() for m in got) == sorted(b"%d" % i for i in range(50))  # type: ignore[attr-defined]
    with RawClient("127.0.0.1", server.port) as client:  # a raw acks=0 produce: silence
        request = produce_request(topic, 0, one_batch(b"silent"))
        request["acks"] = 0
        client.send_frame(client.encode(0, 9, request))
        assert client.request(18, 3, {}).error_code == 0  # the next answer is ApiVersions'


def subscription(topic: str) -> bytes:
    """ConsumerProtocolSubscription v0: version, [topics], user data (null)."""
    name = topic.encode()
    return struct.pack(">hih", 0, 1, len(name)) + name + struct.pack(">i", -1)


def assignment(topic: str, partitions: list[int]) -> bytes:
    """ConsumerProtocolAssignment v0: version, [topic, [partitions]], user data (null)."""
    name = topic.encode()
    return (
        struct.pack(">hih", 0, 1, len(name))
        + name
        + struct.pack(f">i{len(partitions)}i", len(partitions), *partitions)
        + struct.pack(">i", -1)
    )


def test_group_commits_are_fenced_and_transactional_offsets_unstable(
    server: ProtocolServer,
) -> None:
    """A classic member's commits: accepted in its generation, ILLEGAL_GENERATION from an
    older one, UNKNOWN_MEMBER_ID once it left; TxnOffsetCommit offsets make OffsetFetch with
    require_stable answer UNSTABLE_OFFSET_COMMIT until the transaction commits them."""
    topic, group = unique("fenced"), unique("g")
    create_topic(server.bootstrap, topic)

    def commit(client: RawClient, generation: int, member: str, offset: int) -> int:
        answer = client.request(
            8,
            8,
            {
                "group_id": group,
                "generation_id_or_member_epoch": generation,
                "member_id": member,
                "topics": [
                    {
                        "name": topic,
                        "partitions": [{"partition_index": 0, "committed_offset": offset}],
                    }
                ],
            },
        )
        return int(answer.topics[0].partitions[0].error_code)

    def fetch_offset(client: RawClient, require_stable: bool) -> tuple[int, int]:
        answer = client.request(
            9,
            7,
            {
                "group_id": group,
                "topics": [{"name": topic, "partition_indexes": [0]}],
                "require_stable": require_stable,
            },
        )
        part = answer.topics[0].partitions[0]
        return int(part.error_code), int(part.committed_offset)

    with RawClient("127.0.0.1", server.port) as client:
        joined = client.request(
            11,
            5,
            {
                "group_id": group,
                "session_timeout": 6000,
                "rebalance_timeout": 6000,
                "member_id": "",
                "protocol_type": "consumer",
                "protocols": [{"name": "range", "metadata": subscription(topic)}],
            },
        )
        assert joined.error_code == 0 and joined.leader == joined.member_id
        assert [m.metadata for m in joined.members] == [subscription(topic)]
        member, generation = joined.member_id, joined.generation_id
        mine = assignment(topic, [0])
        synced = client.request(
            14,
            3,
            {
                "group_id": group,
                "generation_id": generation,
                "member_id": member,
                "assignments": [{"member_id": member, "assignment": mine}],
            },
        )
        assert (synced.error_code, synced.assignment) == (0, mine)
        assert commit(client, generation, member, 1) == 0
        assert commit(client, generation - 1, member, 2) == 22  # ILLEGAL_GENERATION
        assert commit(client, generation, "intruder", 2) == 25  # UNKNOWN_MEMBER_ID
        assert fetch_offset(client, True) == (0, 1)

        init = client.request(
            22, 4, {"transactional_id": unique("t"), "transaction_timeout": 60_000}
        )
        pid, epoch = init.producer_id, init.producer_epoch
        added = client.request(
            25,
            3,
            {
                "transactional_id": "t",
                "producer_id": pid,
                "producer_epoch": epoch,
                "group_id": group,
            },
        )
        assert added.error_code == 0
        sent = client.request(
            28,
            3,
            {
                "transactional_id": "t",
                "group_id": group,
                "producer_id": pid,
                "producer_epoch": epoch,
                "generation_id": generation,
                "member_id": member,
                "topics": [
                    {
                        "name": topic,
                        "partitions": [{"partition_index": 0, "committed_offset": 5}],
                    }
                ],
            },
        )
        assert sent.topics[0].partitions[0].error_code == 0
        assert fetch_offset(client, True)[0] == 88  # UNSTABLE_OFFSET_COMMIT
        assert fetch_offset(client, False) == (0, 1)
        ended = client.request(
            26,
            3,
            {
                "transactional_id": "t",
                "producer_id": pid,
                "producer_epoch": epoch,
                "committed": True,
            },
        )
        assert ended.error_code == 0
        assert fetch_offset(client, True) == (0, 5)

        beat = client.request(
            12, 4, {"group_id": group, "generation_id": generation, "member_id": member}
        )
        assert beat.error_code == 0
        left = client.request(13, 4, {"group_id": group, "members": [{"member_id": member}]})
        assert left.error_code == 0
        assert commit(client, generation, member, 6) == 25  # it left: UNKNOWN_MEMBER_ID
        described = client.request(15, 5, {"groups": [group]})
        assert described.groups[0].group_state == "Empty"


def test_delete_records_moves_the_log_start(server: ProtocolServer) -> None:
    topic = unique("trim")
    create_topic(server.bootstrap, topic)
    producer = Producer({"bootstrap.servers": server.bootstrap, "linger.ms": 0})
    for i in range(10):
        producer.produce(topic, value=b"%d" % i)
        producer.flush(10)  # one batch per record
    admin = AdminClient({"bootstrap.servers": server.bootstrap})
    from confluent_kafka import TopicPartition as KafkaTopicPartition

    trimmed = admin.delete_records([KafkaTopicPartition(topic, 0, 4)])
    for future in trimmed.values():
        assert future.result(10).low_watermark == 4
    with RawClient("127.0.0.1", server.port) as client:
        too_far = client.request(
            21,
            2,
            {
                "topics": [{"name": topic, "partitions": [{"partition_index": 0, "offset": 99}]}],
                "timeout": 5000,
            },
        )
        assert too_far.topics[0].partitions[0].error_code == 1  # OFFSET_OUT_OF_RANGE
    assert [m.value() for m in consume(server.bootstrap, topic, 6)] == [  # type: ignore[attr-defined]
        b"%d" % i for i in range(4, 10)
    ]


def test_each_partition_of_a_produce_gets_its_own_answer_and_resends_are_deduplicated(
    server: ProtocolServer,
) -> None:
    topic = unique("parts")
    create_topic(server.bootstrap, topic)
    with RawClient("127.0.0.1", server.port) as client:
        init = client.request(22, 4, {"transactional_id": None, "transaction_timeout": 60_000})
        pid, epoch = init.producer_id, init.producer_epoch
        first = one_batch(b"once", producer_id=pid, producer_epoch=epoch, base_sequence=0)
        request = produce_request(topic, 0, first)
        request["topic_data"][0]["partition_data"].append(  # type: ignore[index]
            {"index": 7, "records": one_batch(b"nowhere")}  # the topic has 1 partition
        )
        answer = client.request(0, 9, request).responses[0].partition_responses
        assert [(p.index, p.error_code, p.base_offset) for p in answer] == [
            (0, 0, 0),
            (7, UNKNOWN_TOPIC_OR_PARTITION, -1),
        ]
        again = client.request(0, 9, produce_request(topic, 0, first))  # a resend: same offset
        assert again.responses[0].partition_responses[0].base_offset == 0
        gap = one_batch(b"gap", producer_id=pid, producer_epoch=epoch, base_sequence=5)
        refused = client.request(0, 9, produce_request(topic, 0, gap))
        assert refused.responses[0].partition_responses[0].error_code == 45  # OUT_OF_ORDER
    assert [m.value() for m in consume(server.bootstrap, topic, 1)] == [b"once"]  # type: ignore[attr-defined]


def test_a_silent_member_is_removed_after_its_session_and_its_partitions_move(
    server: ProtocolServer,
) -> None:
    """A member that joined, synced and then went silent (a crashed client) holds its
    partitions only until its session times out: a new member then gets them, and the silent
    one's late commit is UNKNOWN_MEMBER_ID."""
    topic, group = unique("crash"), unique("g")
    create_topic(server.bootstrap, topic, 2)
    producer = Producer({"bootstrap.servers": server.bootstrap})
    for i in range(10):
        producer.produce(topic, value=b"%d" % i, partition=i % 2)
    assert producer.flush(10) == 0
    with RawClient("127.0.0.1", server.port) as silent:
        joined = silent.request(
            11,
            5,
            {
                "group_id": group,
                "session_timeout": 2000,
                "rebalance_timeout": 2000,
                "member_id": "",
                "protocol_type": "consumer",
                "protocols": [{"name": "range", "metadata": subscription(topic)}],
            },
        )
        member, generation = joined.member_id, joined.generation_id
        silent.request(
            14,
            3,
            {
                "group_id": group,
                "generation_id": generation,
                "member_id": member,
                "assignments": [{"member_id": member, "assignment": assignment(topic, [0, 1])}],
            },
        )
        started = time.monotonic()
        survivor = Consumer(
            {
                "bootstrap.servers": server.bootstrap,
                "group.id": group,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 6000,
            }
        )
        survivor.subscribe([topic])
        seen = []
        while len(seen) < 10 and time.monotonic() - started < 20:
            message = survivor.poll(0.2)
            if message is not None and message.error() is None:
                seen.append(message.value())
        took = time.monotonic() - started
        assert sorted(seen) == sorted(b"%d" % i for i in range(10))
        assert 1.5 < took < 10, took  # after the silent member's 2 s session, not before
        late = silent.request(
            8,
            8,
            {
                "group_id": group,
                "generation_id_or_member_epoch": generation,
                "member_id": member,
                "topics": [
                    {"name": topic, "partitions": [{"partition_index": 0, "committed_offset": 3}]}
                ],
            },
        )
        assert late.topics[0].partitions[0].error_code == 25  # UNKNOWN_MEMBER_ID
        survivor.close()


def test_advertised_host_and_auto_created_topics(tmp_path: Path) -> None:
    served = ProtocolServer.start_in_thread(
        f"sqlite:///{tmp_path}/broker.db",
        port=0,
        advertised_host="localhost",
        auto_create_topics=True,
    )
    try:
        with RawClient("127.0.0.1", served.port) as client:
            name = unique("auto")
            metadata = client.request(
                3, 12, {"topics": [{"name": name}], "allow_auto_topic_creation": True}
            )
            assert [(b.host, b.port) for b in metadata.brokers] == [("localhost", served.port)]
            assert metadata.topics[0].error_code == 0
            assert len(metadata.topics[0].partitions) == 1
            coordinator = client.request(10, 3, {"key": "g", "key_type": 0})
            assert (coordinator.host, coordinator.port) == ("localhost", served.port)
            refused = client.request(
                3, 12, {"topics": [{"name": unique("no")}], "allow_auto_topic_creation": False}
            )
            assert refused.topics[0].error_code == UNKNOWN_TOPIC_OR_PARTITION
    finally:
        served.stop()


def test_every_advertised_version_of_the_data_apis_answers_correctly(
    server: ProtocolServer,
) -> None:
    """Each version of Produce, Fetch, ListOffsets, Metadata, FindCoordinator, JoinGroup,
    SyncGroup, OffsetCommit and OffsetFetch that ApiVersions lists, exercised: the answers
    carry the data, not just a parseable frame."""
    from runtime.protocol.messages import SUPPORTED

    topic = unique("versions")
    create_topic(server.bootstrap, topic)
    with RawClient("127.0.0.1", server.port) as client:
        produced = 0
        for version in range(SUPPORTED[0][0], SUPPORTED[0][1] + 1):
            answer = client.request(0, version, produce_request(topic, 0, one_batch(b"x")))
            part = answer.responses[0].partition_responses[0]
            assert (part.error_code, part.base_offset) == (0, produced), version
            produced += 1
        for version in range(SUPPORTED[1][0], SUPPORTED[1][1] + 1):
            fetched = client.request(
                1,
                version,
                {
                    "replica_id": -1,
                    "max_wait": 0,
                    "min_bytes": 1,
                    "max_bytes": 1 << 20,
                    "isolation_level": 0,
                    "topics": [
                        {
                            "topic": topic,
                            "partitions": [
                                {"partition": 0, "fetch_offset": 0, "partition_max_bytes": 1 << 20}
                            ],
                        }
                    ],
                },
            )
            part = fetched.responses[0].partitions[0]
            assert part.high_watermark == produced, version
            assert len(decode_batches(part.records)) == produced, version
        for version in range(SUPPORTED[2][0], SUPPORTED[2][1] + 1):
            listed = client.request(
                2,
                version,
                {
                    "replica_id": -1,
                    "topics": [
                        {"name": topic, "partitions": [{"partition_index": 0, "timestamp": -1}]}
                    ],
                },
            )
            assert listed.topics[0].partitions[0].offset == produced, version
        for version in range(SUPPORTED[3][0], SUPPORTED[3][1] + 1):
            metadata = client.request(3, version, {"topics": [{"name": topic}]})
            assert [t.name for t in metadata.topics] == [topic], version
            assert len(metadata.topics[0].partitions) == 1, version
            assert metadata.brokers[0].port == server.port, version
        for version in range(SUPPORTED[10][0], SUPPORTED[10][1] + 1):
            found = client.request(
                10, version, {"key": "g", "key_type": 0, "coordinator_keys": ["g"]}
            )
            port = found.coordinators[0].port if version >= 4 else found.port
            assert port == server.port, version
        for version in range(SUPPORTED[11][0], SUPPORTED[11][1] + 1):
            group = unique("g")
            joined = client.request(
                11,
                version,
                {
                    "group_id": group,
                    "session_timeout": 6000,
                    "rebalance_timeout": 6000,
                    "member_id": "",
                    "protocol_type": "consumer",
                    "protocols": [{"name": "range", "metadata": subscription(topic)}],
                },
            )
            assert joined.error_code == 0 and joined.leader == joined.member_id, version
            sync_version = min(version, SUPPORTED[14][1])
            mine = assignment(topic, [0])
            synced = client.request(
                14,
                sync_version,
                {
                    "group_id": group,
                    "generation_id": joined.generation_id,
                    "member_id": joined.member_id,
                    "protocol_type": "consumer",
                    "protocol_name": "range",
                    "assignments": [{"member_id": joined.member_id, "assignment": mine}],
                },
            )
            assert (synced.error_code, synced.assignment) == (0, mine), version
            commit_version = max(SUPPORTED[8][0], min(version + 2, SUPPORTED[8][1]))
            committed = client.request(
                8,
                commit_version,
                {
                    "group_id": group,
                    "generation_id_or_member_epoch": joined.generation_id,
                    "generation_id": joined.generation_id,
                    "member_id": joined.member_id,
                    "topics": [
                        {
                            "name": topic,
                            "partitions": [{"partition_index": 0, "committed_offset": version}],
                        }
                    ],
                },
            )
            assert committed.topics[0].partitions[0].error_code == 0, commit_version
            fetch_version = max(SUPPORTED[9][0], min(version, SUPPORTED[9][1]))
            offsets = client.request(
                9,
                fetch_version,
                {"group_id": group, "topics": [{"name": topic, "partition_indexes": [0]}]},
            )
            assert offsets.topics[0].partitions[0].committed_offset == version, fetch_version


def compressed_batch(codec: int, value: bytes, framing: str = "sized") -> bytes:
    """A v2 batch of one record holding `value`, its records compressed with `codec`; a
    "streamed" frame declares no content size (a zstd stream, linked LZ4 blocks)."""
    import cramjam
    from crc32c import crc32c

    plain = encode_batch(0, [None], [value], [int(time.time() * 1000)], None, None)
    records = plain[61:]
    if codec == 4 and framing == "streamed":  # no content size in its header, as Java's
        compressor = cramjam.zstd.Compressor()
        compressor.compress(records)
        body = bytes(compressor.finish())
    elif codec == 4:
        body = bytes(cramjam.zstd.compress(records))
    elif framing == "streamed":  # an LZ4 frame of linked blocks that says no content size
        body = bytes(cramjam.lz4.compress(records))
    else:  # an LZ4 frame of independent 64 KiB blocks, as librdkafka writes them
        blocks = [
            bytes(cramjam.lz4.compress_block(records[i : i + 65536], store_size=False))
            for i in range(0, len(records), 65536)
        ]
        body = struct.pack("<IBBB", 0x184D2204, 0x60, 0x40, 0)
        body += b"".join(struct.pack("<I", len(b)) + b for b in blocks) + b"\x00" * 4
    tail = bytearray(plain[21:61])
    struct.pack_into(">h", tail, 0, codec)
    crc = crc32c(body, crc32c(bytes(tail)))
    return struct.pack(">qiibI", 0, 49 + len(body), -1, 2, crc) + bytes(tail) + body


@pytest.mark.parametrize("framing", ["sized", "streamed"])
@pytest.mark.parametrize("codec", [3, 4], ids=["lz4", "zstd"])
def test_a_decompression_bomb_is_refused(
    server: ProtocolServer, codec: int, framing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runtime.protocol import records

    topic = unique("bomb")
    create_topic(server.bootstrap, topic)
    monkeypatch.setattr(records, "MAX_DECOMPRESSED_BYTES", 1 << 20)
    with RawClient("127.0.0.1", server.port) as client:
        small = client.request(
            0, 9, produce_request(topic, 0, compressed_batch(codec, b"a" * 1000, framing))
        )
        assert small.responses[0].partition_responses[0].error_code == 0
        bomb = compressed_batch(codec, b"\x00" * (2 << 20), framing)
        assert len(bomb) < 64 << 10
        answer = client.request(0, 9, produce_request(topic, 0, bomb))
        assert answer.responses[0].partition_responses[0].error_code == CORRUPT_MESSAGE
    assert len(consume(server.bootstrap, topic, 1)) == 1


BOMB_IN_A_SMALL_ADDRESS_SPACE = """
import resource, sys
import cramjam
from runtime.protocol import records

codec = int(sys.argv[1])
compressor = cramjam.zstd.Compressor() if codec == 4 else cramjam.lz4.Compressor()
for _ in range(1024):  # 1 GiB of zeros in a frame that does not say its size
    compressor.compress(b"\\0" * (1 << 20))
bomb = bytes(compressor.finish())
records.MAX_DECOMPRESSED_BYTES = 16 << 20
vm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if "VmSize" in line)
resource.setrlimit(resource.RLIMIT_AS, (vm + (256 << 20), resource.RLIM_INFINITY))
try:
    records.decompress(codec, bomb)
except records.CorruptRecordError as exc:
    print("refused:", exc)
"""


@pytest.mark.parametrize("codec", [3, 4], ids=["lz4", "zstd"])
def test_a_bomb_that_does_not_say_its_size_never_inflates_past_the_limit(codec: int) -> None:
    """A zstd stream or linked LZ4 blocks of 1 GiB, in a process allowed 256 MiB more than it
    holds: refused at the 16 MiB limit. Inflated whole, it aborted the process (the server)."""
    result = subprocess.run(
        [sys.executable, "-c", BOMB_IN_A_SMALL_ADDRESS_SPACE, str(codec)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "refused: a batch decompresses past the limit" in result.stdout
