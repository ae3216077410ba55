"""Word count, exactly-once, on the embedded broker.

    python examples/wordcount.py                 # load a text, count it, print the top words
    python examples/wordcount.py worker          # run a worker until Ctrl-C (load words with
                                                 # `streams send words --file text.txt`)

The `count` agent re-keys each word with group_by, so every occurrence of a word reaches the
worker that owns its row of the `counts` table; each update goes to `word-counts`, keyed by the
word. Outputs, table changes and consumed offsets commit in one transaction.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import tempfile
import time
from typing import Any

import streams

app = streams.App("wordcount", commit_interval=0.1)  # broker: sqlite:///streams.db
words = app.topic("words", value_type=str)
word_counts = app.topic("word-counts")
counts = app.table("counts", default=int)


@app.stream(words, sink=[word_counts])
async def count(stream: streams.Stream) -> Any:
    async for word in stream.group_by(lambda w: w, name="by-word"):
        counts[word] += 1
        yield {"word": word, "count": counts[word]}


TEXT = """
It was the best of times, it was the worst of times, it was the age of wisdom, it was the age
of foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season
of Light, it was the season of Darkness, it was the spring of hope, it was the winter of despair.
"""


async def demo() -> None:
    """Load the text into a fresh broker file, run one worker until it is all counted."""
    tokens = re.findall(r"[a-z']+", TEXT.lower()) * 200
    with tempfile.TemporaryDirectory() as directory:
        run = app.testing(
            broker=f"sqlite:///{directory}/wordcount.db", state_dir=os.path.join(directory, "state")
        )
        async with run:
            await run.send_many(words, tokens)
            started = time.perf_counter()
            await run.drain()
            elapsed = time.perf_counter() - started
            table = run.table("counts")
            outputs = await run.read(word_counts)
        top = sorted(table.items(), key=lambda kv: (-kv[1], kv[0]))[:8]
        print(
            f"counted {sum(table.values())} words ({len(table)} distinct) in {elapsed:.2f} s, "
            f"exactly once: {len(outputs)} count updates committed"
        )
        for word, n in top:
            print(f"  {word:<12} {n}")
        assert sum(table.values()) == len(tokens) == len(outputs)


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        app.main()
    else:
        asyncio.run(demo())
