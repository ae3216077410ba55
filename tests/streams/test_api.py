"""The streams API end to end on a private in-memory broker: iterating a stream, sinks, sends
inside agents, timers and tasks, codecs."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import orjson

import streams
from runtime.partitioner import partition_for_key
from runtime.types import TopicPartition


def values(events: list[streams.Event]) -> list[Any]:
    return [e.value for e in events]


async def poll_until(worker: Any, count: int) -> None:
    """Drive the worker until it has processed `count` events (without waiting to commit)."""
    done = 0
    for _ in range(500):
        done += await worker.poll(timeout=0.01)
        if done >= count:
            return
    raise AssertionError(f"processed {done} of {count} events")


# --- iterating ----------------------------------------------------------------------------------


async def test_async_for_sees_every_value_once_in_order() -> None:
    """`async for value in stream` gets each value of a partition once, in offset order."""
    app = streams.App("api")
    orders = app.topic("orders", partitions=1)
    seen: list[Any] = []

    @app.stream(orders)
    async def agent(stream: streams.Stream) -> None:
        async for value in stream:
            seen.append(value)

    async with app.testing() as t:
        await t.send_many("orders", [{"n": i} for i in range(300)])
        await t.drain()
        assert t.worker.events_processed == 300
    assert seen == [{"n": i} for i in range(300)]


async def test_items_gives_keys_and_values() -> None:
    """`stream.items()` yields (key, value) pairs with the keys the records were sent with."""
    app = streams.App("api")
    orders = app.topic("orders", partitions=4)
    seen: list[tuple[Any, Any]] = []

    @app.stream(orders)
    async def agent(stream: streams.Stream) -> None:
        async for key, value in stream.items():
            seen.append((key, value))

    sent = [(f"user-{i % 5}", {"n": i}) for i in range(40)]
    async with app.testing() as t:
        for key, value in sent:
            await t.send("orders", value=value, key=key)
        await t.drain()
    assert sorted(seen, key=lambda kv: kv[1]["n"]) == sent


async def test_events_carry_key_value_headers_timestamp_and_position() -> None:
    """`stream.events()` yields Events with the record's metadata, partitioned by murmur2(key)."""
    app = streams.App("api")
    orders = app.topic("orders", partitions=4)
    seen: list[streams.Event] = []

    @app.stream(orders)
    async def agent(stream: streams.Stream) -> None:
        async for event in stream.events():
            seen.append(event)

    async with app.testing() as t:
        meta = await t.send(
            "orders", value={"total": 3}, key="k1", headers=[("trace", b"abc")], timestamp=1234
        )
        await t.drain()
    assert len(seen) == 1
    event = seen[0]
    assert (event.key, event.value) == ("k1", {"total": 3})
    assert event.headers == [("trace", b"abc")]
    assert event.timestamp == 1234
    assert event.topic == "orders"
    assert event.partition == partition_for_key(orjson.dumps("k1"), 4) == meta.partition
    assert event.offset == meta.offset == 0


async def test_a_plain_coroutine_agent_runs_without_sinks() -> None:
    """An agent that never yields (a coroutine) processes events and produces nothing."""
    app = streams.App("api")
    orders = app.topic("orders", partitions=1)
    out = app.topic("out", partitions=1)
    count = 0

    @app.stream(orders, sink=[out])
    async def agent(stream: streams.Stream) -> None:
        nonlocal count
        async for _ in stream:
            count += 1

    async with app.testing() as t:
        await t.send_many("orders", range(10))
        await t.drain()
        assert await t.read("out") == []
    assert count == 10


# --- sinks --------------------------------------------------------------------------------------


async def test_yields_go_to_every_sink_keyed_like_the_event() -> None:
    """Each yielded value is written to every sink topic, with the current event's key."""
    app = streams.App("api")
    orders = app.topic("orders", partitions=4)
    first = app.topic("first")

    @app.stream(orders, sink=[first, "second"])
    async def agent(stream: streams.Stream) -> Any:
        async for order in stream:
            yield {"double": order["n"] * 2}

    sent = {f"k{i}": i for i in range(20)}
    async with app.testing() as t:
        for key, n in sent.items():
            await t.send("orders", value={"n": n}, key=key)
        await t.drain()
        for sink in ("first", "second"):
            out = await t.read(sink)
            assert {e.key: e.value for e in out} == {k: {"double": n * 2} for k, n in sent.items()}
            assert len(out) == len(sent)
            assert all(e.partition == partition_for_key(orjson.dumps(e.key), 4) for e in out)


async def test_yield_from_a_keyless_event_is_keyless() -> None:
    """A value yielded while processing a record without a key is written without a key."""
    app = streams.App("api")
    orders = app.topic("orders", partitions=1)
    out = app.topic("out", partitions=1)

    @app.stream(orders, sink=[out])
    async def agent(stream: streams.Stream) -> Any:
        async for value in stream:
            yield value + 1

    async with app.testing() as t:
        await t.send_many("orders", [1, 2, 3])
        await t.drain()
        out_events = await t.read("out")
    assert [(e.key, e.value) for e in out_events] == [(None, 2), (None, 3), (None, 4)]


async def test_yield_keeps_each_events_own_key_even_when_keys_compare_equal() -> None:
    """Keys 1, True and 1.0 are equal in Python, not in JSON: each output keeps its own key."""
    app = streams.App("api")
    orders = app.topic("orders", partitions=1)
    out = app.topic("out", partitions=1)

    @app.stream(orders, sink=[out])
    async def agent(stream: streams.Stream) -> Any:
        async for value in stream:
            yield value

    keys = [1, True, 1.0]
    async with app.testing() as t:
        for i, key in enumerate(keys):
            await t.send("orders", value=i, key=key)
        await t.drain()
        out_events = await t.read("out")
    assert [type(e.key) for e in out_events] == [int, bool, float]


async def test_yield_works_for_events_with_json_object_keys() -> None:
    """A JSON object key (a dict, unhashable) is a valid key: yielding for it writes the output."""
    app = streams.App("api")
    orders = app.topic("orders", partitions=1)
    out = app.topic("out", partitions=1)

    @app.stream(orders, sink=[out])
    async def agent(stream: streams.Stream) -> Any:
        async for value in stream:
            yield value

    async with app.testing() as t:
        await t.send("orders", value="v", key={"user": 1, "region": "eu"})
        await t.drain()
        out_events = await t.read("out")
    assert [(e.key, e.value) for e in out_events] == [({"user": 1, "region": "eu"}, "v")]


# --- sending inside an agent --------------------------------------------------------------------


async def test_send_inside_an_agent_returns_none_and_is_visible_after_drain() -> None:
    """`topic.send` in an agent joins its transaction: it returns None, the record commits."""
    app = streams.App("api")
    orders = app.topic("orders", partitions=1)
    audit = app.topic("audit", partitions=2)
    results: list[Any] = []

    @app.stream(orders)
    async def agent(stream: streams.Stream) -> None:
        async for key, value in stream.items():
            results.append(await audit.send(key=f"audit-{key}", value={"seen": value}))

    async with app.testing() as t:
        await t.send("orders", value=1, key="a")
        await t.send("orders", value=2, key="b")
        await t.drain()
        out = await t.read("audit")
    assert results == [None, None]
    assert sorted((e.key, e.value["seen"]) for e in out) == [("audit-a", 1), ("audit-b", 2)]
    assert all(e.partition == partition_for_key(orjson.dumps(e.key), 2) for e in out)


async def test_send_inside_an_agent_is_invisible_until_the_commit() -> None:
    """Records sent by an agent stay invisible to read_committed readers until the commit."""
    app = streams.App("api", commit_interval=3600)
    orders = app.topic("orders", partitions=1)
    audit = app.topic("audit", partitions=1)

    @app.stream(orders)
    async def agent(stream: streams.Stream) -> None:
        async for value in stream:
            await audit.send(value=value)

    async with app.testing() as t:
        await t.send_many("orders", [1, 2, 3])
        await poll_until(t.worker, 3)
        assert await t.read("audit") == []
        await t.worker.commit()
        assert values(await t.read("audit")) == [1, 2, 3]


async def test_agent_raising_later_in_the_batch_aborts_its_earlier_sends() -> None:
    """An agent that raises after sending in the same batch: its sends and yields are aborted."""
    app = streams.App("api")
    orders = app.topic("orders", partitions=1)
    audit = app.topic("audit", partitions=1)
    out = app.topic("out", partitions=1)

    @app.stream(orders, sink=[out])
    async def agent(stream: streams.Stream) -> Any:
        async for value in stream:
            if value == "boom":
                raise RuntimeError("bad order")
            await audit.send(value=value)
            yield value

    async with app.testing() as t:
        await t.send_many("orders", ["a", "b", "boom"])
        try:
            await t.drain()
        except streams.AgentError:
            pass
        else:
            raise AssertionError("drain() did not raise AgentError")
        assert await t.read("audit") == []
        assert await t.read("out") == []
        tp = TopicPartition("orders", 0)
        assert (await t.worker.consumer.committed([tp])).get(tp, 0) == 0


async def test_send_outside_an_agent_is_written_at_once() -> None:
    """`topic.send` outside an agent writes immediately and returns the record's metadata."""
    app = streams.App("api")
    out = app.topic("out", partitions=1)

    async with app.testing() as t:
        meta = await out.send(key="k", value={"x": 1})
        again = await app.send("out", key="k", value={"x": 2})
        assert meta is not None and again is not None
        assert (meta.topic, meta.partition, meta.offset) == ("out", 0, 0)
        assert again.offset == 1
        assert [(e.key, e.value) for e in await t.read(out)] == [("k", {"x": 1}), ("k", {"x": 2})]


async def test_at_least_once_processes_and_commits_without_transactions() -> None:
    """processing_guarantee="at_least_once" runs the same agent; outputs and offsets commit."""
    app = streams.App("api", processing_guarantee="at_least_once")
    orders = app.topic("orders", partitions=1)
    out = app.topic("out", partitions=1)

    @app.stream(orders, sink=[out])
    async def agent(stream: streams.Stream) -> Any:
        async for value in stream:
            yield value * 2

    async with app.testing() as t:
        assert not t.settings.exactly_once
        await t.send_many("orders", [1, 2, 3])
        await t.drain()
        assert values(await t.read("out")) == [2, 4, 6]
        tp = TopicPartition("orders", 0)
        assert await t.worker.consumer.committed([tp]) == {tp: 3}


# --- timers and tasks ---------------------------------------------------------------------------


async def test_timer_runs_repeatedly() -> None:
    """`@app.timer(interval=...)` runs again and again while the worker runs."""
    app = streams.App("api")
    ticks = 0

    @app.timer(interval=0.02)
    async def tick() -> None:
        nonlocal ticks
        ticks += 1

    async with app.testing():
        await asyncio.sleep(0.3)
        assert ticks >= 3
    stopped_at = ticks
    await asyncio.sleep(0.1)
    assert ticks == stopped_at  # stopped with the worker


async def test_timer_keeps_running_after_it_raises() -> None:
    """A timer that raises is logged and runs again at its next interval."""
    app = streams.App("api")
    calls = 0

    @app.timer(interval=0.02)
    async def flaky() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("flaky timer")

    async with app.testing():
        await asyncio.sleep(0.3)
    assert calls >= 3


async def test_task_runs_once() -> None:
    """`@app.task` runs exactly once when the worker starts."""
    app = streams.App("api")
    runs = 0

    @app.task
    async def once() -> None:
        nonlocal runs
        runs += 1

    async with app.testing():
        await asyncio.sleep(0.2)
    assert runs == 1


async def test_timer_can_send_to_a_topic() -> None:
    """A timer's `topic.send` is written at once (timers are not in a transaction)."""
    app = streams.App("api")
    beats = app.topic("beats", partitions=1)

    @app.timer(interval=0.02)
    async def beat() -> None:
        await beats.send(value="beat")

    async with app.testing() as t:
        await asyncio.sleep(0.2)
        out = await t.read("beats")
    assert len(out) >= 3
    assert set(values(out)) == {"beat"}


# --- codecs -------------------------------------------------------------------------------------


@dataclasses.dataclass
class Point:
    x: int
    y: int
    label: str = ""


async def roundtrip(value_type: Any, sent: Any, key_type: Any = None, key: Any = None) -> Any:
    """Send `sent` through an agent that copies it to a sink of the same codecs; returns
    (what the agent saw, what a reader decodes from the sink)."""
    app = streams.App("codecs")
    source = app.topic("in", partitions=1, value_type=value_type, key_type=key_type)
    sink = app.topic("out", partitions=1, value_type=value_type, key_type=key_type)
    seen: list[tuple[Any, Any]] = []

    @app.stream(source, sink=[sink])
    async def copy(stream: streams.Stream) -> Any:
        async for k, v in stream.items():
            seen.append((k, v))
            yield v

    async with app.testing() as t:
        await t.send("in", value=sent, key=key)
        await t.drain()
        out = await t.read("out")
    assert len(seen) == len(out) == 1
    return seen[0], (out[0].key, out[0].value)


async def test_json_is_the_default_codec() -> None:
    """Without a value_type, values are JSON: dicts, lists, numbers, strings round-trip."""
    sent = {"items": [1, 2.5, "three", None, True], "nested": {"a": []}}
    seen, read = await roundtrip(None, sent, key=42)
    assert seen == read == (42, sent)


async def test_str_codec_round_trips_text() -> None:
    """value_type=str and key_type="str" carry UTF-8 text."""
    seen, read = await roundtrip(str, "héllo wörld ✓", key_type="str", key="clé")
    assert seen == read == ("clé", "héllo wörld ✓")


async def test_raw_codec_passes_bytes_unchanged() -> None:
    """value_type=bytes and "raw" carry arbitrary bytes as they are."""
    blob = bytes(range(256))
    seen, read = await roundtrip(bytes, blob, key_type="raw", key=b"\x00\xff")
    assert seen == read == (b"\x00\xff", blob)
    assert isinstance(seen[1], bytes)


async def test_dataclass_values_round_trip_as_the_dataclass() -> None:
    """value_type=<a dataclass> gives the agent and readers instances of that dataclass."""
    seen, read = await roundtrip(Point, Point(3, -4, "p"))
    assert seen[1] == read[1] == Point(3, -4, "p")
    assert type(seen[1]) is Point and type(read[1]) is Point


async def test_registered_codec_is_used_by_name() -> None:
    """A codec registered with register_codec() is chosen by `value_type=<name>`."""
    streams.register_codec(
        "test-upper", streams.Codec("test-upper", lambda v: v.upper().encode(), bytes.decode)
    )
    seen, read = await roundtrip("test-upper", "shout")
    assert seen[1] == read[1] == "SHOUT"
    assert streams.get_codec("test-upper").name == "test-upper"


def test_get_codec_chooses_by_type_and_name() -> None:
    """get_codec maps None/str/bytes/dataclasses/names to the documented codecs."""
    assert streams.get_codec(None).name == "json"
    assert streams.get_codec("orjson").name == "json"
    assert streams.get_codec(dict).name == "json"
    assert streams.get_codec(str).name == "str"
    assert streams.get_codec(bytes).name == "raw"
    assert streams.get_codec(Point).name.startswith("dataclass:")
    codec = streams.get_codec(Point)
    assert codec.decode(codec.encode(Point(1, 2))) == Point(1, 2)
