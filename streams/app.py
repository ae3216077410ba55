"""The App: where topics, tables, agents, timers and tasks are declared, and how they run.

app = streams.App("wordcount", broker="sqlite:///wordcount.db")
words = app.topic("words", value_type=str)
counts = app.table("counts", default=int)

@app.stream(words, sink=[app.topic("word-counts")])
async def count(stream):
    async for word in stream.group_by(lambda w: w, name="by-word"):
        counts[word] += 1
        yield {"word": word, "count": counts[word]}

app.main()          # `python wordcount.py worker` runs a worker until SIGTERM/SIGINT
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from runtime.errors import AppError, ConfigurationError, StreamsError, exit_code
from runtime.transport import Producer, Transport
from runtime.types import Headers, RecordMetadata
from runtime.worker import AgentSpec, AppSpec, Inbox, RepartitionSpec, TimerSpec, Worker
from runtime.worker.failures import POLICIES
from streams import script
from streams.codecs import Codec, get_codec
from streams.script import importing_for_cli
from streams.settings import Settings, redacted
from streams.stream import Discovered, Stream
from streams.table import Table
from streams.topic import Topic

log = logging.getLogger(__name__)
APP_ID = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
TABLE_STORES = ("local", "memory")
AgentFunction = Callable[[Stream], AsyncIterator[Any] | Awaitable[None]]


class Agent:
    def __init__(
        self,
        name: str,
        topic: Topic,
        fn: AgentFunction,
        sinks: list[Topic],
        on_error: str | None = None,
        dead_letter: str | None = None,
    ) -> None:
        self.name = name
        self.topic = topic
        self.fn = fn
        self.sinks = sinks
        self.on_error = on_error  # None: the app's on_error
        self.dead_letter = dead_letter  # None: the app's dead_letter_topic


class App:
    def __init__(
        self,
        id: str,
        *,
        broker: str | None = None,
        processing_guarantee: str | None = None,
        commit_interval: float | None = None,
        state_dir: str | None = None,
        **settings: Any,
    ) -> None:
        script.watch(self, sys._getframe(1).f_globals.get("__name__"))
        if not isinstance(id, str) or not APP_ID.match(id):
            raise ConfigurationError(f"invalid app id {id!r}: use 1-100 of [A-Za-z0-9._-]")
        self.id = id
        self._given = {
            "broker": broker,
            "processing_guarantee": processing_guarantee,
            "commit_interval": commit_interval,
            "state_dir": state_dir,
            **settings,
        }
        self.settings = Settings.resolve(id, self._given)
        self.topics: dict[str, Topic] = {}
        self.tables: dict[str, Table] = {}
        self.agents: list[Agent] = []
        self.timers: list[TimerSpec] = []
        self._worker: Worker | None = None
        self._transport: Transport | None = None
        self._producer: Producer | None = None

    def __repr__(self) -> str:
        return f"<App {self.id} broker={self.settings.broker}>"

    # --- declarations -------------------------------------------------------------------

    def topic(
        self,
        name: str,
        *,
        partitions: int | None = None,
        key_type: str | type | Codec | None = None,
        value_type: str | type | Codec | None = None,
        compacted: bool = False,
        internal: bool = False,
    ) -> Topic:
        """Declare a topic (created when a worker starts, if it does not exist)."""
        existing = self.topics.get(name)
        if existing is not None:
            if partitions is not None and partitions != existing.partitions:
                raise ConfigurationError(
                    f"topic {name!r} declared with {existing.partitions} and {partitions} "
                    "partitions"
                )
            return existing
        topic = Topic(
            self,
            name,
            partitions or self.settings.default_partitions,
            get_codec(key_type),
            get_codec(value_type),
            compacted=compacted,
            internal=internal,
        )
        self.topics[name] = topic
        return topic

    def table(
        self,
        name: str,
        *,
        default: Callable[[], Any] | None = None,
        key_type: str | type | Codec | None = None,
        value_type: str | type | Codec | None = None,
        partitions: int | None = None,
        store: str = "local",
    ) -> Table:
        """Declare a table; its changelog is the compacted topic `<app>-<name>-changelog`.

        `store="local"` keeps its rows in the worker's local store with the
        `table_cache_size` most recently used keys in memory (tables larger than memory,
        restarts without replay); `store="memory"` keeps every row in a dict (see
        docs/streams.md, Tables)."""
        if name in self.tables:
            raise ConfigurationError(f"table {name!r} is declared twice")
        if store not in TABLE_STORES:
            raise ConfigurationError(f"store={store!r}: must be one of {TABLE_STORES}")
        if default is not None and not callable(default):
            raise ConfigurationError("default= must be a callable such as int or list")
        table = Table(
            self,
            name,
            partitions or self.settings.default_partitions,
            get_codec(key_type),
            get_codec(value_type),
            default,
            store=store,
        )
        self.tables[name] = table
        return table

    def stream(
        self,
        topic: Topic | str,
        *,
        sink: Sequence[Topic | str] = (),
        concurrency: int = 1,
        name: str | None = None,
        on_error: str | None = None,
        dead_letter: Topic | str | None = None,
    ) -> Callable[[AgentFunction], AgentFunction]:
        """Decorate an agent: `async def agent(stream)` that iterates `stream`; what it
        yields goes to every topic of `sink`, keyed like the event being processed.

        `on_error` ("fail", "skip", "dead_letter"; default: the app's) says what happens to a
        record this agent (or its group_by) cannot process; `dead_letter=` names its
        dead-letter topic (and implies on_error="dead_letter"). See docs/errors.md."""
        if on_error is not None and on_error not in POLICIES:
            raise ConfigurationError(f"on_error={on_error!r}: must be one of {POLICIES}")
        if dead_letter is not None:
            if on_error not in (None, "dead_letter"):
                raise ConfigurationError(
                    f"dead_letter= goes with on_error='dead_letter', not {on_error!r}"
                )
            on_error = "dead_letter"
        if concurrency != 1:
            raise ConfigurationError(
                "concurrency > 1 is not supported: one agent instance per partition keeps "
                "events of a key in order; run more workers to scale"
            )
        source = self.topic(topic) if isinstance(topic, str) else topic
        sinks = [self.topic(s) if isinstance(s, str) else s for s in sink]
        dead_letter_name = None if dead_letter is None else self._dead_letter(dead_letter, source)

        def register(fn: AgentFunction) -> AgentFunction:
            if not (inspect.isasyncgenfunction(fn) or inspect.iscoroutinefunction(fn)):
                raise ConfigurationError(f"agent {fn.__name__!r} must be an async function")
            agent_name = name or fn.__name__
            if any(a.name == agent_name for a in self.agents):
                raise ConfigurationError(f"two agents are called {agent_name!r}")
            self.agents.append(Agent(agent_name, source, fn, sinks, on_error, dead_letter_name))
            return fn

        return register

    def _dead_letter(self, topic: Topic | str, source: Topic) -> str:
        """A dead-letter topic's name; one named by a string is declared with raw codecs
        (its records are bytes, as they were written) and the source's partition count."""
        if isinstance(topic, str):
            if topic not in self.topics:
                self.topic(topic, partitions=source.partitions, key_type="raw", value_type="raw")
            return topic
        if self.topics.get(topic.name) is not topic:
            raise ConfigurationError(f"topic {topic.name!r} is not a topic of this app")
        return topic.name

    def timer(self, interval: float) -> Callable[[Callable[[], Awaitable[None]]], Any]:
        """Decorate `async def fn()` to run every `interval` seconds in each worker."""
        if interval <= 0:
            raise ConfigurationError("timer interval must be positive")

        def register(fn: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
            self.timers.append(TimerSpec(fn.__name__, float(interval), fn))
            return fn

        return register

    def task(self, fn: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """Decorate `async def fn()` to run once when each worker starts."""
        self.timers.append(TimerSpec(fn.__name__, None, fn))
        return fn

    # --- producing without running agents -----------------------------------------------

    async def send(
        self,
        topic: Topic | str,
        *,
        key: Any = None,
        value: Any = None,
        headers: Headers | None = None,
        timestamp: int | None = None,
        partition: int | None = None,
    ) -> RecordMetadata | None:
        """Send one record to a declared topic (or a topic name, JSON-encoded)."""
        target = self.topics.get(topic) if isinstance(topic, str) else topic
        if target is None:
            target = self.topic(str(topic))
        return await target.send(
            key=key, value=value, headers=headers, timestamp=timestamp, partition=partition
        )

    async def _send_now(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers | None,
        timestamp: int | None,
        partition: int | None,
    ) -> RecordMetadata:
        if self._producer is None:
            if self._transport is None:
                self._transport = self.settings.connect()
            self._producer = self._transport.producer()
        return await self._producer.send(
            topic, value, key, partition=partition, headers=headers, timestamp=timestamp
        )

    def _worker_producer(self) -> Producer:
        if self._worker is None:
            raise AppError("no worker of this app is running")
        return self._worker.producer

    async def close(self) -> None:
        """Release the producer and broker connection used by `send()`."""
        if self._producer is not None:
            await self._producer.close()
            self._producer = None
        if self._transport is not None:
            await self._transport.close()
            self._transport = None

    # --- building and running -----------------------------------------------------------

    async def build(self) -> AppSpec:
        """Discover the agents' operations and describe every topic the app needs."""
        agents: list[AgentSpec] = []
        repartitions: list[RepartitionSpec] = []
        for agent in self.agents:
            stream = await self._discover(agent)
            source = agent.topic
            if stream.group is not None:
                group = stream.group
                if group.through is not None:  # through(topic): the user's topic
                    target = group.through
                    if target is agent.topic:
                        raise ConfigurationError(
                            f"agent {agent.name!r}: through({target.name!r}) on a stream of "
                            "that same topic would read its own output forever"
                        )
                else:
                    # A map before group_by may change the value's type: then values travel
                    # as JSON; otherwise with the source topic's own codec.
                    mapped = any(kind in ("map", "flat_map") for kind, _ in group.ops_before)
                    target = self.topic(
                        f"{self.id}-{group.name}-repartition",
                        partitions=agent.topic.partitions,
                        value_type="json" if mapped else agent.topic.value,
                        internal=True,
                    )
                repartitions.append(
                    RepartitionSpec(
                        agent.topic.name, target.name, group.ops_before, group.key_fn, agent.name
                    )
                )
                source = target
            agents.append(
                AgentSpec(
                    agent.name,
                    source.name,
                    self._runner(agent, source),
                    [s.name for s in agent.sinks],
                    agent.on_error,
                    agent.dead_letter,
                )
            )
            self._declare_dead_letter(agent)
        topics = {name: topic.spec() for name, topic in self.topics.items()}
        for table in self.tables.values():
            changelog = Topic(
                self,
                table.changelog_topic,
                table.partitions,
                get_codec("raw"),
                get_codec("raw"),
                compacted=True,
                internal=True,
            )
            topics[changelog.name] = changelog.spec()
        spec = AppSpec(
            self.id,
            topics,
            agents,
            repartitions,
            [t.spec() for t in self.tables.values()],
            list(self.timers),
        )
        self._check_copartitioned(spec)
        return spec

    def _declare_dead_letter(self, agent: Agent) -> None:
        """Declare the agent's dead-letter topic (raw bytes: records go there unchanged),
        so that it is created with the app's topics and `t.read()` finds it."""
        settings = self.settings
        on_error = agent.on_error or settings.on_error
        if "dead_letter" not in (on_error, settings.on_decode_error):
            return
        name = agent.dead_letter or settings.dead_letter_topic
        if name not in self.topics:
            self.topic(name, partitions=agent.topic.partitions, key_type="raw", value_type="raw")

    def _check_copartitioned(self, spec: AppSpec) -> None:
        counts = {name: spec.topics[name].partitions for name in spec.source_topics()}
        counts.update({f"table {t.name}": t.partitions for t in spec.tables})
        if len(set(counts.values())) > 1:
            raise ConfigurationError(
                "the app's source topics and tables must have the same number of partitions "
                f"(co-partitioning), found {counts}"
            )

    async def _discover(self, agent: Agent) -> Stream:
        result = agent.fn(Stream(agent.topic, None))
        try:
            if inspect.isasyncgen(result):
                await result.__anext__()
                await result.aclose()
                raise ConfigurationError(
                    f"agent {agent.name!r} yielded before iterating its stream"
                )
            await result  # type: ignore[misc]
        except Discovered as found:
            if inspect.isasyncgen(result):
                await result.aclose()
            return found.stream
        except StopAsyncIteration:
            pass
        raise ConfigurationError(f"agent {agent.name!r} returned without iterating its stream")

    @staticmethod
    def _runner(agent: Agent, source: Topic) -> Callable[[Any], Any]:
        def run(inbox: Inbox) -> Any:
            return agent.fn(Stream(source, inbox))

        return run

    def _attach(self, worker: Worker | None, transport: Transport | None) -> None:
        self._worker = worker
        if transport is not None:
            self._transport = transport
        for table in self.tables.values():
            table._attach(None if worker is None else worker.tables[table.name])

    async def run(
        self,
        stop: asyncio.Event | None = None,
        *,
        slot: int | None = None,
        settings: Settings | None = None,
        fault: Callable[[str], None] | None = None,
    ) -> None:
        """Run one worker until `stop` is set (commit, leave the group, return). The worker
        claims a free slot of the state dir (`slot` first): its stable identity."""
        script.mark_started()
        settings = settings or self.settings
        stop = stop or asyncio.Event()
        spec = await self.build()
        transport = settings.connect()
        worker = Worker(spec, transport, settings, slot=slot, fault=fault)
        self._attach(worker, transport)
        try:
            await worker.start()  # all or nothing: a failed start leaves nothing to stop
            try:
                await worker.run(stop)
            except BaseException:
                await _quietly(worker.stop(clean=False))  # the run's error is the one to report
                raise
            await worker.stop(clean=True)
        except BaseException:
            self._attach(None, None)
            await _quietly(self.close())
            raise
        self._attach(None, None)
        await self.close()

    def testing(self, **overrides: Any) -> Any:
        """An in-process run for tests: `async with app.testing() as t: await t.send(...);
        await t.drain()`. Uses a private memory:// broker and an in-memory store unless
        `broker=` / `state_dir=` are given."""
        from streams.testing import TestRun

        return TestRun(self, **overrides)

    def main(self, argv: Sequence[str] | None = None) -> None:
        """`python app.py worker [--loglevel info] [--broker URL]`: run a worker until
        SIGTERM/SIGINT. Errors are one line and the worker exit codes (78: configuration).
        Under `streams worker module:app` (which imports the module) it returns at once."""
        if script.in_cli_import():
            log.debug("app.main() ignored: the streams command imports this module")
            return
        script.mark_started()
        parser = argparse.ArgumentParser(prog=f"{self.id}")
        parser.add_argument("command", choices=["worker"])
        parser.add_argument("--loglevel", default="info")
        parser.add_argument("--slot", type=int, default=None)
        parser.add_argument("--broker", help="broker URL (default: $STREAMS_BROKER, app's)")
        args = parser.parse_args(argv)
        logging.basicConfig(level=args.loglevel.upper(), format="%(asctime)s %(name)s %(message)s")

        async def serve() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            async with self.settings.connect() as broker:  # a bad URL or file: one line
                await broker.list_topics()
            log.info("app %s on broker %s", self.id, redacted(self.settings.broker))
            await self.run(stop, slot=args.slot)

        try:
            if args.broker:
                self.settings = self.settings.override(broker=args.broker)
            asyncio.run(serve())
        except StreamsError as exc:
            print(f"{script.program()}: error: {exc}", file=sys.stderr)
            sys.exit(exit_code(exc))


async def _quietly(step: Awaitable[None]) -> None:
    """Run a clean-up step after a failure: its own error is logged, never raised over the
    failure being reported."""
    try:
        await step
    except Exception as exc:
        log.warning("cleaning up after a failure: %r", exc)


__all__ = ["App", "importing_for_cli"]
