"""streams: exactly-once stream processing for Python.

import streams

app = streams.App("wordcount", broker="sqlite:///wordcount.db")
words = app.topic("words", value_type=str)
counts = app.table("counts", default=int)

@app.stream(words, sink=[app.topic("word-counts")])
async def count(stream):
    async for word in stream.group_by(lambda w: w, name="by-word"):
        counts[word] += 1
        yield {"word": word, "count": counts[word]}
"""

from runtime.errors import (
    AgentError,
    AppError,
    ConfigurationError,
    RecordDecodeError,
    RecordError,
    StreamsError,
    TableKeyNotOwnedError,
    TableWriteOutsideAgentError,
)
from runtime.types import Event, RecordMetadata, TopicPartition
from runtime.worker.windowing import Window, WindowResult
from streams.app import App
from streams.codecs import Codec, DecodeError, get_codec, register_codec
from streams.settings import SETTINGS, Settings
from streams.stream import Stream
from streams.table import Table
from streams.topic import Topic

__version__ = "0.1.0"

__all__ = [
    "SETTINGS",
    "AgentError",
    "App",
    "AppError",
    "Codec",
    "ConfigurationError",
    "DecodeError",
    "Event",
    "RecordDecodeError",
    "RecordError",
    "RecordMetadata",
    "Settings",
    "Stream",
    "StreamsError",
    "Table",
    "TableKeyNotOwnedError",
    "TableWriteOutsideAgentError",
    "Topic",
    "TopicPartition",
    "Window",
    "WindowResult",
    "get_codec",
    "register_codec",
]
