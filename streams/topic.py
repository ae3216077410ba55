"""Topics as the app declares them: a name, a partition count and codecs.

words = app.topic("words", partitions=4, value_type=str)
await words.send(value="hello")          # outside an agent: written at once
await words.send(key="k", value="v")     # inside an agent: part of its transaction
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime.types import Headers, RecordMetadata
from runtime.worker import TopicSpec, current_agent
from streams.codecs import Codec

if TYPE_CHECKING:
    from streams.app import App


class Topic:
    def __init__(
        self,
        app: App,
        name: str,
        partitions: int,
        key: Codec,
        value: Codec,
        *,
        compacted: bool = False,
        internal: bool = False,
    ) -> None:
        self.app = app
        self.name = name
        self.partitions = partitions
        self.key = key
        self.value = value
        self.compacted = compacted
        self.internal = internal

    def __repr__(self) -> str:
        return f"<Topic {self.name} partitions={self.partitions}>"

    def spec(self) -> TopicSpec:
        return TopicSpec(
            self.name, self.partitions, self.key, self.value, self.compacted, self.internal
        )

    def encode(self, key: Any, value: Any) -> tuple[bytes | None, bytes | None]:
        return (
            None if key is None else self.key.encode(key),
            None if value is None else self.value.encode(value),
        )

    async def send(
        self,
        *,
        key: Any = None,
        value: Any = None,
        headers: Headers | None = None,
        timestamp: int | None = None,
        partition: int | None = None,
    ) -> RecordMetadata | None:
        """Send one record. Inside an agent it joins the agent's transaction (returns None:
        its offset is known when the transaction commits); elsewhere it is written at once
        and its metadata returned."""
        key_bytes, value_bytes = self.encode(key, value)
        if current_agent.get() is not None:
            self.app._worker_producer().produce(
                self.name,
                value_bytes,
                key_bytes,
                partition=partition,
                headers=headers,
                timestamp=timestamp,
            )
            return None
        return await self.app._send_now(
            self.name, key_bytes, value_bytes, headers, timestamp, partition
        )
