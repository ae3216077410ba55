"""The `streams` command line.

    streams topics create words --partitions 4
    streams send words hello --key greeting
    streams tail words --from-beginning --isolation read_committed
    streams groups describe wordcount

Every command takes `--broker URL` (default: $STREAMS_BROKER or sqlite:///streams.db). Errors
are one line on stderr and a non-zero exit code; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import Any

from runtime.errors import StreamsError
from runtime.transport import READ_COMMITTED, READ_UNCOMMITTED, Transport, connect
from runtime.types import TopicPartition

DEFAULT_BROKER = "sqlite:///streams.db"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streams", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--broker",
        default=os.environ.get("STREAMS_BROKER", DEFAULT_BROKER),
        help="broker URL (default: $STREAMS_BROKER or %(default)s)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    topics = commands.add_parser("topics", help="list, create, describe or delete topics")
    topic_commands = topics.add_subparsers(dest="action", required=True)
    topic_commands.add_parser("list")
    create = topic_commands.add_parser("create")
    create.add_argument("name")
    create.add_argument("--partitions", type=int, default=1)
    create.add_argument("--compacted", action="store_true")
    create.add_argument("--retention-ms", type=int)
    create.add_argument("--retention-bytes", type=int)
    for action in ("describe", "delete"):
        topic_commands.add_parser(action).add_argument("name")

    send = commands.add_parser("send", help="send one record, or one per line of a file")
    send.add_argument("topic")
    send.add_argument("value", nargs="?")
    send.add_argument("--key")
    send.add_argument("--file", help="send each line of this file ('-' for stdin)")

    tail = commands.add_parser("tail", help="print records of a topic as they arrive")
    tail.add_argument("topic")
    tail.add_argument("--from-beginning", action="store_true")
    tail.add_argument(
        "--isolation", choices=[READ_COMMITTED, READ_UNCOMMITTED], default=READ_COMMITTED
    )
    tail.add_argument("--max", type=int, help="stop after this many records")
    tail.add_argument("--idle", type=float, help="stop after this many seconds with no record")

    groups = commands.add_parser("groups", help="list groups, or describe one")
    group_commands = groups.add_subparsers(dest="action", required=True)
    group_commands.add_parser("list")
    group_commands.add_parser("describe").add_argument("group")
    return parser


async def _topics(broker: Transport, args: argparse.Namespace) -> None:
    if args.action == "list":
        for topic in await broker.list_topics():
            print(
                f"{topic.name}\t{topic.partitions} partitions"
                + ("\tcompacted" if topic.compacted else "")
            )
    elif args.action == "create":
        topic = await broker.create_topic(
            args.name,
            args.partitions,
            compacted=args.compacted,
            retention_ms=args.retention_ms,
            retention_bytes=args.retention_bytes,
        )
        print(f"created {topic.name} ({topic.partitions} partitions)")
    elif args.action == "delete":
        await broker.delete_topic(args.name)
        print(f"deleted {args.name}")
    else:
        topic = await broker.describe_topic(args.name)
        print(
            f"topic {topic.name}: {topic.partitions} partitions, compacted={topic.compacted},"
            f" retention_ms={topic.retention_ms}, retention_bytes={topic.retention_bytes}"
        )
        print("partition\tlog_start\thigh_watermark\tlast_stable\tbytes")
        for p in range(topic.partitions):
            info = await broker.partition_info(topic.name, p)
            print(f"{p}\t{info.log_start}\t{info.high_watermark}\t{info.last_stable}\t{info.bytes}")


async def _send(broker: Transport, args: argparse.Namespace) -> None:
    if (args.value is None) == (args.file is None):
        raise StreamsError("give either a VALUE or --file")
    key = None if args.key is None else args.key.encode()
    producer = broker.producer()
    if args.file is None:
        meta = await producer.send(args.topic, args.value.encode(), key=key)
        print(f"sent to {meta.topic}[{meta.partition}] at offset {meta.offset}")
    else:
        handle = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
        count = 0
        with handle:
            for line in handle:
                producer.produce(args.topic, line.rstrip("\n").encode(), key=key)
                count += 1
        await producer.flush()
        print(f"sent {count} records to {args.topic}")
    await producer.close()


async def _tail(broker: Transport, args: argparse.Namespace) -> None:
    topic = await broker.describe_topic(args.topic)
    consumer = broker.consumer(
        isolation=args.isolation,
        auto_offset_reset="earliest" if args.from_beginning else "latest",
    )
    await consumer.assign([TopicPartition(args.topic, p) for p in range(topic.partitions)])
    seen = 0
    loop = asyncio.get_running_loop()
    last = loop.time()
    try:
        while args.max is None or seen < args.max:
            batch = await consumer.getmany(timeout=0.5)
            if not batch:
                if args.idle is not None and loop.time() - last >= args.idle:
                    break
                continue
            last = loop.time()
            for records in batch.values():
                for record in records:
                    key = "" if record.key is None else record.key.decode(errors="replace")
                    value = "" if record.value is None else record.value.decode(errors="replace")
                    print(f"{record.partition}:{record.offset}\t{key}\t{value}", flush=True)
                    seen += 1
    finally:
        await consumer.close()


async def _groups(broker: Transport, args: argparse.Namespace) -> None:
    if args.action == "list":
        for group in await broker.list_groups():
            print(group)
        return
    group = await broker.describe_group(args.group)
    print(f"group {group.group_id}: generation {group.generation}, {len(group.members)} members")
    owners = {}
    for member in group.members:
        tps = ", ".join(f"{t}[{p}]" for t, p in sorted(member.assignment)) or "-"
        print(f"member {member.member_id} ({member.client_id}): {tps}")
        owners.update({tp: member.member_id for tp in member.assignment})
    print("topic\tpartition\tcommitted\tend\tlag\towner")
    for tp, committed in sorted(group.offsets.items()):
        end = (await broker.partition_info(tp.topic, tp.partition)).last_stable
        print(
            f"{tp.topic}\t{tp.partition}\t{committed}\t{end}\t{max(0, end - committed)}\t"
            f"{owners.get(tp, '-')}"
        )


async def _run(args: argparse.Namespace) -> None:
    handlers: dict[str, Any] = {
        "topics": _topics,
        "send": _send,
        "tail": _tail,
        "groups": _groups,
    }
    async with connect(args.broker) as broker:
        await handlers[args.command](broker, args)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 130
    except (StreamsError, OSError) as exc:
        if args.debug:
            raise
        print(f"streams: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
