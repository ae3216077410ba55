"""Kafka-protocol brokers started for tests and benchmarks, each a child process on a free
loopback port, stopped by its own pid.

    from runtime.testing import start_broker
    with start_broker("streams", directory) as broker:   # or "tansu"
        broker.url         # "kafka://127.0.0.1:PORT"
        broker.bootstrap   # "127.0.0.1:PORT", for librdkafka, kcat, kafkajs
"""

from runtime.testing.brokers import (
    BROKER_KINDS,
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
    "BROKER_KINDS",
    "SESSION_TIMEOUT_MS",
    "KafkaBroker",
    "ServedBroker",
    "TansuBroker",
    "free_port",
    "start_broker",
    "tansu_binary",
    "unique",
]
