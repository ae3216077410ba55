"""Page views per page per minute, with one final result per page and minute.

    python examples/pageviews.py             # simulate an hour of views, print final counts
    python examples/pageviews.py worker      # run a worker until Ctrl-C

Views arrive keyed by page, with the view's time in the record timestamp. `views_per_minute` is
a tumbling-window table: `views_per_minute[page] += 1` counts the view in the minute it
happened. A minute closes when the stream time (the latest view time seen) passes its end plus
5 s of grace; its count then goes to `pageviews-per-minute`, exactly once, even across
crashes. Views more than 5 s late for their minute are dropped and sent to `late-views`.
With `idle_close=5`, after 5 s of wall-clock silence the stream time moves on with the wall
clock, so the last minute of a quiet evening is not held back until the next morning's first
view.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import tempfile
from collections import Counter
from typing import Any

import streams

app = streams.App("pageviews", commit_interval=0.1)  # broker: sqlite:///streams.db
views = app.topic("views", value_type="json")
per_minute = app.topic("pageviews-per-minute")
late_views = app.topic("late-views", value_type="json")
views_per_minute = (
    app.table("views-per-minute", default=int)
    .tumbling(60, grace=5, dead_letter=late_views)
    .emit_final(to=per_minute, idle_close=5)
)


@app.stream(views)
async def count(stream: streams.Stream) -> Any:
    async for page, _view in stream.items():  # keyed by page: no group_by needed
        views_per_minute[page] += 1


PAGES = ["/", "/pricing", "/docs", "/blog", "/about"]


async def demo() -> None:
    """An hour of views, a few arriving late; then print the final count of each minute."""
    rng = random.Random(3)
    start = 1_700_000_040_000  # a minute boundary, in ms
    sent: Counter[tuple[str, int]] = Counter()
    with tempfile.TemporaryDirectory() as directory:
        run = app.testing(
            broker=f"sqlite:///{directory}/pageviews.db",
            state_dir=os.path.join(directory, "state"),
        )
        async with run:
            sends = []
            for i in range(6000):
                page = rng.choice(PAGES)
                ts = max(start, start + i * 600 - rng.randrange(0, 4_000))  # out of order
                sends.append(run.send(views, {"user": i}, key=page, timestamp=ts))
                sent[(page, (ts - start) // 60_000)] += 1
            await asyncio.gather(*sends)
            await run.drain()
            print("all views counted; waiting for the last minute to close by idleness ...")
            finals = await run.read(per_minute)
            while len(finals) < len(sent):
                await run.drain()
                await asyncio.sleep(0.5)
                finals = await run.read(per_minute)
        print(f"{len(finals)} final results for {len(sent)} (page, minute) pairs")
        for event in finals[:5]:
            print(f"  {event.value}")
        counted = Counter(
            {
                (r["key"], int(r["start"] * 1000 - start) // 60_000): r["value"]
                for r in (e.value for e in finals)
            }
        )
        assert counted == sent, "every view counted once, in its minute"


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        app.main()
    else:
        asyncio.run(demo())
