"""`streams send` (timestamps, key/value formats, an app's codecs, a file that is not UTF-8,
progress) and `streams tail`'s ISO times, in process against an SQLite broker file."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.broker import Broker
from runtime.types import TopicPartition
from streams import cli

APP = """
import dataclasses
import streams

app = streams.App("shop")
orders = app.topic("orders", partitions=1, key_type="json", value_type="json")
names = app.topic("names", partitions=1, key_type=str, value_type=bytes)
"""


@pytest.fixture
def url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STREAMS_BROKER", raising=False)
    (tmp_path / "shop.py").write_text(APP)
    monkeypatch.syspath_prepend(str(tmp_path))
    url = f"sqlite:///{tmp_path}/b.db"
    for topic in ("orders", "names"):
        assert cli.main(["--broker", url, "topics", "create", topic]) == 0
    return url


def records(url: str, topic: str) -> list[tuple[bytes | None, bytes | None, int]]:
    broker = Broker(url.removeprefix("sqlite:///"))
    try:
        fetched = broker.fetch([(TopicPartition(topic, 0), 0)])[TopicPartition(topic, 0)]
        return [(r.key, r.value, r.timestamp) for r in fetched.records]
    finally:
        broker.close()


def send(url: str, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = cli.main(["send", *args, "--broker", url])
    return code, capsys.readouterr().err


def test_timestamp_as_ms_or_iso(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert send(url, capsys, "orders", "1", "--timestamp", "1700000000123")[0] == 0
    assert send(url, capsys, "orders", "2", "--timestamp", "2023-11-14T22:13:20.5Z")[0] == 0
    assert [ts for *_, ts in records(url, "orders")] == [1_700_000_000_123, 1_700_000_000_500]
    code, err = send(url, capsys, "orders", "3", "--timestamp", "yesterday")
    assert code == 1 and err.startswith("streams: error: bad --timestamp 'yesterday'")


def test_formats(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ("--key", '["a", 1]', "--key-format", "json", "--value-format", "json")
    assert send(url, capsys, "orders", '{"n":  1}', *args)[0] == 0
    assert records(url, "orders") == [(b'["a",1]', b'{"n":1}', records(url, "orders")[0][2])]
    code, err = send(url, capsys, "orders", "not json", "--value-format", "json")
    assert code == 1 and "VALUE is not JSON" in err and len(err.splitlines()) == 1


def test_an_apps_codecs_encode_the_key_and_value(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--key ada` to a JSON-keyed topic is the JSON string "ada"; JSON text stays JSON."""
    assert send(url, capsys, "orders", '{"n": 1}', "--key", "ada", "--app", "shop:app")[0] == 0
    assert send(url, capsys, "orders", "plain", "--key", "[1, 2]", "--app", "shop:app")[0] == 0
    assert send(url, capsys, "names", "raw", "--key", "ada", "--app", "shop:app")[0] == 0
    assert [(k, v) for k, v, _ in records(url, "orders")] == [
        (b'"ada"', b'{"n":1}'),
        (b"[1,2]", b'"plain"'),
    ]
    assert [(k, v) for k, v, _ in records(url, "names")] == [(b"ada", b"raw")]
    code, err = send(url, capsys, "nope", "x", "--app", "shop:app")
    assert code == 1 and "declares no topic 'nope'" in err


def test_a_file_that_is_not_utf8(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad.txt").write_bytes(b"fine\n\xff\xfe\n")
    code, err = send(url, capsys, "names", "--file", "bad.txt")
    assert code == 1
    assert err == (
        "streams: error: line 2 of bad.txt is not UTF-8 text; send it as is with "
        "--value-format bytes\n"
    )
    assert send(url, capsys, "names", "--file", "bad.txt", "--value-format", "bytes")[0] == 0
    assert [v for _, v, _ in records(url, "names")][-2:] == [b"fine", b"\xff\xfe"]


def test_a_long_file_send_shows_progress(
    url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cli, "PROGRESS_INTERVAL_S", 0.0)
    (tmp_path / "many.txt").write_text("".join(f"{i}\n" for i in range(3000)))
    assert cli.main(["send", "names", "--file", "many.txt", "--broker", url]) == 0
    out, err = capsys.readouterr()
    assert out == "sent 3000 records to names\n"
    assert err.splitlines() == [f"sent {n} records ..." for n in (1000, 2000, 3000)]


def test_tail_prints_iso_times(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    send(url, capsys, "names", "v", "--key", "k", "--timestamp", "1700000000123")
    assert cli.main(["tail", "names", "--from-beginning", "--max", "1", "--broker", url]) == 0
    assert capsys.readouterr().out == "0:0\t2023-11-14T22:13:20.123Z\tk\tv\n"


def test_broker_and_debug_after_any_command(url: str) -> None:
    """--debug after the command shows the traceback (here: raises) instead of one line."""
    with pytest.raises(Exception, match="unknown topic"):
        cli.main(["topics", "describe", "nope", "--broker", url, "--debug"])
