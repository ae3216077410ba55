"""The word-count example against a reference computed here, for random inputs (hypothesis).

Outputs: for every word w, the committed updates are exactly 1..freq(w), in order, keyed by w
and on w's partition; the table equals the frequencies. Inputs vary in words, repetitions,
order and how they are split across polls and commits.
"""

from __future__ import annotations

import asyncio
import collections

from hypothesis import given, settings
from hypothesis import strategies as st

from examples.wordcount import app
from runtime.partitioner import partition_for_key

WORDS = st.text(alphabet="abcdefghij", min_size=1, max_size=4)


def check(inputs: list[str], outputs: list, table: dict[str, int]) -> None:  # type: ignore[type-arg]
    truth = collections.Counter(inputs)
    assert table == truth
    per_word: dict[str, list[int]] = collections.defaultdict(list)
    for event in outputs:
        assert event.value["word"] == event.key
        assert event.partition == partition_for_key(
            app.topics["word-counts"].key.encode(event.key), 4
        )
        per_word[event.key].append(event.value["count"])
    assert per_word == {w: list(range(1, n + 1)) for w, n in truth.items()}


@settings(max_examples=40, deadline=None)
@given(
    batches=st.lists(st.lists(WORDS, max_size=30), min_size=1, max_size=4),
    poll=st.integers(min_value=1, max_value=50),
    commit_every=st.integers(min_value=1, max_value=60),
)
def test_word_count_equals_the_reference(
    batches: list[list[str]], poll: int, commit_every: int
) -> None:
    async def scenario() -> tuple[list, dict[str, int]]:  # type: ignore[type-arg]
        async with app.testing(max_poll_records=poll, commit_every=commit_every) as t:
            for batch in batches:  # input arrives while the worker runs
                await t.send_many("words", batch)
                await t.worker.poll(0.0)  # type: ignore[union-attr]
            await t.drain()
            return await t.read("word-counts"), t.table("counts")

    outputs, table = asyncio.run(scenario())
    check([w for batch in batches for w in batch], outputs, table)
