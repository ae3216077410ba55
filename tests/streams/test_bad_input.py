"""Bad input: undecodable records, failing agents, bad settings and bad declarations."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pytest

import streams
from runtime.errors import AgentStoppedError
from runtime.transport import connect
from runtime.types import TopicPartition


async def committed_offset(t: Any, topic: str, partition: int = 0) -> int:
    tp = TopicPartition(topic, partition)
    return int((await t.worker.consumer.committed([tp])).get(tp, 0))


async def write_raw(t: Any, topic: str, *records: tuple[bytes | None, bytes | None]) -> None:
    """Write (key, value) bytes as they are, bypassing the topic's codecs."""
    producer = t.transport.producer()
    for key, value in records:
        await producer.send(topic, value, key, partition=0)
    await producer.close()


def copying_app(**topic_options: Any) -> tuple[streams.App, list[Any]]:
    """An app whose agent copies the values of `in` to `out` and remembers what it saw."""
    app = streams.App("bad")
    source = app.topic("in", partitions=1, **topic_options)
    sink = app.topic("out", partitions=1, **topic_options)
    seen: list[Any] = []

    @app.stream(source, sink=[sink])
    async def copy(stream: streams.Stream) -> Any:
        async for value in stream:
            seen.append(value)
            yield value

    return app, seen


# --- undecodable records ------------------------------------------------------------------------


async def test_undecodable_value_stops_the_worker_naming_the_record() -> None:
    """on_decode_error="stop": RecordDecodeError names topic[partition]@offset; nothing commits."""
    app, seen = copying_app()
    async with app.testing(on_decode_error="stop") as t:
        await write_raw(t, "in", (None, b"1"), (None, b"{not json"), (None, b"3"))
        with pytest.raises(streams.RecordDecodeError, match=r"in\[0\]@1") as failure:
            await t.drain()
        assert "json" in str(failure.value)
        assert await t.read("out") == []
        assert await committed_offset(t, "in") == 0
        with pytest.raises(streams.RecordDecodeError):  # still stuck on the same record
            await t.drain()
    assert 3 not in seen


async def test_stop_is_the_default_decode_policy() -> None:
    """Without on_decode_error, an undecodable value raises RecordDecodeError."""
    app, _ = copying_app(value_type=str)
    async with app.testing() as t:
        await write_raw(t, "in", (None, b"\xff\xfe"))
        with pytest.raises(streams.RecordDecodeError, match=r"in\[0\]@0"):
            await t.drain()


async def test_undecodable_value_is_skipped_and_counted() -> None:
    """on_decode_error="skip": the record is dropped, counted, and the rest processed."""
    app, seen = copying_app()
    async with app.testing(on_decode_error="skip") as t:
        await write_raw(t, "in", (None, b"1"), (None, b"{not json"), (None, b"3"), (None, b"]"))
        await t.drain()
        assert t.worker.decode_errors == 2
        assert [e.value for e in await t.read("out")] == [1, 3]
        assert await committed_offset(t, "in") == 4
    assert seen == [1, 3]


async def test_undecodable_key_follows_the_policy_too() -> None:
    """A key the key codec cannot decode is a decode error like a bad value."""
    app, seen = copying_app(key_type=str)
    async with app.testing(on_decode_error="skip") as t:
        await write_raw(t, "in", (b"\xff", b'"bad key"'), (b"ok", b'"good"'))
        await t.drain()
        assert t.worker.decode_errors == 1
    assert seen == ["good"]


async def test_dataclass_value_with_wrong_fields_is_a_decode_error() -> None:
    """A JSON object that does not fit the dataclass cannot be decoded into it."""

    @dataclasses.dataclass
    class Order:
        sku: str
        qty: int

    app, _ = copying_app(value_type=Order)
    async with app.testing(on_decode_error="stop") as t:
        await write_raw(t, "in", (None, b'{"sku": "a", "qty": 1}'), (None, b'{"sku": "b"}'))
        with pytest.raises(streams.RecordDecodeError, match=r"in\[0\]@1") as failure:
            await t.drain()
        assert "Order" in str(failure.value)
        assert await t.read("out") == []


async def test_null_value_reaches_the_agent_as_none() -> None:
    """A record without a value (a tombstone) is not a decode error: the agent gets None."""
    app, seen = copying_app(value_type=str)
    async with app.testing() as t:
        await write_raw(t, "in", (b'"k"', None))
        await t.drain()
        assert t.worker.decode_errors == 0
    assert seen == [None]


# --- failing agents -----------------------------------------------------------------------------


async def test_agent_error_names_the_event_and_keeps_the_cause() -> None:
    """An agent raising makes drain() raise AgentError naming topic[partition]@offset."""
    app = streams.App("bad")
    orders = app.topic("orders", partitions=1)
    out = app.topic("out", partitions=1)

    @app.stream(orders, sink=[out])
    async def agent(stream: streams.Stream) -> Any:
        async for order in stream:
            yield 100 / order["qty"]

    async with app.testing() as t:
        for qty in (1, 2, 0, 4):
            await t.send("orders", value={"qty": qty}, key=f"o{qty}")
        with pytest.raises(streams.AgentError, match=r"orders\[0\]@2") as failure:
            await t.drain()
        assert isinstance(failure.value.__cause__, ZeroDivisionError)
        assert "'agent'" in str(failure.value) and "o0" in str(failure.value)
        assert await t.read("out") == []
        assert await committed_offset(t, "orders") == 0


async def test_a_failed_agent_keeps_failing() -> None:
    """After an AgentError, draining again raises again rather than skipping the event."""
    app = streams.App("bad")
    orders = app.topic("orders", partitions=1)

    @app.stream(orders)
    async def agent(stream: streams.Stream) -> None:
        async for _ in stream:
            raise ValueError("always")

    async with app.testing() as t:
        await t.send("orders", value=1)
        with pytest.raises(streams.AgentError):
            await t.drain()
        with pytest.raises(streams.AgentError):
            await t.drain()
        assert await committed_offset(t, "orders") == 0


async def test_an_agent_that_stops_iterating_is_an_error() -> None:
    """An agent that returns while its stream goes on raises AgentStoppedError."""
    app = streams.App("bad")
    orders = app.topic("orders", partitions=1)

    @app.stream(orders)
    async def agent(stream: streams.Stream) -> None:
        async for _ in stream:
            break

    async with app.testing() as t:
        await t.send_many("orders", [1, 2])
        with pytest.raises(AgentStoppedError, match="returned"):
            await t.drain()


async def test_yielding_a_value_the_sink_cannot_encode_fails_the_agent() -> None:
    """A yielded value that the sink's codec rejects is an AgentError; nothing commits."""
    app = streams.App("bad")
    orders = app.topic("orders", partitions=1)
    texts = app.topic("texts", partitions=1, value_type=str)

    @app.stream(orders, sink=[texts])
    async def agent(stream: streams.Stream) -> Any:
        async for value in stream:
            yield value  # an int, into a str topic

    async with app.testing() as t:
        await t.send("orders", value=5)
        with pytest.raises(streams.AgentError) as failure:
            await t.drain()
        assert isinstance(failure.value.__cause__, TypeError)
        assert await t.read("texts") == []


# --- settings -----------------------------------------------------------------------------------


def test_settings_defaults() -> None:
    """Without arguments or environment, settings take their documented defaults (the
    broker is the one every `streams` command uses by default; the state dir is the app's)."""
    s = streams.Settings.resolve("shop", {}, environ={})
    assert s.broker == "sqlite:///streams.db"  # as every `streams` command
    assert s.state_dir == os.path.abspath("shop-state")  # beside the broker file
    assert s.processing_guarantee == "exactly_once" and s.exactly_once
    assert (s.commit_interval, s.default_partitions) == (0.1, 4)
    assert (s.on_error, s.on_decode_error) == ("fail", None)  # decode errors: as on_error
    assert s.dead_letter_topic == "shop-dead-letter"


def test_settings_given_in_code_are_parsed() -> None:
    """Values given in code are used, parsed to their types."""
    s = streams.Settings.resolve(
        "shop", {"commit_interval": 0.5, "default_partitions": "8"}, environ={}
    )
    assert s.commit_interval == 0.5
    assert s.default_partitions == 8


def test_environment_overrides_code() -> None:
    """STREAMS_<NAME> wins over the value given in code."""
    environ = {
        "STREAMS_COMMIT_INTERVAL": "0.25",
        "STREAMS_PROCESSING_GUARANTEE": "at_least_once",
        "STREAMS_BROKER": "memory://elsewhere",
    }
    s = streams.Settings.resolve(
        "shop", {"commit_interval": 5, "processing_guarantee": "exactly_once"}, environ=environ
    )
    assert s.commit_interval == 0.25
    assert s.processing_guarantee == "at_least_once" and not s.exactly_once
    assert s.broker == "memory://elsewhere"


def test_every_setting_has_an_environment_variable() -> None:
    """Each declared setting is overridable by STREAMS_<NAME in upper case>."""
    assert {s.env for s in streams.SETTINGS} == {
        f"STREAMS_{f.name.upper()}" for f in dataclasses.fields(streams.Settings)
    }


def test_app_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """An App picks up STREAMS_* variables, e.g. the default partition count of its topics."""
    monkeypatch.setenv("STREAMS_DEFAULT_PARTITIONS", "3")
    monkeypatch.setenv("STREAMS_ON_DECODE_ERROR", "skip")
    app = streams.App("envapp", on_decode_error="stop")
    assert app.settings.on_decode_error == "skip"
    assert app.topic("t").partitions == 3


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("processing_guarantee", "maybe_once"),
        ("on_decode_error", "ignore"),
        ("on_error", "ignore"),
        ("dead_letter_topic", "no spaces"),
        ("commit_interval", "0"),
        ("commit_interval", "-1"),
        ("commit_interval", "soon"),
        ("commit_every", "1.5"),
        ("default_partitions", "0"),
        ("max_poll_records", "-5"),
        ("transaction_timeout_ms", "abc"),
    ],
)
def test_bad_values_are_configuration_errors(name: str, text: str) -> None:
    """An unparsable or out-of-range value is a ConfigurationError, from code or environment."""
    with pytest.raises(streams.ConfigurationError, match=name):
        streams.Settings.resolve("shop", {name: text}, environ={})
    env = f"STREAMS_{name.upper()}"
    with pytest.raises(streams.ConfigurationError, match=rf"\${env}"):
        streams.Settings.resolve("shop", {}, environ={env: text})


def test_nan_commit_interval_is_refused() -> None:
    """commit_interval="nan" is not a positive number of seconds: ConfigurationError."""
    with pytest.raises(streams.ConfigurationError, match="commit_interval"):
        streams.Settings.resolve("shop", {"commit_interval": "nan"}, environ={})


def test_unknown_setting_is_refused() -> None:
    """A misspelt setting name raises ConfigurationError listing the known ones."""
    with pytest.raises(streams.ConfigurationError, match="commit_interval"):
        streams.App("shop", commit_intervall=1.0)


async def test_testing_overrides_are_validated_like_settings() -> None:
    """app.testing(on_decode_error="ignore") is refused like App(on_decode_error="ignore")."""
    app, _ = copying_app()
    with pytest.raises(streams.ConfigurationError, match="on_decode_error"):
        async with app.testing(on_decode_error="ignore"):
            pass


@pytest.mark.parametrize("app_id", ["", "has space", "slash/y", "x" * 101, 42])
def test_invalid_app_id_is_refused(app_id: Any) -> None:
    """An app id must be 1-100 of [A-Za-z0-9._-]."""
    with pytest.raises(streams.ConfigurationError, match="app id"):
        streams.App(app_id)


# --- bad declarations ---------------------------------------------------------------------------


def test_concurrency_above_one_is_refused() -> None:
    """`@app.stream(topic, concurrency=2)` raises ConfigurationError."""
    app = streams.App("decl")
    with pytest.raises(streams.ConfigurationError, match="concurrency"):
        app.stream(app.topic("t"), concurrency=2)


def test_agent_must_be_async() -> None:
    """A plain `def` agent raises ConfigurationError when decorated."""
    app = streams.App("decl")
    with pytest.raises(streams.ConfigurationError, match="async"):

        @app.stream(app.topic("t"))  # type: ignore[arg-type]
        def agent(stream: streams.Stream) -> None:
            pass


def test_two_agents_with_one_name_are_refused() -> None:
    """Agent names are unique within an app."""
    app = streams.App("decl")

    async def agent(stream: streams.Stream) -> None:
        async for _ in stream:
            pass

    app.stream("a")(agent)
    with pytest.raises(streams.ConfigurationError, match="two agents"):
        app.stream("b")(agent)


def test_conflicting_declarations_are_refused() -> None:
    """Conflicting or invalid topic, table, timer and codec declarations are refused."""
    app = streams.App("decl")
    app.topic("t", partitions=2)
    assert app.topic("t") is app.topic("t", partitions=2)
    with pytest.raises(streams.ConfigurationError, match="partitions"):
        app.topic("t", partitions=3)
    app.table("tbl")
    with pytest.raises(streams.ConfigurationError, match="twice"):
        app.table("tbl")
    with pytest.raises(streams.ConfigurationError, match="callable"):
        app.table("other", default=0)  # type: ignore[arg-type]
    with pytest.raises(streams.ConfigurationError, match="positive"):
        app.timer(interval=0)
    with pytest.raises(streams.ConfigurationError, match="unknown codec"):
        app.topic("u", value_type="no-such-codec")


async def test_agent_yielding_before_iterating_is_refused() -> None:
    """An agent must iterate its stream before yielding: ConfigurationError at start."""
    app = streams.App("decl")

    @app.stream(app.topic("t"), sink=["out"])
    async def agent(stream: streams.Stream) -> Any:
        yield "hello"
        async for value in stream:
            yield value

    with pytest.raises(streams.ConfigurationError, match="yielded before iterating"):
        async with app.testing():
            pass


async def test_agent_returning_without_iterating_is_refused() -> None:
    """An agent that never iterates its stream is a ConfigurationError at start."""
    app = streams.App("decl")

    @app.stream(app.topic("t"))
    async def agent(stream: streams.Stream) -> None:
        return None

    with pytest.raises(streams.ConfigurationError, match="without iterating"):
        async with app.testing():
            pass


# --- co-partitioning ----------------------------------------------------------------------------


async def test_sources_with_different_partition_counts_are_refused_at_start() -> None:
    """Two source topics of one app with 2 and 4 partitions: ConfigurationError at start."""
    app = streams.App("copart")

    @app.stream(app.topic("small", partitions=2))
    async def a(stream: streams.Stream) -> None:
        async for _ in stream:
            pass

    @app.stream(app.topic("big", partitions=4))
    async def b(stream: streams.Stream) -> None:
        async for _ in stream:
            pass

    with pytest.raises(streams.ConfigurationError, match="co-partitioning") as failure:
        async with app.testing():
            pass
    assert "small" in str(failure.value) and "big" in str(failure.value)


async def test_table_with_other_partition_count_than_its_source_is_refused() -> None:
    """A table's partition count must match the app's source topics."""
    app = streams.App("copart")
    app.table("counts", partitions=8)

    @app.stream(app.topic("events", partitions=4))
    async def agent(stream: streams.Stream) -> None:
        async for _ in stream:
            pass

    with pytest.raises(streams.ConfigurationError, match="table counts"):
        async with app.testing():
            pass


async def test_sinks_may_have_any_partition_count() -> None:
    """Only sources and tables must be co-partitioned: a sink of another size is fine."""
    app = streams.App("copart")
    out = app.topic("out", partitions=3)

    @app.stream(app.topic("events", partitions=4), sink=[out])
    async def agent(stream: streams.Stream) -> Any:
        async for value in stream:
            yield value

    async with app.testing() as t:
        await t.send("events", value=1)
        await t.drain()
        assert [e.value for e in await t.read("out")] == [1]


async def test_existing_topic_with_other_partition_count_is_refused() -> None:
    """A topic that exists on the broker with another partition count fails the start."""
    url = "memory://bad-input-existing-topic"
    keeper = connect(url)
    try:
        await keeper.create_topic("events", 2)
        app = streams.App("copart")

        @app.stream(app.topic("events", partitions=4))
        async def agent(stream: streams.Stream) -> None:
            async for _ in stream:
                pass

        with pytest.raises(streams.ConfigurationError, match="'events' has 2 partitions"):
            async with app.testing(broker=url):
                pass
    finally:
        await keeper.close()
