"""The worker's own checks on Kafka: topics it finds with the wrong partition count."""

from __future__ import annotations

import pytest

import streams
from runtime.errors import ConfigurationError
from runtime.testing import SESSION_TIMEOUT_MS, unique
from runtime.transport import connect


async def test_a_changelog_with_the_wrong_partition_count_is_refused(kafka_url: str) -> None:
    app = streams.App(unique("app"), broker=kafka_url, session_timeout_ms=SESSION_TIMEOUT_MS)
    words = app.topic("words-" + app.id, value_type=str)
    counts = app.table("counts", default=int)

    @app.stream(words)
    async def count(stream: streams.Stream) -> None:
        async for word in stream.group_by(lambda w: w, name="by-word"):
            counts[word] += 1

    async with connect(kafka_url) as transport:
        await transport.create_topic(f"{app.id}-counts-changelog", 2, compacted=True)
    with pytest.raises(ConfigurationError, match="co-partitioned"):
        async with app.testing(broker=kafka_url):
            pass
