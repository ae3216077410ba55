"""examples/kafkajs: the classic kafkajs "test-topic" producer and consumer run as documented
(docs/protocol-clients.md) against `streams broker serve`, with kafkajs from tests/protocol/node
(the same locked 2.2.4) when the example has no node_modules of its own."""

from __future__ import annotations

import json
from pathlib import Path

from runtime.testing import ServedBroker
from tests.protocol.clients import NodeScript, install_kafkajs

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "kafkajs"
SENT = [
    "Hello KafkaJS user!",
    "Hello from streams broker serve",
    "no JVM, no Docker: one SQLite file",
]


def messages(script: NodeScript) -> list[dict[str, object]]:
    """The consumer's message lines (kafkajs' own log lines are JSON on stdout too)."""
    return [line for line in script.lines if "logger" not in line]


def test_test_topic_demo(tmp_path: Path) -> None:
    install_kafkajs()
    # A broker of its own: the demo's topic and group names are fixed.
    with ServedBroker.start(tmp_path) as broker:
        env = {"KAFKA_BROKERS": broker.bootstrap}
        producer = NodeScript(EXAMPLE / "producer.js", env=env)
        producer.finish(timeout=60)
        consumer = NodeScript(EXAMPLE / "consumer.js", env=env)
        try:
            consumer.wait_for(lambda _: len(messages(consumer)) >= len(SENT))
        finally:
            consumer.stop()
        assert consumer.process.returncode == 0, consumer.stderr  # left its group on SIGTERM
    received = [(line["key"], line["value"]) for line in messages(consumer)]
    assert sorted(received, key=json.dumps) == sorted(
        [(None, SENT[0]), ("greeting", SENT[1]), ("greeting", SENT[2])], key=json.dumps
    )
    assert all(line["topic"] == "test-topic" for line in messages(consumer))
