"""The `streams` command line.

    streams topics create words --partitions 4
    streams send words hello --key greeting
    streams tail words --from-beginning --isolation read_committed
    streams groups describe wordcount
    streams groups reset-offsets wordcount --topic words --to-earliest --dry-run
    streams worker examples.wordcount:app --workers 3
    streams table examples.wordcount:app counts

Every command takes `--broker URL` and `--debug`, before or after the command's name. The
broker is, first to last: `--broker`, $STREAMS_BROKER, the app's `broker=` (commands given an
app: worker, table, send --app), sqlite:///streams.db. Errors are one line on stderr and a
non-zero exit code; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any

import orjson

from runtime.broker.integrity import check_file
from runtime.errors import (
    ConfigurationError,
    DatabaseError,
    InvalidRequestError,
    StreamsError,
    UnknownTopicError,
    exit_code,
)
from runtime.transport import READ_COMMITTED, READ_UNCOMMITTED, Transport, connect
from runtime.transport.embedded.transport import EmbeddedTransport, sqlite_path
from runtime.types import TopicPartition
from runtime.worker.failures import write_failure
from runtime.worker.parent import die_with_parent, parent_gone
from runtime.worker.slots import SUPERVISOR_ENV
from runtime.worker.supervisor import Supervisor
from runtime.worker.tables import TableState
from runtime.worker.windows import WindowedState
from streams.app import App, importing_for_cli
from streams.codecs import Codec
from streams.offsets import OffsetChange, Reset, apply_reset, parse_datetime, plan_reset
from streams.settings import DEFAULT_BROKER, redacted

FORMATS = ("text", "json", "bytes")
PROGRESS_INTERVAL_S = 1.0  # `send --file`: a progress line this often
log = logging.getLogger("streams.cli")
EXIT_WAIT_S = 5.0  # how long a failed worker waits for leftover threads before it exits anyway


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streams", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--broker",
        metavar="URL",
        default=None,
        help=f"broker URL (default: $STREAMS_BROKER, else the app's, else {DEFAULT_BROKER})",
    )
    parser.add_argument("--debug", action="store_true", default=False, help="show tracebacks")
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
    send.add_argument(
        "--timestamp", help="record timestamp: ms since the epoch or ISO 8601 (default: now)"
    )
    for part in ("key", "value"):
        send.add_argument(
            f"--{part}-format",
            choices=FORMATS,
            help=f"how the {part} is encoded: text (UTF-8, the default), json (checked, "
            "compacted) or bytes (as given)",
        )
    send.add_argument(
        "--app", help="MODULE:ATTRIBUTE of a streams.App: encode with its topic's codecs"
    )

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

    groups = commands.add_parser("groups", help="list, describe, reset or delete groups")
    group_commands = groups.add_subparsers(dest="action", required=True)
    group_commands.add_parser("list")
    group_commands.add_parser("describe").add_argument("group")
    group_commands.add_parser("delete", help="delete a stopped group").add_argument("group")
    reset = group_commands.add_parser(
        "reset-offsets", help="move a stopped group's committed offsets"
    )
    reset.add_argument("group")
    which = reset.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--topic",
        action="append",
        help="TOPIC or TOPIC:PARTITION[,PARTITION...] (repeatable)",
    )
    which.add_argument(
        "--all-topics", action="store_true", help="every topic the group has offsets for"
    )
    to = reset.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-earliest", action="store_true", help="the log start")
    to.add_argument("--to-latest", action="store_true", help="the high watermark")
    to.add_argument("--to-offset", type=int, metavar="N")
    to.add_argument("--to-datetime", metavar="ISO", help="the first record at or after this time")
    to.add_argument("--shift-by", type=int, metavar="N", help="N records on (or back, if <0)")
    reset.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")

    broker = commands.add_parser(
        "broker", help="serve (Kafka protocol), back up or check the embedded broker's file"
    )
    broker_commands = broker.add_subparsers(dest="action", required=True)
    broker_commands.add_parser(
        "backup", help="copy the live broker file, consistently, to a new file, and check it"
    ).add_argument("dest", help="path of the copy (must not exist)")
    broker_commands.add_parser("check", help="check the broker file's integrity (read-only)")
    serve = broker_commands.add_parser(
        "serve", help="serve the broker file over the Kafka protocol (docs/protocol.md)"
    )
    serve.add_argument("url", nargs="?", metavar="URL", help="sqlite:///path.db (or --broker)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=9092, help="port (0: any free port)")
    serve.add_argument(
        "--advertised-host", metavar="H", help="host name clients are told (default: --host)"
    )
    serve.add_argument(
        "--auto-create-topics",
        action="store_true",
        help="create a topic (1 partition) when a client asks for an unknown one",
    )
    _share_options(parser)
    return parser


def _share_options(parser: argparse.ArgumentParser) -> None:
    """Let every (sub)command take --broker and --debug after its name too: each
    subparser gets them with no default (SUPPRESS), so a value given before the command
    is kept unless the same option comes again after it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                known = {o for a in sub._actions for o in a.option_strings}
                if "--broker" not in known:
                    sub.add_argument(
                        "--broker", metavar="URL", default=argparse.SUPPRESS, help="broker URL"
                    )
                if "--debug" not in known:
                    sub.add_argument(
                        "--debug",
                        action="store_true",
                        default=argparse.SUPPRESS,
                        help="show tracebacks",
                    )
                _share_options(sub)


def broker_url(args: argparse.Namespace, app: App | None = None) -> str:
    """The broker a command uses: --broker, $STREAMS_BROKER, the app's broker=, the default
    (the app's settings already hold the last three, in that order)."""
    if args.broker:
        return str(args.broker)
    if app is not None:
        return app.settings.broker
    return os.environ.get("STREAMS_BROKER") or DEFAULT_BROKER


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


async def _serve(url: str, args: argparse.Namespace) -> None:
    """`streams broker serve`: the Kafka protocol over the broker file, until SIGTERM/SIGINT."""
    try:
        from runtime.protocol import ProtocolServer  # the serve extra: kio, crc32c, cramjam
    except ImportError as exc:
        raise ConfigurationError(
            f"`streams broker serve` needs the serve extra: pip install 'streams[serve]' ({exc})"
        ) from exc

    if sqlite_path(url) is None and not url.startswith("memory://"):
        raise ConfigurationError(
            f"`streams broker serve` serves an embedded broker file (sqlite:///...), not {url!r}"
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = await ProtocolServer.open(
        url,
        host=args.host,
        port=args.port,
        advertised_host=args.advertised_host,
        auto_create_topics=args.auto_create_topics,
    )
    print(f"serving {url} on {args.host}:{server.port} (Kafka protocol)", flush=True)
    await server.serve_until(stop)
    print("stopped", flush=True)


async def _send(broker: Transport, args: argparse.Namespace, app: App | None = None) -> None:
    if (args.value is None) == (args.file is None):
        raise StreamsError("give either a VALUE or --file")
    key_codec = value_codec = None
    if app is not None:
        topic = app.topics.get(args.topic)
        if topic is None:
            raise ConfigurationError(
                f"app {app.id!r} declares no topic {args.topic!r} (topics: {sorted(app.topics)})"
            )
        key_codec, value_codec = topic.key, topic.value
    encode_key = _encoder("key", args.key_format, key_codec)
    encode_value = _encoder("value", args.value_format, value_codec)
    key = None if args.key is None else encode_key(os.fsencode(args.key), "--key")
    timestamp = None if args.timestamp is None else _timestamp(args.timestamp)
    producer = broker.producer()
    try:
        if args.file is None:
            value = encode_value(os.fsencode(args.value), "VALUE")
            meta = await producer.send(args.topic, value, key=key, timestamp=timestamp)
            print(f"sent to {meta.topic}[{meta.partition}] at offset {meta.offset}")
            return
        await broker.describe_topic(args.topic)  # UnknownTopicError before reading a line
        count = 0
        progress = _Progress()
        for number, line in _lines(args.file):
            value = encode_value(line, f"line {number} of {args.file}")
            producer.produce(args.topic, value, key=key, timestamp=timestamp)
            count += 1
            if count % 1000 == 0:
                await asyncio.sleep(0)  # let the producer's flushes run
                progress.show(count)
        await producer.flush()
        progress.done()
        print(f"sent {count} records to {args.topic}")
    finally:
        await producer.close()


class _Progress:
    """`sent N records` on stderr every PROGRESS_INTERVAL_S while a long send runs: one line
    rewritten in place on a terminal, one line each time otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.next = time.monotonic() + PROGRESS_INTERVAL_S
        self.shown = False

    def show(self, count: int) -> None:
        now = time.monotonic()
        if now < self.next:
            return
        self.next = now + PROGRESS_INTERVAL_S
        self.shown = True
        end = "" if self.tty else "\n"
        print(f"{chr(13) if self.tty else ''}sent {count} records ...", end=end, file=sys.stderr)
        sys.stderr.flush()

    def done(self) -> None:
        if self.shown and self.tty:
            print(file=sys.stderr)


def _lines(path: str) -> Iterator[tuple[int, bytes]]:
    """The lines of a file ('-': stdin) as bytes, without their newline, numbered from 1."""
    handle: IO[bytes] = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    with handle:
        for number, line in enumerate(handle, 1):
            yield number, line[:-1] if line.endswith(b"\n") else line


def _encoder(part: str, fmt: str | None, codec: Codec | None) -> Callable[[bytes, str], bytes]:
    """How the command line's key or value becomes bytes: a --*-format, else the app's codec
    (with --app), else UTF-8 text."""
    if fmt is None and codec is not None:
        return lambda data, where: _with_codec(codec, data, where)
    fmt = fmt or "text"

    def encode(data: bytes, where: str) -> bytes:
        if fmt == "bytes":
            return data
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise InvalidRequestError(
                f"{where} is not UTF-8 text; send it as is with --{part}-format bytes"
            ) from None
        if fmt == "json":
            try:
                return orjson.dumps(orjson.loads(text))
            except orjson.JSONDecodeError as exc:
                raise InvalidRequestError(f"{where} is not JSON ({exc}): {text[:80]!r}") from None
        return data

    return encode


def _with_codec(codec: Codec, data: bytes, where: str) -> bytes:
    """Encode what was typed with an app's codec: as that codec's own wire form when it reads
    it (JSON text for a JSON or dataclass codec), else as a string (`--key ada` for a JSON
    key is the JSON string "ada"), else as bytes."""
    candidates: list[Callable[[], Any]] = [lambda: codec.decode(data)]
    try:
        text = data.decode()
        candidates.append(lambda: text)
    except UnicodeDecodeError:
        pass
    candidates.append(lambda: data)
    for candidate in candidates:
        try:
            return codec.encode(candidate())
        except (ValueError, TypeError):
            continue
    raise InvalidRequestError(f"{where} cannot be encoded with the {codec.name} codec")


def _timestamp(text: str) -> int:
    """--timestamp: ms since the epoch, or an ISO 8601 time."""
    if text.lstrip("-").isdigit():
        return int(text)
    return parse_datetime(text, option="--timestamp")


def iso_time(ms: int) -> str:
    """A record timestamp as an ISO 8601 UTC time, e.g. 2026-12-02T14:49:24.123Z."""
    moment = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
                    print(
                        f"{record.partition}:{record.offset}\t{iso_time(record.timestamp)}\t"
                        f"{key}\t{value}",
                        flush=True,
                    )
                    seen += 1
                    if args.max is not None and seen >= args.max:
                        break
    finally:
        await consumer.close()


async def _groups(broker: Transport, args: argparse.Namespace) -> None:
    if args.action == "list":
        for group_id in await broker.list_groups():
            print(group_id)
    elif args.action == "delete":
        await broker.delete_group(args.group)
        print(f"deleted group {args.group}")
    elif args.action == "reset-offsets":
        await _reset_offsets(broker, args)
    else:
        await _describe_group(broker, args.group)


async def _describe_group(broker: Transport, group_id: str) -> None:
    group = await broker.describe_group(group_id)
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


async def _reset_offsets(broker: Transport, args: argparse.Namespace) -> None:
    if args.to_earliest:
        reset = Reset("earliest")
    elif args.to_latest:
        reset = Reset("latest")
    elif args.to_offset is not None:
        reset = Reset("offset", args.to_offset)
    elif args.to_datetime is not None:
        reset = Reset("datetime", parse_datetime(args.to_datetime))
    else:
        reset = Reset("shift", args.shift_by)
    changes = await plan_reset(broker, args.group, args.topic or [], reset)
    if not args.dry_run:
        await apply_reset(broker, args.group, changes)
    _print_changes(changes)
    verb = "would move (dry run, nothing changed)" if args.dry_run else "moved"
    print(f"{verb} {len(changes)} offsets of group {args.group}", file=sys.stderr)


def _print_changes(changes: Sequence[OffsetChange]) -> None:
    print("topic\tpartition\told\tnew")
    for change in changes:
        old = "-" if change.old is None else str(change.old)
        print(f"{change.tp.topic}\t{change.tp.partition}\t{old}\t{change.new}")


def load_app(target: str) -> App:
    """The streams.App named by "module:attribute" (attribute defaults to "app"). An
    `app.main()` the module runs at import (no `if __name__ == "__main__":` guard) returns at
    once instead of reading this command's arguments."""
    module_name, _, attribute = target.partition(":")
    attribute = attribute or "app"
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        with importing_for_cli():
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from exc
    except StreamsError as exc:  # e.g. a bad setting in App(...): its message says it all
        raise ConfigurationError(f"importing {module_name!r}: {exc}") from exc
    except Exception as exc:
        raise ConfigurationError(f"importing {module_name!r} failed: {exc!r}") from exc
    app = getattr(module, attribute, None)
    if app is None:
        raise ConfigurationError(f"module {module_name!r} has no attribute {attribute!r}")
    if not isinstance(app, App):
        raise ConfigurationError(f"{target!r} is a {type(app).__name__}, not a streams.App")
    return app


def _worker(args: argparse.Namespace) -> int:
    app = load_app(args.app)
    if args.broker:
        app.settings = app.settings.override(broker=args.broker)
    if args.workers < 1:
        raise ConfigurationError("--workers must be at least 1")
    logging.basicConfig(
        level=args.loglevel.upper(),
        format=f"%(asctime)s {app.id}[{'supervisor' if args.child is None else args.child}]"
        " %(levelname)s %(name)s: %(message)s",
    )
    if args.child is None:
        asyncio.run(_preflight(app))  # a bad URL or database fails here, once, not in N children
        log.info("app %s on broker %s", app.id, redacted(app.settings.broker))
        command = [sys.executable, "-m", "streams.cli"]
        if args.debug:
            command.append("--debug")
        if args.broker:
            command += ["--broker", args.broker]

        def child(slot: int) -> list[str]:
            return [*command, "worker", args.app, "--loglevel", args.loglevel, "--child", str(slot)]

        return Supervisor(child, args.workers).run()

    supervisor = int(os.environ.get(SUPERVISOR_ENV, "0")) or None
    if supervisor is not None:  # stop (cleanly) when the supervisor dies, even by kill -9
        die_with_parent(signal.SIGTERM)
        if parent_gone(supervisor):
            return 0

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        watch = None if supervisor is None else asyncio.ensure_future(_watch(supervisor, stop))
        try:
            await app.run(stop, slot=args.child)
        finally:
            if watch is not None:
                watch.cancel()

    try:
        asyncio.run(serve())
    except StreamsError as exc:
        if args.debug:
            raise
        line = f"streams: error: {exc}"
        print(line, file=sys.stderr)
        write_failure(line)  # where the supervisor sees that a restart stops at it again
        # the code tells the supervisor what to do (78: stop, 75: retry later, 65: a record
        # that cannot be processed: give up when a restart stops at it again)
        return _exit_bounded(exit_code(exc))
    except Exception:  # a bug, not a condition we name: its traceback, and no hang either
        if args.debug:
            raise
        log.exception("worker %s failed", args.child)
        return _exit_bounded(1)
    return 0


async def _watch(supervisor: int, stop: asyncio.Event) -> None:
    """Stop the worker (cleanly) once its supervisor is gone: where the kernel does not
    signal it, and for the moment before the signal was set up."""
    while not stop.is_set():
        if parent_gone(supervisor):
            log.warning("the supervisor is gone: stopping")
            stop.set()
        await asyncio.sleep(1.0)


def _exit_bounded(code: int) -> int:
    """Return `code`, or exit with it at once if threads a failure left behind (a client's
    background thread) do not end within EXIT_WAIT_S: a failed worker never hangs."""
    deadline = time.monotonic() + EXIT_WAIT_S
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.error("thread %s did not end: exiting", thread.name)
                sys.stderr.flush()
                sys.stdout.flush()
                os._exit(code)
    return code


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
    settings = app.settings.override(broker=broker_url(args, app))
    async with settings.connect() as broker:
        try:
            await broker.describe_topic(table.changelog_topic)
        except UnknownTopicError:
            raise UnknownTopicError(
                f"table {args.table!r} has no changelog ({table.changelog_topic!r}) on "
                f"{redacted(settings.broker)}: no worker of app {app.id!r} ran on this broker "
                "(give --broker or $STREAMS_BROKER if it ran elsewhere)"
            ) from None
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
    if args.command == "send" and args.app:
        app = load_app(args.app)
        async with app.settings.override(broker=broker_url(args, app)).connect() as broker:
            await _send(broker, args, app)
        return
    handlers: dict[str, Any] = {
        "topics": _topics,
        "send": _send,
        "tail": _tail,
        "groups": _groups,
    }
    url = broker_url(args)
    if args.command == "broker" and args.action == "serve":
        await _serve(args.url or url, args)
        return
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
        # `streams worker` is what a service manager runs: its codes say whether to restart
        worker = args.command == "worker" and isinstance(exc, StreamsError)
        return exit_code(exc) if worker else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
