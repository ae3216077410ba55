"""The embedded consumer: group membership through heartbeats, positions, long-poll fetches.

Group changes (revocations, new partitions) are applied inside `getmany`, where the
application's callbacks run: `on_revoke` before a partition is released to its next owner,
`on_assign` before the first record of a new partition is returned.

    consumer = transport.consumer("wordcount", isolation="read_committed")
    await consumer.subscribe(["words"], on_assign=restore, on_revoke=commit)
    batch = await consumer.getmany(timeout=0.5)
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from runtime.broker import EARLIEST, LATEST
from runtime.broker.groups import MemberState
from runtime.errors import (
    ConfigurationError,
    InvalidRequestError,
    OffsetOutOfRangeError,
    StreamsError,
    UnknownMemberIdError,
    UnstableOffsetCommitError,
)
from runtime.transport.base import READ_COMMITTED, READ_UNCOMMITTED, Consumer, RebalanceCallback
from runtime.types import GroupMetadata, Record, TopicPartition

if TYPE_CHECKING:
    from runtime.transport.embedded.transport import EmbeddedTransport

log = logging.getLogger(__name__)


async def _run_callback(
    callback: RebalanceCallback | None, partitions: set[TopicPartition]
) -> None:
    if callback is None or not partitions:
        return
    result = callback(set(partitions))
    if inspect.isawaitable(result):
        await result


class EmbeddedConsumer(Consumer):
    def __init__(
        self,
        transport: EmbeddedTransport,
        group_id: str | None,
        isolation: str,
        auto_offset_reset: str,
        client_id: str,
        session_timeout_ms: int,
        heartbeat_interval_ms: int,
        rebalance_timeout_ms: int,
        assignor: str = "sticky",
        instance_id: str | None = None,
        standby_replicas: int = 0,
    ) -> None:
        if isolation not in (READ_COMMITTED, READ_UNCOMMITTED):
            raise ConfigurationError(
                f"isolation must be read_committed or read_uncommitted, not {isolation!r}"
            )
        if auto_offset_reset not in ("earliest", "latest", "none"):
            raise ConfigurationError("auto_offset_reset must be earliest, latest or none")
        self.transport = transport
        self.group_id = group_id
        self.isolation = isolation
        self.auto_offset_reset = auto_offset_reset
        self.client_id = client_id
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_s = heartbeat_interval_ms / 1000
        self.rebalance_timeout_ms = rebalance_timeout_ms
        self.assignor = assignor
        self.instance_id = instance_id
        self.standby_replicas = standby_replicas
        self._positions: dict[TopicPartition, int] = {}
        self._topics: list[str] = []
        self._on_assign: RebalanceCallback | None = None
        self._on_revoke: RebalanceCallback | None = None
        self._member_id = ""
        self._generation = -1
        self._state: MemberState | None = None
        self._lost = False
        self._heartbeats: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self._rotation = 0
        self._closed = False

    # --- assignment ---------------------------------------------------------------------

    async def subscribe(
        self,
        topics: Iterable[str],
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
    ) -> None:
        if not self.group_id:
            raise ConfigurationError("subscribe() needs a consumer with a group_id")
        self._topics = list(topics)
        self._on_assign, self._on_revoke = on_assign, on_revoke
        await self._join()
        self._heartbeats = asyncio.ensure_future(self._heartbeat_loop())

    async def _join(self) -> None:
        assert self.group_id is not None
        broker = self.transport.broker
        self._member_id, self._generation = await self.transport._write(
            broker.join_group,
            self.group_id,
            self._topics,
            client_id=self.client_id,
            session_timeout_ms=self.session_timeout_ms,
            rebalance_timeout_ms=self.rebalance_timeout_ms,
            assignor=self.assignor,
            instance_id=self.instance_id,
            standby_replicas=self.standby_replicas,
        )
        self._state = await self.transport._write(broker.heartbeat, self.group_id, self._member_id)
        self._lost = False

    async def _heartbeat_loop(self) -> None:
        assert self.group_id is not None
        while not self._closed:
            pending = self._state is not None and (self._state.pending or self._state.revoking)
            await asyncio.sleep(0.05 if pending else self.heartbeat_interval_s)
            if self._lost:
                continue
            try:
                state = await self.transport._write(
                    self.transport.broker.heartbeat, self.group_id, self._member_id
                )
            except UnknownMemberIdError:
                log.warning(
                    "consumer %s left group %s (session expired); rejoining",
                    self._member_id,
                    self.group_id,
                )
                self._lost = True
                self._wakeup.set()
                continue
            except StreamsError as exc:
                log.warning("heartbeat failed: %s", exc)
                continue
            if state != self._state:
                self._state = state
                self._wakeup.set()

    async def _apply_group_changes(self) -> None:
        """Run revocations and assignments the group asked for (inside getmany)."""
        if self.group_id is None or not self._topics:
            return
        if self._lost:
            lost = set(self._positions)
            self._positions.clear()
            await _run_callback(self._on_revoke, lost)
            await self._join()
        state = self._state
        if state is None:
            return
        owned = set(self._positions)
        revoked = owned & state.revoking | (owned - state.assignment)
        # Release everything the group takes back, including partitions this consumer was
        # granted but never started (a restarted static member inherits them half-revoked):
        # only those it processed need on_revoke first.
        if revoked or state.revoking:
            await _run_callback(self._on_revoke, revoked)
            for tp in revoked:
                self._positions.pop(tp, None)
            state = self._state = await self.transport._write(
                self.transport.broker.heartbeat,
                self.group_id,
                self._member_id,
                revoked | state.revoking,
            )
        self._generation = state.generation
        added = set(state.assignment - state.revoking) - set(self._positions)
        if added:
            start = await self._starting_offsets(added)
            self._positions.update(start)
            await _run_callback(self._on_assign, added)

    async def _starting_offsets(self, tps: set[TopicPartition]) -> dict[TopicPartition, int]:
        committed = await self.committed(tps) if self.group_id else {}
        for tp in tps - set(committed):
            committed[tp] = await self._reset_offset(tp)
        return committed

    async def _reset_offset(self, tp: TopicPartition) -> int:
        if self.auto_offset_reset == "none":
            raise OffsetOutOfRangeError(
                f"no committed offset for {tp.topic}[{tp.partition}] and auto_offset_reset='none'"
            )
        spec = EARLIEST if self.auto_offset_reset == "earliest" else LATEST
        return await self.transport._call(
            self.transport.broker.list_offset, tp, spec, self.isolation
        )

    async def assign(self, partitions: Iterable[TopicPartition]) -> None:
        tps = {TopicPartition(*tp) for tp in partitions}
        self._positions = {tp: pos for tp, pos in self._positions.items() if tp in tps}
        self._positions.update(await self._starting_offsets(tps - set(self._positions)))

    def assignment(self) -> set[TopicPartition]:
        return set(self._positions)

    def position(self, tp: TopicPartition) -> int:
        return self._positions[tp]

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if tp not in self._positions:
            raise InvalidRequestError(f"{tp} is not assigned to this consumer")
        self._positions[tp] = offset

    async def seek_to_committed(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        tps = set(self._positions if partitions is None else partitions) & set(self._positions)
        self._positions.update(await self._starting_offsets(tps))

    def standby(self) -> set[TopicPartition]:
        state = self._state
        return set() if state is None else set(state.standby) - set(self._positions)

    def group_metadata(self) -> GroupMetadata:
        return GroupMetadata(self.group_id or "", self._generation, self._member_id)

    # --- reading ------------------------------------------------------------------------

    async def getmany(
        self, timeout: float = 0.5, max_records: int = 1000
    ) -> dict[TopicPartition, list[Record]]:
        if self._closed:
            raise StreamsError("consumer is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        core = self.transport._core
        while True:
            await self._apply_group_changes()
            since = core.version
            data_version = 0
            out: dict[TopicPartition, list[Record]] = {}
            if self._positions:
                requests = list(self._positions.items())
                self._rotation = (self._rotation + 1) % len(requests)
                requests = requests[self._rotation :] + requests[: self._rotation]
                try:
                    results, data_version = await self.transport._call(
                        core.fetch_with_version,
                        requests,
                        max_records=max_records,
                        isolation=self.isolation,
                    )
                except OffsetOutOfRangeError as exc:
                    tp = exc.args[-1]
                    log.warning("%s; resetting to %s", exc.args[0], self.auto_offset_reset)
                    if tp in self._positions:
                        self._positions[tp] = await self._reset_offset(tp)
                    continue
                moved = False
                asked = dict(requests)
                for tp, result in results.items():
                    if self._positions.get(tp) != asked[tp]:
                        continue  # seeked or revoked meanwhile
                    moved |= result.next_offset != asked[tp]
                    self._positions[tp] = result.next_offset
                    if result.records:
                        out[tp] = result.records
                if out or moved:
                    return out  # also when only control markers moved a position
            remaining = deadline - loop.time()
            if remaining <= 0:
                return out
            await core.wait(remaining, since, data_version, self._wakeup)

    async def committed(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        if not self.group_id:
            return {}
        tps = list(partitions)
        delay = 0.01
        while True:
            try:
                return await self.transport._call(
                    self.transport.broker.committed_offsets, self.group_id, tps
                )
            except UnstableOffsetCommitError:
                await asyncio.sleep(delay)  # a transaction holds offsets: wait for its end
                delay = min(delay * 2, 0.25)

    async def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        if not self.group_id:
            raise ConfigurationError("commit() needs a consumer with a group_id")
        await self.transport._write(
            self.transport.broker.commit_offsets,
            self.group_metadata(),
            dict(self._positions if offsets is None else offsets),
        )

    async def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {
            tp: await self.transport._call(
                self.transport.broker.list_offset, tp, LATEST, self.isolation
            )
            for tp in partitions
        }

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._heartbeats is not None:
            self._heartbeats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeats
        if self.group_id and self._member_id and not self._lost:
            await _run_callback(self._on_revoke, set(self._positions))
            try:
                await self.transport._write(
                    self.transport.broker.leave_group, self.group_id, self._member_id
                )
            except StreamsError as exc:
                log.warning("leaving group %s failed: %s", self.group_id, exc)
        self._positions.clear()
