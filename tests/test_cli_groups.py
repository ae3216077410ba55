"""`streams groups reset-offsets` (each mode, --dry-run, refused with live members) and
`streams groups delete`, on the embedded broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.broker import Broker
from runtime.broker.core import ProduceBatch
from runtime.types import GroupMetadata, TopicPartition
from streams.cli import main

W0, W1 = TopicPartition("words", 0), TopicPartition("words", 1)


@pytest.fixture
def broker(tmp_path: Path) -> Broker:
    """`words`: partition 0 has 10 records stamped 1 s .. 10 s, partition 1 has 5; group
    `g` (stopped) committed 5 and 2."""
    broker = Broker(str(tmp_path / "b.db"))
    broker.create_topic("words", 2)
    for partition, count in ((0, 10), (1, 5)):
        stamps = [(i + 1) * 1000 for i in range(count)]
        batch = ProduceBatch("words", partition, 0, [None] * count, [b"v"] * count, stamps)
        broker.produce(-1, -1, [batch])
    broker.commit_offsets(GroupMetadata("g", -1, ""), {W0: 5, W1: 2})
    return broker


def streams(broker: Broker, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["--broker", f"sqlite:///{broker.path}", *args])
    out, err = capsys.readouterr()
    return code, out, err


def committed(broker: Broker) -> dict[TopicPartition, int]:
    return broker.committed_offsets("g", [W0, W1])


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--to-earliest"], {W0: 0, W1: 0}),
        (["--to-latest"], {W0: 10, W1: 5}),
        (["--to-offset", "7"], {W0: 7, W1: 5}),  # clamped to partition 1's end
        (["--to-offset", "-4"], {W0: 0, W1: 0}),  # and to the log start
        (["--to-datetime", "1970-01-01T00:00:03.500Z"], {W0: 3, W1: 3}),
        (["--to-datetime", "1970-01-01T01:00:00+01:00"], {W0: 0, W1: 0}),  # zone honoured
        (["--to-datetime", "2000-01-01T00:00:00Z"], {W0: 10, W1: 5}),  # none that late: end
        (["--shift-by", "-3"], {W0: 2, W1: 0}),
        (["--shift-by", "4"], {W0: 9, W1: 5}),
    ],
)
def test_reset_offsets_modes(
    broker: Broker, capsys: pytest.CaptureFixture[str], args: list[str], expected: dict
) -> None:  # type: ignore[type-arg]
    code, out, err = streams(
        broker, capsys, "groups", "reset-offsets", "g", "--topic", "words", *args
    )
    assert code == 0, err
    assert committed(broker) == expected
    assert out.splitlines() == [
        "topic\tpartition\told\tnew",
        f"words\t0\t5\t{expected[W0]}",
        f"words\t1\t2\t{expected[W1]}",
    ]


def test_reset_offsets_of_chosen_partitions_after_the_command(
    broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    """TOPIC:PARTITIONS picks partitions; --broker may follow the command's name."""
    code = main(
        [
            *("groups", "reset-offsets", "g", "--topic", "words:1", "--to-earliest"),
            *("--broker", f"sqlite:///{broker.path}"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert committed(broker) == {W0: 5, W1: 0}


def test_dry_run_changes_nothing(broker: Broker, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = streams(
        broker,
        capsys,
        "groups",
        "reset-offsets",
        "g",
        "--topic",
        "words",
        "--to-latest",
        "--dry-run",
    )
    assert code == 0, err
    assert "words\t0\t5\t10" in out.splitlines()
    assert "dry run" in err
    assert committed(broker) == {W0: 5, W1: 2}


def test_a_group_with_live_members_is_refused(
    broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    broker.join_group("g", ["words"], session_timeout_ms=60_000)
    for extra in ([], ["--dry-run"]):
        code, out, err = streams(
            broker,
            capsys,
            "groups",
            "reset-offsets",
            "g",
            "--topic",
            "words",
            "--to-earliest",
            *extra,
        )
        assert code == 1 and out == ""
        assert err.startswith(
            "streams: error: cannot reset the offsets of group 'g': it has 1 live"
        )
        assert len(err.splitlines()) == 1
    code, _, err = streams(broker, capsys, "groups", "delete", "g")
    assert code == 1 and "cannot delete group 'g'" in err
    assert committed(broker) == {W0: 5, W1: 2}


def test_shift_needs_a_committed_offset(broker: Broker, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = streams(
        broker, capsys, "groups", "reset-offsets", "new", "--topic", "words", "--shift-by", "1"
    )
    assert code == 1 and "has no committed offset" in err


def test_unknown_topic_and_partition_are_one_line(
    broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    for topic, message in (("nope", "unknown topic 'nope'"), ("words:2", "not 2")):
        code, _, err = streams(
            broker, capsys, "groups", "reset-offsets", "g", "--topic", topic, "--to-earliest"
        )
        assert code == 1 and message in err and len(err.splitlines()) == 1


def test_delete_a_stopped_group(broker: Broker, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = streams(broker, capsys, "groups", "delete", "g")
    assert (code, out) == (0, "deleted group g\n"), err
    assert "g" not in broker.list_groups()
    assert committed(broker) == {}
    code, _, err = streams(broker, capsys, "groups", "delete", "g")
    assert code == 1 and err == "streams: error: unknown group 'g'\n"


def test_all_topics_are_those_the_group_committed(
    broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    broker.create_topic("other", 1)
    code, out, err = streams(
        broker, capsys, "groups", "reset-offsets", "g", "--all-topics", "--to-latest"
    )
    assert code == 0, err
    assert committed(broker) == {W0: 10, W1: 5}
    assert "other" not in out
    code, _, err = streams(
        broker, capsys, "groups", "reset-offsets", "new", "--all-topics", "--to-latest"
    )
    assert code == 1 and "group 'new' has no committed offsets" in err
