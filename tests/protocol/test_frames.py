"""Fuzzing the server's framing and parsing: random, truncated and mutated frames, wrong API
versions, lying lengths. Each must get an answer or a closed connection, never a crashed or
wedged server: a healthy client keeps working through all of it, and a record committed before
the fuzzing is still there, unchanged, after it."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.protocol import ProtocolServer
from runtime.protocol.client import RawClient
from runtime.protocol.messages import SUPPORTED
from runtime.protocol.records import CorruptRecordError, decode_batches, encode_batch
from runtime.testing import unique

TOPIC = "fuzzed"
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProtocolServer]:
    directory: Path = tmp_path_factory.mktemp("fuzz")
    served = ProtocolServer.start_in_thread(
        f"sqlite:///{directory}/broker.db", port=0, max_frame_bytes=1 << 20
    )
    with RawClient("127.0.0.1", served.port) as client:
        client.request(
            19,
            4,
            {
                "topics": [{"name": TOPIC, "num_partitions": 1, "replication_factor": 1}],
                "timeout": 5000,
            },
        )
        batch = encode_batch(0, [b"k"], [b"committed"], [1], None, None)
        answer = client.request(0, 9, produce(batch))
        assert answer.responses[0].partition_responses[0].error_code == 0
    try:
        yield served
    finally:
        served.stop()


def produce(records: bytes) -> dict[str, object]:
    return {
        "acks": -1,
        "timeout": 5000,
        "topic_data": [{"name": TOPIC, "partition_data": [{"index": 0, "records": records}]}],
    }


def exchange(port: int, data: bytes) -> None:
    """Send raw bytes, then read until the server answers and/or closes (or 2 s pass)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
        except (TimeoutError, ConnectionError):
            pass


def assert_healthy(server: ProtocolServer) -> None:
    """A new client is served, and the record committed first is intact."""
    with RawClient("127.0.0.1", server.port, timeout=10) as client:
        assert client.request(18, 3, {}).error_code == 0
        fetched = client.request(
            1,
            12,
            {
                "replica_id": -1,
                "max_wait": 0,
                "min_bytes": 1,
                "max_bytes": 1 << 20,
                "isolation_level": 1,
                "topics": [
                    {
                        "topic": TOPIC,
                        "partitions": [
                            {"partition": 0, "fetch_offset": 0, "partition_max_bytes": 1 << 20}
                        ],
                    }
                ],
            },
        )
        records = fetched.responses[0].partitions[0].records
        assert b"committed" in records


@FUZZ
@given(st.binary(max_size=300))
def test_random_frames(server: ProtocolServer, payload: bytes) -> None:
    exchange(server.port, struct.pack(">i", len(payload)) + payload)
    assert_healthy(server)


@FUZZ
@given(st.binary(min_size=0, max_size=64), st.integers(-(2**31), 2**31 - 1))
def test_lying_lengths(server: ProtocolServer, payload: bytes, length: int) -> None:
    exchange(server.port, struct.pack(">i", length) + payload)
    assert_healthy(server)


@FUZZ
@given(
    st.sampled_from(sorted(SUPPORTED)),
    st.integers(-5, 40),
    st.binary(max_size=200),
)
def test_any_api_and_version_with_garbage(
    server: ProtocolServer, api_key: int, version: int, body: bytes
) -> None:
    header = struct.pack(">hhih", api_key, version, 1, 3) + b"fuz"
    frame = header + b"\x00" + body
    exchange(server.port, struct.pack(">i", len(frame)) + frame)
    assert_healthy(server)


def _valid_frames() -> list[bytes]:
    client = RawClient.__new__(RawClient)
    client.correlation_id = 0
    batch = encode_batch(0, [b"k"], [b"fuzz"], [int(time.time() * 1000)], None, None)
    return [
        client.encode(18, 3, {"client_software_name": "fuzz", "client_software_version": "1"}),
        client.encode(3, 12, {"topics": [{"name": TOPIC}]}),
        client.encode(0, 9, produce(batch)),
        client.encode(0, 3, produce(batch)),
        client.encode(
            11,
            5,
            {
                "group_id": unique("g"),
                "session_timeout": 6000,
                "rebalance_timeout": 6000,
                "member_id": "",
                "protocol_type": "consumer",
                "protocols": [{"name": "range", "metadata": b"\x00\x00\x00\x00\x00\x00"}],
            },
        ),
    ]


@FUZZ
@given(st.data())
def test_truncated_and_mutated_requests(server: ProtocolServer, data: st.DataObject) -> None:
    frame = bytearray(data.draw(st.sampled_from(_valid_frames())))
    if data.draw(st.booleans()):
        frame = frame[: data.draw(st.integers(0, len(frame)))]
    else:
        for _ in range(data.draw(st.integers(1, 4))):
            position = data.draw(st.integers(0, len(frame) - 1))
            frame[position] = data.draw(st.integers(0, 255))
    exchange(server.port, struct.pack(">i", len(frame)) + bytes(frame))
    assert_healthy(server)


records = st.lists(
    st.tuples(
        st.none() | st.binary(max_size=300),
        st.none() | st.binary(max_size=20_000),
        st.integers(0, 10**13),
        st.none() | st.lists(st.tuples(st.text(max_size=20), st.binary(max_size=200)), max_size=3),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(records, st.integers(0, 2**40), st.booleans())
def test_record_batches_round_trip(
    rows: list[tuple[bytes | None, bytes | None, int, list[tuple[str, bytes]] | None]],
    base: int,
    gaps: bool,
) -> None:
    """What the server encodes on Fetch decodes, as a client would, to the same records
    (varints of every width, nulls, headers, offset gaps of compacted batches)."""
    keys = [r[0] for r in rows]
    values = [r[1] for r in rows]
    stamps = [r[2] for r in rows]
    headers = [r[3] or None for r in rows]
    deltas = [3 * i for i in range(len(rows))] if gaps else None
    blob = encode_batch(base, keys, values, stamps, headers, deltas)
    (batch,) = decode_batches(blob)
    assert batch.base_offset == base
    assert (batch.keys, batch.values, batch.timestamps) == (keys, values, stamps)
    assert (batch.headers or [None] * len(rows)) == headers
    corrupted = bytearray(blob)
    corrupted[-1] ^= 1
    with pytest.raises(CorruptRecordError):
        decode_batches(bytes(corrupted))
