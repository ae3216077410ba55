"""kcat (Debian's package: kcat 1.7 on librdkafka 2.0) against `streams broker serve`.

Produce with keys and headers, consume them back, read_committed hiding an aborted
transaction's records (written by confluent-kafka's transactional producer), and `-L`
metadata. Ours only: Tansu 0.6 fails this librdkafka's first request (ApiVersions), so kcat
cannot talk to it at all (shared/reference/tansu.md, deviation 8).
"""

from __future__ import annotations

from confluent_kafka import Producer

from runtime.partitioner import partition_for_key
from runtime.testing import KafkaBroker, unique
from tests.protocol.clients import create_topic, kcat, kcat_json_lines, read_all

PARTITIONS = 3


def headers_of(record: dict[str, object]) -> list[tuple[str, str]]:
    """kcat -J prints headers as a flat list: [name, value, name, value, ...]."""
    flat = record.get("headers") or []
    assert isinstance(flat, list)
    return list(zip(flat[0::2], flat[1::2], strict=True))


def test_produce_and_consume_with_keys_and_headers(served_broker: KafkaBroker) -> None:
    broker = served_broker
    topic = unique("kcat")
    create_topic(broker, topic, PARTITIONS)
    lines = "".join(f"key-{i}:value {i}\n" for i in range(50))
    headers = ["-H", "source=kcat", "-H", "n=1"]
    kcat(broker, "-P", "-t", topic, "-K", ":", *headers, "-X", "partitioner=murmur2", stdin=lines)

    # What librdkafka's current consumer reads back: keys, values, headers, partitions.
    records = read_all(broker, topic, PARTITIONS, expected=50)
    assert sorted((r.key(), r.value()) for r in records) == sorted(
        (b"key-%d" % i, b"value %d" % i) for i in range(50)
    )
    assert all(r.headers() == [("source", b"kcat"), ("n", b"1")] for r in records)

    # What kcat reads back, to the end of every partition.
    out = kcat(broker, "-C", "-t", topic, "-o", "beginning", "-e", "-J", "-q").stdout
    consumed = kcat_json_lines(out)
    assert sorted((c["key"], c["payload"]) for c in consumed) == sorted(
        (f"key-{i}", f"value {i}") for i in range(50)
    )
    for record in consumed:
        assert headers_of(record) == [("source", "kcat"), ("n", "1")]
        # produced with Java's partitioner: each record is on the partition its key names
        assert record["partition"] == partition_for_key(record["key"].encode(), PARTITIONS)
    offsets = sorted((c["partition"], c["offset"]) for c in consumed)
    for partition in range(PARTITIONS):
        mine = [offset for p, offset in offsets if p == partition]
        assert mine == list(range(len(mine)))  # dense from 0: no gaps, no duplicates


def test_read_committed_never_sees_an_aborted_transaction(served_broker: KafkaBroker) -> None:
    broker = served_broker
    topic = unique("kcat-txn")
    create_topic(broker, topic, PARTITIONS)
    producer = Producer(
        {"bootstrap.servers": broker.bootstrap, "transactional.id": unique("kcat-txn-id")}
    )
    producer.init_transactions(30)
    for outcome in ("aborted", "committed", "aborted-again"):
        producer.begin_transaction()
        for i in range(20):
            producer.produce(topic, f"{outcome}-{i}".encode(), f"k{i}".encode())
        producer.flush(30)
        if outcome.startswith("aborted"):
            producer.abort_transaction(30)
        else:
            producer.commit_transaction(30)

    def consume(isolation: str) -> list[str]:
        out = kcat(
            broker,
            "-C",
            "-t",
            topic,
            "-o",
            "beginning",
            "-e",
            "-J",
            "-q",
            "-X",
            f"isolation.level={isolation}",
        ).stdout
        return sorted(record["payload"] for record in kcat_json_lines(out))

    assert consume("read_committed") == sorted(f"committed-{i}" for i in range(20))
    # The aborted records are in the log: read_uncommitted readers (and so the test) see them.
    assert consume("read_uncommitted") == sorted(
        f"{outcome}-{i}" for outcome in ("aborted", "committed", "aborted-again") for i in range(20)
    )


def test_metadata(served_broker: KafkaBroker) -> None:
    broker = served_broker
    topic = unique("kcat-meta")
    create_topic(broker, topic, PARTITIONS)
    metadata = kcat_json_lines(kcat(broker, "-L", "-J").stdout)[0]

    brokers = {b["id"]: b["name"] for b in metadata["brokers"]}
    assert list(brokers.values()) == [broker.bootstrap]  # one node, advertised as bound
    topics = {t["topic"]: t for t in metadata["topics"]}
    assert topic in topics
    partitions = sorted(topics[topic]["partitions"], key=lambda p: p["partition"])
    assert [p["partition"] for p in partitions] == list(range(PARTITIONS))
    for partition in partitions:
        assert partition["leader"] in brokers
        assert [r["id"] for r in partition["replicas"]] == [partition["leader"]]
        assert "error" not in partition or not partition["error"]
    assert "error" not in topics[topic] or not topics[topic]["error"]

    # -t: that topic only.
    one = kcat_json_lines(kcat(broker, "-L", "-J", "-t", topic).stdout)[0]
    assert [t["topic"] for t in one["topics"]] == [topic]


def test_balanced_consumer_group_commits(served_broker: KafkaBroker) -> None:
    """kcat -G: this older librdkafka's group protocol (JoinGroup, SyncGroup, OffsetCommit on
    close); a second run of the group starts at the committed offsets and reads only what
    was produced since."""
    broker = served_broker
    topic, group = unique("kcat-group"), unique("kcat-group")
    create_topic(broker, topic, PARTITIONS)

    def produce_lines(first: int, count: int) -> None:
        lines = "".join(f"key-{i}:value-{i}\n" for i in range(first, first + count))
        kcat(broker, "-P", "-t", topic, "-K", ":", stdin=lines)

    def run_group() -> list[str]:
        reset = "auto.offset.reset=earliest"  # for the group's first run: no offsets yet
        out = kcat(broker, "-G", group, "-X", reset, "-e", "-J", "-q", topic, timeout=60).stdout
        return sorted(record["payload"] for record in kcat_json_lines(out))

    produce_lines(0, 40)
    assert run_group() == sorted(f"value-{i}" for i in range(40))
    produce_lines(40, 10)
    assert run_group() == sorted(f"value-{i}" for i in range(40, 50))
