"""Group requests: the classic protocol's JoinGroup, SyncGroup, Heartbeat and LeaveGroup over
`runtime.broker.classic`, and offsets, ListGroups and DescribeGroups over the broker's groups.

JoinGroup and SyncGroup may have to wait (for the other members, for the leader): the server
polls `join_answer` / `sync_answer` until they return a body.

    member_id = groups.join_start(request)
    body = groups.join_answer(request, member_id)     # None: not yet
"""

from __future__ import annotations

import struct
from typing import Any

from runtime.broker import Broker
from runtime.broker.classic import InconsistentGroupProtocolError
from runtime.errors import StreamsError
from runtime.protocol import errors as codes
from runtime.protocol.errors import error_code, same_code_for_all
from runtime.protocol.messages import millis
from runtime.types import GroupMetadata, TopicPartition


def _code(exc: StreamsError) -> int:
    if isinstance(exc, InconsistentGroupProtocolError):
        return codes.INCONSISTENT_GROUP_PROTOCOL
    return error_code(exc)


def assigned_partitions(assignment: bytes) -> list[TopicPartition]:
    """The partitions named by a ConsumerProtocolAssignment (any version: they all start with
    version i16, then [topic string, [partition i32]]); [] for what does not parse."""
    try:
        pos = 2
        (topics,) = struct.unpack_from(">i", assignment, pos)
        pos += 4
        out = []
        for _ in range(max(topics, 0)):
            (size,) = struct.unpack_from(">h", assignment, pos)
            pos += 2
            topic = assignment[pos : pos + size].decode()
            pos += size
            (count,) = struct.unpack_from(">i", assignment, pos)
            pos += 4
            partitions = struct.unpack_from(f">{max(count, 0)}i", assignment, pos)
            pos += 4 * max(count, 0)
            out += [TopicPartition(topic, p) for p in partitions]
        return out
    except (struct.error, UnicodeDecodeError):
        return []


class GroupHandlers:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    # --- join and sync (polled) -----------------------------------------------------------

    def join_start(self, request: Any, client_id: str | None) -> tuple[str, int]:
        """(member id, error code) of a JoinGroup."""
        try:
            member_id = self.broker.classic_join(
                request.group_id,
                request.member_id,
                getattr(request, "group_instance_id", None),
                client_id or "client",
                millis(request.session_timeout),
                millis(getattr(request, "rebalance_timeout", request.session_timeout)),
                request.protocol_type,
                [(p.name, bytes(p.metadata)) for p in request.protocols],
            )
        except StreamsError as exc:
            return request.member_id, _code(exc)
        return member_id, codes.NONE

    def join_answer(self, member_id: str, request: Any) -> dict[str, Any] | None:
        try:
            result = self.broker.classic_join_result(request.group_id, member_id)
        except StreamsError as exc:
            return join_error(member_id, _code(exc))
        if result is None:
            return None
        return {
            "throttle_time": 0,
            "error_code": codes.NONE,
            "generation_id": result.generation,
            "protocol_type": result.protocol_type,
            "protocol_name": result.protocol,
            "leader": result.leader,
            "member_id": member_id,
            "members": [
                {"member_id": m, "group_instance_id": i, "metadata": meta}
                for m, i, meta in result.members
            ],
        }

    def sync_start(self, request: Any) -> dict[str, Any] | None:
        """Store the leader's assignment; an error body, or None to poll `sync_answer`."""
        assignments = {a.member_id: bytes(a.assignment) for a in request.assignments}
        try:
            self.broker.classic_sync(
                request.group_id,
                request.member_id,
                request.generation_id,
                assignments,
                {m: assigned_partitions(a) for m, a in assignments.items()},
            )
        except StreamsError as exc:
            return sync_body(_code(exc), request, b"")
        return None

    def sync_answer(self, request: Any) -> dict[str, Any] | None:
        try:
            assignment = self.broker.classic_sync_result(
                request.group_id, request.member_id, request.generation_id
            )
        except StreamsError as exc:
            return sync_body(_code(exc), request, b"")
        if assignment is None:
            return None
        return sync_body(codes.NONE, request, assignment)

    # --- the others ---------------------------------------------------------------------

    def heartbeat(self, request: Any) -> dict[str, Any]:
        try:
            self.broker.classic_heartbeat(
                request.group_id, request.member_id, request.generation_id
            )
        except StreamsError as exc:
            return {"throttle_time": 0, "error_code": _code(exc)}
        return {"throttle_time": 0, "error_code": codes.NONE}

    def leave(self, request: Any) -> dict[str, Any]:
        members = (
            [(m.member_id, m.group_instance_id) for m in request.members]
            if hasattr(request, "members")
            else [(request.member_id, None)]
        )
        answers = []
        top = codes.NONE
        for member_id, instance_id in members:
            try:
                self.broker.classic_leave(request.group_id, [(member_id, instance_id)])
                code = codes.NONE
            except StreamsError as exc:
                code = _code(exc)
                top = top or code
            answers.append(
                {"member_id": member_id, "group_instance_id": instance_id, "error_code": code}
            )
        return {"throttle_time": 0, "error_code": top, "members": answers}

    def offset_commit(self, request: Any) -> dict[str, Any]:
        generation = getattr(
            request, "generation_id_or_member_epoch", getattr(request, "generation_id", -1)
        )
        group = GroupMetadata(request.group_id, generation, getattr(request, "member_id", ""))
        offsets = {
            TopicPartition(t.name, p.partition_index): p.committed_offset
            for t in request.topics
            for p in t.partitions
        }
        code = codes.NONE
        try:
            self.broker.commit_offsets(group, offsets)
        except StreamsError as exc:
            code = _code(exc)
        return same_code_for_all(request.topics, code)

    def offset_fetch(self, request: Any) -> dict[str, Any]:
        require_stable = bool(getattr(request, "require_stable", False))
        if request.topics is None:
            try:
                known = self.broker.describe_group(request.group_id).offsets
            except StreamsError as exc:
                return {"throttle_time": 0, "topics": [], "error_code": _code(exc)}
            wanted: dict[str, list[int]] = {}
            for tp in known:
                wanted.setdefault(tp.topic, []).append(tp.partition)
        else:
            wanted = {t.name: list(t.partition_indexes) for t in request.topics}
        topics = []
        for topic, partitions in wanted.items():
            answers = []
            for partition in partitions:
                tp = TopicPartition(topic, partition)
                answer: dict[str, Any] = {
                    "partition_index": partition,
                    "committed_offset": -1,
                    "committed_leader_epoch": -1,
                    "metadata": "",
                    "error_code": codes.NONE,
                }
                try:
                    found = self.broker.committed_offsets(
                        request.group_id, [tp], require_stable=require_stable
                    )
                    answer["committed_offset"] = found.get(tp, -1)
                except StreamsError as exc:
                    answer["error_code"] = _code(exc)
                answers.append(answer)
            topics.append({"name": topic, "partitions": answers})
        return {"throttle_time": 0, "topics": topics, "error_code": codes.NONE}

    def list_groups(self, request: Any) -> dict[str, Any]:
        classic = {g: (state, kind) for g, state, kind in self.broker.classic_list()}
        groups = []
        for group_id in sorted(set(self.broker.list_groups()) | set(classic)):
            state, kind = classic.get(group_id, ("Stable", "consumer"))
            groups.append(
                {"group_id": group_id, "protocol_type": kind or "consumer", "group_state": state}
            )
        wanted = getattr(request, "states_filter", ())
        if wanted:
            groups = [g for g in groups if g["group_state"] in wanted]
        return {"throttle_time": 0, "error_code": codes.NONE, "groups": groups}

    def describe_groups(self, request: Any) -> dict[str, Any]:
        described = []
        for group_id in request.groups:
            entry: dict[str, Any] = {
                "error_code": codes.NONE,
                "group_id": group_id,
                "group_state": "Dead",
                "protocol_type": "",
                "protocol_data": "",
                "members": [],
                "authorized_operations": -2147483648,
            }
            try:
                group = self.broker.classic_describe(group_id)
                if group is not None:
                    entry.update(
                        group_state=group.state,
                        protocol_type=group.protocol_type or "",
                        protocol_data=group.protocol or "",
                        members=[
                            {
                                "member_id": m.member_id,
                                "group_instance_id": m.instance_id,
                                "client_id": m.client_id,
                                "client_host": "",
                                "member_metadata": m.metadata,
                                "member_assignment": m.assignment,
                            }
                            for m in group.members
                        ],
                    )
                elif group_id in self.broker.list_groups():
                    embedded = self.broker.describe_group(group_id)
                    entry.update(
                        group_state="Stable" if embedded.members else "Empty",
                        protocol_type="consumer",
                        members=[
                            {"member_id": m.member_id, "client_id": m.client_id}
                            for m in embedded.members
                        ],
                    )
            except StreamsError as exc:
                entry["error_code"] = _code(exc)
            described.append(entry)
        return {"throttle_time": 0, "groups": described}

    def delete_groups(self, request: Any) -> dict[str, Any]:
        results = []
        for group_id in request.groups_names:
            code = codes.NONE
            try:
                self.broker.delete_group(group_id)
            except StreamsError as exc:
                code = _code(exc)
            results.append({"group_id": group_id, "error_code": code})
        return {"throttle_time": 0, "results": results}

    def txn_group(self, request: Any) -> GroupMetadata:
        return GroupMetadata(
            request.group_id,
            getattr(request, "generation_id", -1),
            getattr(request, "member_id", ""),
        )


def join_error(member_id: str, code: int) -> dict[str, Any]:
    return {
        "throttle_time": 0,
        "error_code": code,
        "generation_id": -1,
        "protocol_name": "",
        "leader": "",
        "member_id": member_id,
        "members": [],
    }


def sync_body(code: int, request: Any, assignment: bytes) -> dict[str, Any]:
    return {
        "throttle_time": 0,
        "error_code": code,
        "protocol_type": getattr(request, "protocol_type", None),
        "protocol_name": getattr(request, "protocol_name", None),
        "assignment": assignment,
    }
