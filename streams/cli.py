"""The `streams` command line.

    streams topics create words --partitions 4
    streams send words hello --key greeting
    streams tail words --from-beginning --isolation read_committed
    streams groups describe wordcount
    streams worker examples.wordcount:app --workers 3
    streams table examples.wordcount:app counts

Every command takes `--broker URL` (default: $STREAMS_BROKER or sqlite:///streams.db). Errors
are one line on stderr and a non-zero exit code; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from runtime.broker.integrity import check_file
from runtime.errors import (
    ConfigurationError,
    DatabaseError,
    InvalidRequestError,
    StreamsError,
    exit_code,
)
from runtime.transport import READ_COMMITTED, READ_UNCOMMITTED, Transport, connect
from runtime.transport.embedded.transport import EmbeddedTransport, sqlite_path
from runtime.types import TopicPartition
from runtime.worker.supervisor import Supervisor
from runtime.worker.tables import TableState
from runtime.worker.windows import WindowedState
from streams.app import App

DEFAULT_BROKER = "sqlite:///streams.db"
EXIT_CONFIG = 78  # EX_CONFIG: the supervisor does not restart a worker that exits with it


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
    topic_commands.add_parser("describe").add_argument("name")
    delete = topic_commands.add_parser("delete")
    delete.add_argument("name")
    delete.add_argument(
        "--force",
        action="store_true",
        help="delete a table's changelog, or a topic a live group consumes (loses state)",
    )

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

    worker = commands.add_parser("worker", help="run worker processes of an app")
    worker.add_argument(
        "app", help="MODULE:ATTRIBUTE of a streams.App, e.g. examples.wordcount:app"
    )
    worker.add_argument("--workers", type=int, default=1)
    worker.add_argument("--loglevel", default="info")
    worker.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)

    table = commands.add_parser("table", help="print a table's rows, read from its changelog")
    table.add_argument("app", help="MODULE:ATTRIBUTE of a streams.App")
    table.add_argument("table")

    groups = commands.add_parser("groups", help="list groups, or describe one")
    group_commands = groups.add_subparsers(dest="action", required=True)
    group_commands.add_parser("list")
    group_commands.add_parser("describe").add_argument("group")

    broker = commands.add_parser("broker", help="back up or check the embedded broker's file")
    broker_commands = broker.add_subparsers(dest="action", required=True)
    broker_commands.add_parser(
        "backup", help="copy the live broker file, consistently, to a new file, and check it"
    ).add_argument("dest", help="path of the copy (must not exist)")
    broker_commands.add_parser("check", help="check the broker file's integrity (read-only)")
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
        await _delete_topic(broker, args.name, force=args.force)
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


async def _delete_topic(broker: Transport, name: str, *, force: bool) -> None:
    """Delete a topic; a table's changelog (the table's state) or a topic that a live group
    consumes only with `force`. Says what was (or would be) lost."""
    topic = await broker.describe_topic(name)
    records = 0  # offsets in the log: records, and transaction markers, which take one each
    for p in range(topic.partitions):
        info = await broker.partition_info(name, p)
        records += info.high_watermark - info.log_start
    readers, committed = [], []
    for group_id in await broker.list_groups():
        group = await broker.describe_group(group_id)
        members = [
            m
            for m in group.members
            if name in m.topics
            or any(tp.topic == name for tp in m.assignment)
            or (topic.compacted and name.startswith(f"{group_id}-"))  # its app's changelog
        ]
        if members:
            readers.append(f"{group_id!r} ({_count(len(members), 'live member')})")
        elif any(tp.topic == name for tp in group.offsets):
            committed.append(repr(group_id))
    losses = []
    if topic.compacted and name.endswith("-changelog"):
        state = f"up to {_count(records, 'record')}"
        losses.append(f"it is a table's changelog: the table's whole state ({state})")
    if readers:
        losses.append(f"live groups consume it: {', '.join(readers)}")
    if losses and not force:
        raise InvalidRequestError(
            f"refusing to delete topic {name!r}: {'; '.join(losses)}; "
            + ("stop the app, or add " if readers else "add ")
            + "--force to delete it anyway"
        )
    await broker.delete_topic(name)
    lost = [f"up to {_count(records, 'record')}"]
    if committed:
        lost.append(f"the committed offsets of groups {', '.join(committed)}")
    print(f"deleted {name} ({'; '.join(lost + losses)})")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


async def _broker(url: str, args: argparse.Namespace) -> None:
    """`streams broker backup DEST` and `streams broker check`: the embedded broker's file."""
    path = sqlite_path(url)
    if path is None:
        raise ConfigurationError(
            f"`streams broker {args.action}` works on an embedded broker file (sqlite:///...), "
            f"not {url!r}"
        )
    if args.action == "check":
        report = await asyncio.to_thread(check_file, path)
        if report.problems:
            more = len(report.problems) - 1
            raise DatabaseError(
                f"{path!r} is corrupt: {report.problems[0]}"
                + (f" (and {_count(more, 'more problem')})" if more else "")
                + "; restore it from a backup (docs/operations.md)"
            )
        print(
            f"ok: {path}: {report.pages} pages, {report.batches} record batches checked "
            f"in {report.seconds:.2f} s"
        )
        return
    async with connect(url) as transport:
        if not isinstance(transport, EmbeddedTransport):
            raise ConfigurationError(f"{url!r} is not served by the embedded broker")
        copy = await transport.backup(args.dest)
    print(f"backed up {path} to {copy.path} ({copy.bytes} bytes, checked) in {copy.seconds:.2f} s")


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


def load_app(target: str) -> App:
    """The streams.App named by "module:attribute" (attribute defaults to "app")."""
    module_name, _, attribute = target.partition(":")
    attribute = attribute or "app"
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from exc
    except Exception as exc:
        raise ConfigurationError(f"importing {module_name!r} failed: {exc!r}") from exc
    app = getattr(module, attribute, None)
    if app is None:
        raise ConfigurationError(f"module {module_name!r} has no attribute {attribute!r}")
    if not isinstance(app, App):
        raise ConfigurationError(f"{target!r} is a {type(app).__name__}, not a streams.App")
    return app


def _worker(args: argparse.Namespace) -> int:
    if args.broker:
        os.environ["STREAMS_BROKER"] = args.broker  # the app's settings read it
    app = load_app(args.app)
    if args.workers < 1:
        raise ConfigurationError("--workers must be at least 1")
    logging.basicConfig(
        level=args.loglevel.upper(),
        format=f"%(asctime)s {app.id}[{'supervisor' if args.child is None else args.child}]"
        " %(levelname)s %(name)s: %(message)s",
    )
    if args.child is None:
        asyncio.run(_preflight(app))  # a bad URL or database fails here, once, not in N children
        command = [sys.executable, "-m", "streams.cli"]
        if args.debug:
            command.append("--debug")

        def child(slot: int) -> list[str]:
            return [*command, "worker", args.app, "--loglevel", args.loglevel, "--child", str(slot)]

        return Supervisor(child, args.workers).run()

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await app.run(stop, slot=args.child)

    try:
        asyncio.run(serve())
    except StreamsError as exc:
        if args.debug:
            raise
        print(f"streams: error: {exc}", file=sys.stderr)
        return exit_code(exc)  # a full disk (75) is restarted; a wrong setting (78) is not
    return 0


async def _preflight(app: App) -> None:
    """Open the app's broker once (and close it): a wrong URL, a foreign or locked database
    is reported as one line before any worker starts."""
    async with app.settings.connect() as broker:
        await broker.list_topics()


async def _table(args: argparse.Namespace) -> None:
    app = load_app(args.app)
    table = app.tables.get(args.table)
    if table is None:
        raise ConfigurationError(
            f"app {app.id!r} has no table {args.table!r} (tables: {sorted(app.tables)})"
        )
    settings = app.settings.override(broker=args.broker) if args.broker else app.settings
    async with settings.connect() as broker:
        await broker.describe_topic(table.changelog_topic)  # UnknownTopicError if never run
        rows: dict[int, dict[bytes, bytes]] = {p: {} for p in range(table.partitions)}
        async for record in broker.committed_records(table.changelog_topic, table.partitions):
            if record.key is None:
                continue
            if record.value is None:
                rows[record.partition].pop(record.key, None)
            else:
                rows[record.partition][record.key] = record.value
    spec = table.spec()  # decoded as a worker restores it (windows: (key, start, end) rows)
    state = WindowedState(spec) if spec.window else TableState(spec)
    for partition, partition_rows in rows.items():
        state.attach(partition, partition_rows)
    for key, value in sorted(state.items(), key=lambda kv: json.dumps(kv[0], default=str)):
        print(f"{json.dumps(key, default=str)}\t{json.dumps(value, default=str)}")


async def _run(args: argparse.Namespace) -> None:
    if args.command == "table":
        await _table(args)
        return
    handlers: dict[str, Any] = {
        "topics": _topics,
        "send": _send,
        "tail": _tail,
        "groups": _groups,
    }
    url = args.broker or os.environ.get("STREAMS_BROKER", DEFAULT_BROKER)
    if args.command == "broker":
        await _broker(url, args)
        return
    async with connect(url) as broker:
        await handlers[args.command](broker, args)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "worker":
            return _worker(args)
        asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `streams tail t | head`: the reader is gone, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (StreamsError, OSError) as exc:
        if args.debug:
            raise
        print(f"streams: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
