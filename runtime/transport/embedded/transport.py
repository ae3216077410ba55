"""The embedded back end: the transport interface over `runtime.broker.Broker`.

One `Broker` (one SQLite connection) runs on one thread of its own; each broker operation is
one hop to that thread, so the event loop never blocks on SQLite and an operation's statements
are never interleaved with another's. Consumers long-poll: a write through the same connection
wakes them at once, a commit by another connection or process is seen through
`PRAGMA data_version`, polled with backoff (2 ms doubling to 10 ms) only while a consumer waits.

    transport = EmbeddedTransport.open("sqlite:///app.db")
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from runtime.broker import Broker, FetchResult, GroupDescription
from runtime.broker.integrity import BackupReport
from runtime.errors import ConfigurationError, DatabaseLockedError, StreamsError
from runtime.transport.base import READ_UNCOMMITTED, Transport
from runtime.transport.embedded.consumer import EmbeddedConsumer
from runtime.transport.embedded.producer import EmbeddedProducer
from runtime.types import PartitionInfo, TopicDescription, TopicPartition

log = logging.getLogger(__name__)
T = TypeVar("T")
POLL_MIN_S = 0.002  # long-poll backoff for commits by other connections
POLL_MAX_S = 0.01
LOCKED_RETRIES = 5
DEFAULT_MAINTENANCE_INTERVAL_S = 30.0


class _Core:
    """One broker connection, the thread that owns it, and the consumers waiting on it."""

    def __init__(self, broker: Broker, shared_file: bool, maintenance_interval_s: float) -> None:
        self.broker = broker
        self.shared_file = shared_file  # other connections may write: poll data_version
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="streams-broker")
        self.version = 0  # bumped by every write through this core
        self.waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self.users = 0
        self.maintenance_interval_s = maintenance_interval_s
        self.next_maintenance = time.monotonic() + maintenance_interval_s
        self.maintenance: asyncio.Future[Any] | None = None

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))

    async def write(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A call that changes the database: wakes every consumer waiting on this core."""
        try:
            return await self.call(fn, *args, **kwargs)
        finally:
            self.version += 1
            for loop, event in list(self.waiters):
                loop.call_soon_threadsafe(event.set)
            if time.monotonic() >= self.next_maintenance:
                self._maintain_soon()

    def _maintain_soon(self) -> None:
        """Retention, compaction and transaction timeouts, on the broker thread after the
        current call; at most once per maintenance interval."""
        self.next_maintenance = time.monotonic() + self.maintenance_interval_s
        if self.maintenance is None or self.maintenance.done():
            loop = asyncio.get_running_loop()
            self.maintenance = loop.run_in_executor(self.executor, self._maintain)

    def _maintain(self) -> None:
        try:
            self.broker.maintain()
        except StreamsError as exc:
            log.warning("broker maintenance failed (will retry): %s", exc)

    def fetch_with_version(
        self, *args: Any, **kwargs: Any
    ) -> tuple[dict[TopicPartition, FetchResult], int]:
        version = self.broker.data_version()  # read first: a commit after it changes it
        return self.broker.fetch(*args, **kwargs), version

    async def wait(
        self, timeout: float, since: int, data_version: int, wakeup: asyncio.Event
    ) -> None:
        """Wait up to `timeout` s for a write after the fetch that saw `since` and
        `data_version`, or for `wakeup`."""
        if self.version != since or timeout <= 0:
            return
        loop = asyncio.get_running_loop()
        key = (loop, wakeup)
        self.waiters.add(key)
        try:
            deadline = loop.time() + timeout
            delay = POLL_MIN_S if self.shared_file else timeout
            while self.version == since:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return
                try:
                    await asyncio.wait_for(wakeup.wait(), min(delay, remaining))
                    return
                except TimeoutError:
                    pass
                if self.shared_file and await self.call(self.broker.data_version) != data_version:
                    return
                delay = min(delay * 2, POLL_MAX_S)
        finally:
            self.waiters.discard(key)
            wakeup.clear()

    def close(self) -> None:
        self.executor.submit(self.broker.close).result()
        self.executor.shutdown(wait=True)


_memory_cores: dict[str, _Core] = {}
_memory_lock = threading.Lock()


def _open_core(url: str) -> tuple[_Core, str | None]:
    """The core for a URL; for named in-memory brokers, the name to release it by."""
    parts = urlsplit(url)
    options = dict(parse_qsl(parts.query))
    kwargs: dict[str, Any] = {}
    if "synchronous" in options:
        kwargs["synchronous"] = options.pop("synchronous")
    if "busy_timeout_ms" in options:
        kwargs["busy_timeout_ms"] = int(options.pop("busy_timeout_ms"))
    interval = float(options.pop("maintenance_interval_s", DEFAULT_MAINTENANCE_INTERVAL_S))
    if options:
        raise ConfigurationError(f"unknown broker URL options {sorted(options)} in {url!r}")
    if parts.scheme == "memory":
        name = (parts.netloc + parts.path).strip("/")
        if not name:
            return _Core(Broker(":memory:", **kwargs), False, interval), None
        with _memory_lock:
            core = _memory_cores.get(name)
            if core is None:
                core = _memory_cores[name] = _Core(Broker(":memory:", **kwargs), False, interval)
            core.users += 1
        return core, name
    path = sqlite_path(url)
    if path is not None:
        return _Core(Broker(path, **kwargs), True, interval), None
    raise ConfigurationError(f"the embedded broker does not serve {url!r}")


def sqlite_path(url: str) -> str | None:
    """The file path of a `sqlite:///path` URL (None for other schemes)."""
    if urlsplit(url).scheme != "sqlite":
        return None
    path = url.split("://", 1)[1].split("?", 1)[0]
    if not path.startswith("/") or path == "/":
        raise ConfigurationError(
            f"bad sqlite URL {url!r}: use sqlite:///relative/path.db or sqlite:////abs/path.db"
        )
    return path[1:]


class EmbeddedTransport(Transport):
    """Transport for `sqlite:///path` (a file, shared by processes) and `memory://[name]`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._core, self._memory_name = _open_core(url)
        self._partitions: dict[str, int] = {}
        self._closed = False

    @property
    def broker(self) -> Broker:
        """The synchronous broker (for tools and tests; not for use on the event loop)."""
        return self._core.broker

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._closed:
            raise StreamsError(f"transport {self.url!r} is closed")
        return await self._core.call(fn, *args, **kwargs)

    async def _write(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._closed:
            raise StreamsError(f"transport {self.url!r} is closed")
        for attempt in range(LOCKED_RETRIES):
            try:
                return await self._core.write(fn, *args, **kwargs)
            except DatabaseLockedError:
                if attempt == LOCKED_RETRIES - 1:
                    raise
                log.warning("broker database busy; retrying")
                await asyncio.sleep(0.1 * (attempt + 1))
        raise AssertionError("unreachable")

    async def partitions_of(self, topic: str) -> int:
        count = self._partitions.get(topic)
        if count is None:
            count = self._partitions[topic] = (await self.describe_topic(topic)).partitions
        return count

    # --- admin --------------------------------------------------------------------------

    async def create_topic(
        self,
        name: str,
        partitions: int = 1,
        *,
        compacted: bool = False,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
    ) -> TopicDescription:
        return await self._write(
            self.broker.create_topic,
            name,
            partitions,
            compacted=compacted,
            retention_ms=retention_ms,
            retention_bytes=retention_bytes,
        )

    async def delete_topic(self, name: str) -> None:
        self._partitions.pop(name, None)
        await self._write(self.broker.delete_topic, name)

    async def list_topics(self) -> list[TopicDescription]:
        return await self._call(self.broker.list_topics)

    async def describe_topic(self, name: str) -> TopicDescription:
        return await self._call(self.broker.describe_topic, name)

    async def partition_info(self, topic: str, partition: int) -> PartitionInfo:
        return await self._call(self.broker.partition_info, topic, partition)

    async def list_groups(self) -> list[str]:
        return await self._call(self.broker.list_groups)

    async def describe_group(self, group_id: str) -> GroupDescription:
        return await self._write(self.broker.describe_group, group_id)

    async def offsets_for_time(
        self, tps: Iterable[TopicPartition], timestamp_ms: int
    ) -> dict[TopicPartition, int]:
        return {tp: await self._call(self.broker.list_offset, tp, timestamp_ms) for tp in set(tps)}

    async def alter_group_offsets(
        self, group_id: str, offsets: Mapping[TopicPartition, int]
    ) -> None:
        await self._write(self.broker.alter_group_offsets, group_id, dict(offsets))

    async def delete_group(self, group_id: str) -> None:
        await self._write(self.broker.delete_group, group_id)

    async def backup(self, dest: str) -> BackupReport:
        """Copy the broker file, as of now, to the new file `dest` (others go on writing),
        and check the copy; see `Broker.backup`."""
        return await self._call(self.broker.backup, dest)

    async def maintain(self, force_compaction: bool = False) -> dict[str, int]:
        """Retention, compaction and transaction timeouts, now."""
        return await self._write(self.broker.maintain, force_compaction=force_compaction)

    # --- clients ------------------------------------------------------------------------

    def producer(
        self,
        transactional_id: str | None = None,
        *,
        transaction_timeout_ms: int = 60_000,
        linger_ms: float = 5.0,
        batch_size: int = 10_000,
    ) -> EmbeddedProducer:
        return EmbeddedProducer(
            self, transactional_id, transaction_timeout_ms, linger_ms, batch_size
        )

    def consumer(
        self,
        group_id: str | None = None,
        *,
        isolation: str = READ_UNCOMMITTED,
        auto_offset_reset: str = "earliest",
        client_id: str = "streams",
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 1_000,
        rebalance_timeout_ms: int = 60_000,
        assignor: str = "sticky",
        instance_id: str | None = None,
        standby_replicas: int = 0,
    ) -> EmbeddedConsumer:
        return EmbeddedConsumer(
            self,
            group_id,
            isolation,
            auto_offset_reset,
            client_id,
            session_timeout_ms,
            heartbeat_interval_ms,
            rebalance_timeout_ms,
            assignor,
            instance_id,
            standby_replicas,
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._memory_name is not None:
            with _memory_lock:
                self._core.users -= 1
                if self._core.users > 0:
                    return
                _memory_cores.pop(self._memory_name, None)
        await asyncio.get_running_loop().run_in_executor(None, self._core.close)
