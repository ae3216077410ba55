"""Fixtures for the whole suite: the Kafka-protocol broker that Kafka back-end tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kafka_broker import TansuBroker


@pytest.fixture(scope="session")
def kafka_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`kafka://127.0.0.1:PORT` of a Tansu broker started for this session. A broker that
    cannot start fails the Kafka tests (it is installed by the test extra): never a skip."""
    try:
        broker = TansuBroker.start(tmp_path_factory.mktemp("tansu"))
    except Exception as exc:
        pytest.fail(f"cannot start the Tansu test broker: {exc}")
    try:
        yield broker.url
    finally:
        broker.stop()
