"""The Kafka-protocol brokers of the tests, kept importable here: the launcher itself lives in
the package (runtime/testing/brokers.py) so that benchmarks need not import from tests/."""

from runtime.testing.brokers import (
    SESSION_TIMEOUT_MS,
    KafkaBroker,
    ServedBroker,
    TansuBroker,
    free_port,
    start_broker,
    tansu_binary,
    unique,
)

__all__ = [
    "SESSION_TIMEOUT_MS",
    "KafkaBroker",
    "ServedBroker",
    "TansuBroker",
    "free_port",
    "start_broker",
    "tansu_binary",
    "unique",
]
