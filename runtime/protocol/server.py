"""The asyncio TCP server: frames in, broker calls on one thread, frames out.

A frame is a 4-byte big-endian length and that many bytes. A length below the smallest request
or above `max_frame_bytes` is never trusted: the connection is logged and closed, and nothing
else is touched. A request that does not parse closes its connection; an unknown API key or
version is answered (UNSUPPORTED_VERSION) and then closed, except ApiVersions, which is answered
in version 0 so that the client can retry with a version we list. Responses go out in request
order (Kafka's per-connection ordering); a Fetch long-polls without blocking other connections.

In process (tests, embedding):

    server = ProtocolServer.start_in_thread("sqlite:///app.db", port=0)   # any free port
    server.port, server.bootstrap      # 9093, "127.0.0.1:9093"
    server.stop()                      # closes connections, the broker and its thread

or inside a running event loop: `server = await ProtocolServer.open(url); await server.close()`.
From the shell: `streams broker serve sqlite:///app.db --port 9092`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from runtime.broker import READ_COMMITTED, READ_UNCOMMITTED, Broker
from runtime.errors import ConfigurationError, StreamsError
from runtime.protocol.errors import REBALANCE_IN_PROGRESS
from runtime.protocol.groups import join_error, sync_body
from runtime.protocol.handlers import Handlers, Node
from runtime.protocol.messages import (
    API_VERSIONS,
    UNSUPPORTED_VERSION,
    ProtocolError,
    RequestHeader,
    UnsupportedVersionError,
    encode_api_versions_error,
    encode_error_response,
    encode_response,
    millis,
    parse_request,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
DEFAULT_MAX_FRAME_BYTES = 100 * 1024 * 1024  # Kafka's socket.request.max.bytes
MIN_FRAME_BYTES = 10  # api key, version, correlation id, client id length
PRODUCE = 0
FETCH = 1
JOIN_GROUP = 11
SYNC_GROUP = 14
GROUP_POLL_S = 0.05
# requests that may change what a waiting Fetch, JoinGroup or SyncGroup looks for: they wake
# the waiters at once (others, and other processes' writes, are seen by polling)
WRITES = frozenset({0, 8, 12, 13, 19, 20, 21, 22, 24, 25, 26, 28, 42})
POLL_MIN_S = 0.002
POLL_MAX_S = 0.02
MAINTENANCE_INTERVAL_S = 1.0


def broker_path(url: str) -> str:
    """The SQLite path of a broker URL (`sqlite:///path.db` or `memory://`)."""
    if url.startswith("sqlite:///") and len(url.split("?", 1)[0]) > len("sqlite:///"):
        return url.split("?", 1)[0][len("sqlite:///") :]
    if url.startswith("memory://"):
        return ":memory:"
    raise ConfigurationError(
        f"cannot serve {url!r}: give the broker file as sqlite:///path.db (or memory://)"
    )


class ProtocolServer:
    """A Kafka-protocol server over one broker file."""

    def __init__(
        self,
        broker: Broker,
        executor: ThreadPoolExecutor,
        *,
        host: str,
        port: int,
        advertised_host: str | None,
        max_frame_bytes: int,
        auto_create_topics: bool,
    ) -> None:
        self.broker = broker
        self.host = host
        self.port = port
        self.advertised_host = advertised_host or host
        self.max_frame_bytes = max_frame_bytes
        self.auto_create_topics = auto_create_topics
        self.executor = executor  # the one thread that uses the broker's connection
        self.handlers = Handlers(broker, Node(0, self.advertised_host, port))
        self.handlers.auto_create_topics = auto_create_topics
        self.version = 0  # bumped by every request that may have written
        self.changed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._waiting: set[asyncio.Task[bytes]] = set()  # fetches and group joins in flight
        self._maintenance: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = threading.Event()

    # --- lifecycle ----------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        host: str = "127.0.0.1",
        port: int = 9092,
        advertised_host: str | None = None,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        auto_create_topics: bool = False,
    ) -> ProtocolServer:
        """Open the broker file and listen (port 0: any free port, see `.port`)."""
        path = broker_path(url)
        executor = ThreadPoolExecutor(1, thread_name_prefix="streams-protocol-broker")
        try:
            broker = await asyncio.get_running_loop().run_in_executor(executor, Broker, path)
        except BaseException:
            executor.shutdown()
            raise
        server = cls(
            broker,
            executor,
            host=host,
            port=port,
            advertised_host=advertised_host,
            max_frame_bytes=max_frame_bytes,
            auto_create_topics=auto_create_topics,
        )
        try:
            server._server = await asyncio.start_server(server._connection, host, port)
        except OSError:
            await server._close_broker()
            raise
        server.port = server._server.sockets[0].getsockname()[1]
        server.handlers.node = Node(0, server.advertised_host, server.port)
        server._maintenance = asyncio.create_task(server._maintain())
        log.info("serving %s on %s:%d", url, host, server.port)
        return server

    @property
    def bootstrap(self) -> str:
        return f"{self.advertised_host}:{self.port}"

    async def close(self) -> None:
        """Stop listening, close every connection, close the broker."""
        if self._server is not None:
            self._server.close()
        for waiting in list(self._waiting):
            waiting.cancel()
        if self._waiting:
            await asyncio.gather(*self._waiting, return_exceptions=True)
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        await self._close_broker()

    async def _close_broker(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.executor, self.broker.close)
        self.executor.shutdown(wait=True)

    async def serve_until(self, stop: asyncio.Event) -> None:
        await stop.wait()
        await self.close()

    @classmethod
    def start_in_thread(cls, url: str, **options: Any) -> ProtocolServer:
        """Run a server on an event loop of its own thread; returns once it listens."""
        started: list[ProtocolServer | BaseException] = []
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            try:
                server = loop.run_until_complete(cls.open(url, **options))
            except BaseException as exc:
                started.append(exc)
                ready.set()
                loop.close()
                return
            server._loop = loop
            started.append(server)
            ready.set()
            try:
                loop.run_forever()
                loop.run_until_complete(server.close())
            finally:
                loop.close()
                server._stopped.set()

        thread = threading.Thread(target=run, name="streams-protocol-server", daemon=True)
        thread.start()
        ready.wait()
        result = started[0]
        if isinstance(result, BaseException):
            raise result
        result._thread = thread
        return result

    def stop(self, timeout: float = 10.0) -> None:
        """Stop a server started with `start_in_thread` and wait for its thread."""
        if self._loop is None or self._thread is None:
            raise RuntimeError("stop() is for servers started with start_in_thread()")
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)

    # --- the broker thread --------------------------------------------------------------

    async def call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    def _wrote(self) -> None:
        self.version += 1
        self.changed.set()
        self.changed = asyncio.Event()

    async def _maintain(self) -> None:
        """Transaction timeouts (a client gone mid-transaction), retention, compaction."""
        next_full = time.monotonic() + 30.0
        while True:
            await asyncio.sleep(MAINTENANCE_INTERVAL_S)
            try:
                expired = await self.call(self.broker.expire_transactions)
                if time.monotonic() >= next_full:
                    next_full = time.monotonic() + 30.0
                    await self.call(self.broker.maintain)
                    expired = expired or [0]
                if expired:
                    self._wrote()
            except StreamsError as exc:
                log.warning("broker maintenance failed (will retry): %s", exc)

    # --- connections --------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        # responses must leave in request order: each request gets a future, sent in turn
        pending: asyncio.Queue[asyncio.Future[bytes | None]] = asyncio.Queue()
        sender = asyncio.create_task(self._send(writer, pending))
        in_flight: set[asyncio.Task[bytes]] = set()  # this connection's waiting requests
        try:
            while True:
                try:
                    head = await reader.readexactly(4)
                except asyncio.IncompleteReadError:
                    break
                (size,) = struct.unpack(">i", head)
                if not MIN_FRAME_BYTES <= size <= self.max_frame_bytes:
                    log.warning(
                        "closing %s: a frame length of %d bytes (allowed: %d..%d)",
                        peer,
                        size,
                        MIN_FRAME_BYTES,
                        self.max_frame_bytes,
                    )
                    break
                try:
                    frame = await reader.readexactly(size)
                except asyncio.IncompleteReadError:
                    log.info("closing %s: the connection ended inside a frame", peer)
                    break
                future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
                await pending.put(future)
                close = await self._request(frame, future, peer, in_flight)
                if close:
                    break
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass  # the peer went away, or the server is closing
        finally:
            for waiting in in_flight:  # nobody will read their answers: stop polling
                waiting.cancel()
            await pending.put(_closed())
            try:
                await asyncio.wait_for(sender, 5.0)
            except (TimeoutError, asyncio.CancelledError, ConnectionError, OSError):
                sender.cancel()
            writer.close()
            self._connections.discard(task)

    async def _send(
        self, writer: asyncio.StreamWriter, pending: asyncio.Queue[asyncio.Future[bytes | None]]
    ) -> None:
        while True:
            future = await pending.get()
            payload = await future
            if payload is None:
                return
            if not payload:  # a request that gets no response (Produce with acks=0)
                continue
            writer.write(struct.pack(">i", len(payload)) + payload)
            await writer.drain()

    async def _request(
        self,
        frame: bytes,
        future: asyncio.Future[bytes | None],
        peer: Any,
        in_flight: set[asyncio.Task[bytes]],
    ) -> bool:
        """Handle one frame; True when the connection must close after the answer."""
        try:
            header, request = parse_request(frame)
        except UnsupportedVersionError as exc:
            log.info("%s: %s", peer, exc)
            if exc.api_key == API_VERSIONS:
                future.set_result(encode_api_versions_error(exc.correlation_id))
                return False
            future.set_result(encode_error_response(exc.correlation_id, UNSUPPORTED_VERSION))
            return True
        except ProtocolError as exc:
            log.warning("closing %s: %s", peer, exc)
            future.set_result(None)
            return True
        waits = {FETCH: self._fetch, JOIN_GROUP: self._join_group, SYNC_GROUP: self._sync_group}
        if header.api_key in waits:
            task = asyncio.create_task(waits[header.api_key](header, request))
            self._waiting.add(task)
            task.add_done_callback(self._waiting.discard)
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            task.add_done_callback(functools.partial(_deliver, future))
            return False
        try:
            body = await self.call(functools.partial(self.handlers.handle, header, request))
            payload = encode_response(header, body)
        except Exception:  # a bug must not take the server down: this connection goes
            log.exception("closing %s: request %s failed", peer, header)
            future.set_result(None)
            return True
        finally:
            if header.api_key in WRITES:
                self._wrote()
        no_response = header.api_key == PRODUCE and request.acks == 0
        future.set_result(b"" if no_response else payload)
        return False

    async def _fetch(self, header: RequestHeader, request: Any) -> bytes:
        """Fetch with long polling: answer once min_bytes are there or max_wait passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0, millis(request.max_wait)) / 1000
        isolation = (
            READ_COMMITTED if getattr(request, "isolation_level", 0) == 1 else READ_UNCOMMITTED
        )
        max_bytes = getattr(request, "max_bytes", 0x7FFFFFFF)
        wanted = [
            (topic.topic, p.partition, p.fetch_offset, p.partition_max_bytes)
            for topic in request.topics
            for p in topic.partitions
        ]
        delay = POLL_MIN_S
        while True:
            since = self.version
            data_version, answers, total = await self.call(
                functools.partial(self._fetch_once, wanted, max_bytes, isolation)
            )
            errors = any(a["error_code"] for _, a in answers)
            remaining = deadline - loop.time()
            if total >= max(1, request.min_bytes) or errors or remaining <= 0:
                break
            changed = self.changed
            while self.version == since:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(changed.wait(), min(delay, remaining))
                    break
                except TimeoutError:
                    pass
                if await self.call(self.broker.data_version) != data_version:
                    break
                delay = min(delay * 2, POLL_MAX_S)
        topics: dict[str, list[dict[str, Any]]] = {}
        for topic, answer in answers:
            topics.setdefault(topic, []).append(answer)
        body = {
            "throttle_time": 0,
            "error_code": 0,
            "session_id": 0,
            "responses": [{"topic": t, "partitions": parts} for t, parts in topics.items()],
        }
        return encode_response(header, body)

    async def _poll_group(
        self, answer: Callable[[], dict[str, Any] | None], timeout_s: float
    ) -> dict[str, Any] | None:
        """Poll a group answer until it is there (other members join, the leader syncs)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            body = await self.call(answer)
            if body is not None or loop.time() >= deadline:
                return body
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), GROUP_POLL_S)

    async def _join_group(self, header: RequestHeader, request: Any) -> bytes:
        groups = self.handlers.groups
        member_id, code = await self.call(
            functools.partial(groups.join_start, request, header.client_id)
        )
        self._wrote()
        body = join_error(member_id, code)
        if code == 0:
            timeout = millis(getattr(request, "rebalance_timeout", request.session_timeout))
            answer = await self._poll_group(
                functools.partial(groups.join_answer, member_id, request), timeout / 1000 + 5
            )
            body = join_error(member_id, REBALANCE_IN_PROGRESS) if answer is None else answer
        self._wrote()
        return encode_response(header, body)

    async def _sync_group(self, header: RequestHeader, request: Any) -> bytes:
        groups = self.handlers.groups
        body = await self.call(functools.partial(groups.sync_start, request))
        self._wrote()
        if body is None:
            body = await self._poll_group(functools.partial(groups.sync_answer, request), 60.0)
            if body is None:
                body = sync_body(REBALANCE_IN_PROGRESS, request, b"")
        self._wrote()
        return encode_response(header, body)

    def _fetch_once(
        self, wanted: list[tuple[str, int, int, int]], max_bytes: int, isolation: str
    ) -> tuple[int, list[tuple[str, dict[str, Any]]], int]:
        data_version = self.broker.data_version()
        answers = []
        total = 0
        for topic, partition, offset, partition_max in wanted:
            budget = max(0, min(partition_max, max_bytes - total))
            answer, size = self.handlers.fetch_partition(
                topic, partition, offset, budget, isolation
            )
            total += size
            answers.append((topic, answer))
        return data_version, answers, total


def _closed() -> asyncio.Future[bytes | None]:
    future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


def _deliver(future: asyncio.Future[bytes | None], task: asyncio.Task[bytes]) -> None:
    if future.done():
        return
    if task.cancelled():
        future.set_result(None)
        return
    exc = task.exception()
    if exc is not None:
        log.error("a fetch failed: %s", exc, exc_info=exc)
        future.set_result(None)
        return
    future.set_result(task.result())
