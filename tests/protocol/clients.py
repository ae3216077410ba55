"""Real Kafka clients driven by the protocol tests: kcat (Debian) and kafkajs (npm, in node/).

The tools are installed by the project (.ci/clients: apt-get; node/package-lock.json: npm). A
missing tool fails its tests with what to run, never skips them.

    kcat(broker, "-L", "-J")                       # CompletedProcess, checked
    script = NodeScript("consume.js", bootstrap=broker.bootstrap, topic=t, group=g)
    script.wait_for(lambda line: line["event"] == "assignment")
    script.stop()                                  # SIGTERM to its own pid
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runtime.testing import KafkaBroker

NODE_DIR = Path(__file__).resolve().parent / "node"
KAFKAJS_VERSION = "2.2.4"


def require_tool(name: str, install: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: {install}")
    return path


def kcat(
    broker: KafkaBroker, *arguments: str, stdin: str | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run kcat against `broker`; fails the test with kcat's stderr if it exits non-zero."""
    binary = require_tool("kcat", "bash .ci/clients (apt-get install kcat)")
    result = subprocess.run(
        [binary, "-b", broker.bootstrap, *arguments],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"kcat {' '.join(arguments)}: {result.stderr[-3000:]}"
    return result


def kcat_json_lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def install_kafkajs() -> None:
    """`npm ci` in node/ unless kafkajs is already installed there (at the locked version)."""
    installed = NODE_DIR / "node_modules" / "kafkajs" / "package.json"
    if installed.exists() and json.loads(installed.read_text())["version"] == KAFKAJS_VERSION:
        return
    npm = require_tool("npm", "bash .ci/clients (apt-get install nodejs npm)")
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"npm ci in {NODE_DIR}: {result.stdout}{result.stderr}"


class NodeScript:
    """One of node/*.js as a child process; its stdout's JSON lines are collected as they come."""

    def __init__(
        self, script: str | Path, env: dict[str, str] | None = None, **options: str | int
    ) -> None:
        """`node node/SCRIPT --name value ...` (an absolute `script` is run from its folder,
        finding kafkajs in node/node_modules through NODE_PATH if it has none of its own)."""
        node = require_tool("node", "bash .ci/clients (apt-get install nodejs)")
        path = NODE_DIR / script
        command = [node, str(path)]
        for name, value in options.items():
            command += [f"--{name}", str(value)]
        self.script = path.name
        self.process = subprocess.Popen(
            command,
            cwd=path.parent,
            env={**os.environ, "NODE_PATH": str(NODE_DIR / "node_modules"), **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[dict[str, Any]] = []  # appended by the reader thread as they come
        self._stdout_done = threading.Event()
        self._stderr: list[str] = []
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("{"):
                self.lines.append(json.loads(line))
        self._stdout_done.set()

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._stderr.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)[-4000:]

    def wait_for(
        self, condition: Callable[[list[dict[str, Any]]], bool], timeout: float = 60
    ) -> None:
        """Until `condition(lines so far)` holds; fails if the script exits or time runs out."""
        deadline = time.monotonic() + timeout
        while not condition(self.lines):
            if self._stdout_done.is_set() and not condition(self.lines):
                self.process.wait()
                raise AssertionError(
                    f"{self.script} exited with {self.process.returncode} first; "
                    f"stdout: {self.lines[-5:]}; stderr: {self.stderr}"
                )
            assert time.monotonic() < deadline, (
                f"{self.script}: condition not reached in time; stdout: {self.lines[-5:]}; "
                f"stderr: {self.stderr}"
            )
            time.sleep(0.05)

    def _join(self) -> None:
        for thread in self._threads:
            thread.join(timeout=5)

    def finish(self, timeout: float = 120) -> list[dict[str, Any]]:
        """Wait for the script to exit on its own; fails unless it exits 0."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(
                f"{self.script} did not exit in {timeout} s: {self.stderr}"
            ) from None
        self._join()
        assert self.process.returncode == 0, (
            f"{self.script} exited with {self.process.returncode}: {self.stderr}"
        )
        return self.lines

    def stop(self, timeout: float = 20) -> list[dict[str, Any]]:
        """SIGTERM to this script's own pid (kafkajs members leave their group), then SIGKILL."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._join()
        return self.lines

    def messages(self) -> list[dict[str, Any]]:
        return [line for line in self.lines if line["event"] == "message"]


def create_topic(broker: KafkaBroker, topic: str, partitions: int) -> None:
    """Through librdkafka's admin client (CreateTopics), with explicit configs (Tansu)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    futures = admin.create_topics(
        [NewTopic(topic, partitions, 1, config={"retention.ms": "-1"})], operation_timeout=10
    )
    futures[topic].result(timeout=30)


def produce(broker: KafkaBroker, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    """Keyed records through an idempotent librdkafka producer; fails on any delivery error."""
    from confluent_kafka import Producer

    errors: list[object] = []
    producer = Producer(
        {
            "bootstrap.servers": broker.bootstrap,
            "enable.idempotence": True,
            "partitioner": "murmur2_random",
        }
    )
    for key, value in records:
        producer.produce(
            topic, value, key, on_delivery=lambda err, _msg: errors.append(err) if err else None
        )
    assert producer.flush(30) == 0, "records left undelivered"
    assert not errors, errors


def read_all(
    broker: KafkaBroker,
    topic: str,
    partitions: int,
    isolation: str = "read_committed",
    expected: int | None = None,
    timeout: float = 30,
) -> list[Any]:
    """Every record of `topic` from the beginning through a librdkafka consumer (no group):
    until `expected` arrived and one more second brought nothing, or until end of partitions."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": "unused",
            "enable.auto.commit": False,
            "isolation.level": isolation,
            "enable.partition.eof": True,
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    out: list[Any] = []
    at_end: set[int] = set()
    deadline = time.monotonic() + timeout
    quiet_since: float | None = None
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None:
                if expected is not None and len(out) >= expected:
                    quiet_since = quiet_since or time.monotonic()
                    if time.monotonic() - quiet_since > 1.0:
                        break
                continue
            error = message.error()
            if error is not None:
                assert error.code() == error._PARTITION_EOF, error
                at_end.add(message.partition())
                if expected is None and len(at_end) == partitions:
                    break
                continue
            quiet_since = None
            out.append(message)
    finally:
        consumer.close()
    return out


def committed_offsets(broker: KafkaBroker, group: str, topic: str, partitions: int) -> list[int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], 30)
        return [tp.offset for tp in sorted(found, key=lambda tp: tp.partition)]
    finally:
        consumer.close()
