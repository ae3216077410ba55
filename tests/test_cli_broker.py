"""Which broker each command uses: `--broker` (before or after the command) > $STREAMS_BROKER >
the app's `broker=` > sqlite:///streams.db; for commands without an app, the same without the
app's. Each candidate is a broker file of its own in the test's directory, and the test looks
at which one the command used."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from runtime.broker import Broker
from runtime.broker.core import ProduceBatch

ROOT = Path(__file__).resolve().parent.parent
APPS = """
import streams

{name} = streams.App("{name}"{broker})
source = {name}.topic("source-{name}", partitions=1)
counts = {name}.table("counts", default=int, partitions=1)


@{name}.stream(source)
async def count(stream):
    async for value in stream:
        counts[value] += 1
"""
# (arguments, environment) -> the file the command must use; `named` names its broker.
CASES = [
    pytest.param(
        ["--broker", "sqlite:///cli.db"],
        {"STREAMS_BROKER": "sqlite:///env.db"},
        "cli",
        id="--broker before",
    ),
    pytest.param(
        ["@", "--broker", "sqlite:///cli.db"],
        {"STREAMS_BROKER": "sqlite:///env.db"},
        "cli",
        id="--broker after",
    ),
    pytest.param([], {"STREAMS_BROKER": "sqlite:///env.db"}, "env", id="$STREAMS_BROKER"),
    pytest.param([], {}, "app", id="the app's broker="),
]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "named.py").write_text(
        APPS.format(name="named", broker=', broker="sqlite:///app.db"')
    )
    (tmp_path / "plain.py").write_text(APPS.format(name="plain", broker=""))
    return tmp_path


def command(args: list[str], *words: str) -> list[str]:
    """`streams [options] WORDS [options]`: "@" in `args` puts the options after WORDS."""
    if args and args[0] == "@":
        return [*words, *args[1:]]
    return [*args, *words]


def streams(
    home: Path, env: dict[str, str], *args: str, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAMS_")}
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        cwd=home,
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
        **kwargs,  # type: ignore[arg-type]
    )


def topics_in(path: Path) -> set[str]:
    if not path.exists():
        return set()
    broker = Broker(str(path))
    try:
        return {t.name for t in broker.list_topics()}
    finally:
        broker.close()


@pytest.mark.parametrize(("args", "env", "expected"), CASES)
def test_commands_without_an_app(
    home: Path, args: list[str], env: dict[str, str], expected: str
) -> None:
    """No app: --broker > $STREAMS_BROKER > sqlite:///streams.db ("app" here: the default)."""
    target = {"cli": "cli.db", "env": "env.db", "app": "streams.db"}[expected]
    result = streams(home, env, *command(args, "topics", "create", "here"))
    assert result.returncode == 0, result.stderr
    assert {p.name for p in home.glob("*.db")} == {target}
    listed = streams(home, env, *command(args, "topics", "list"))
    assert listed.stdout.startswith("here\t"), listed


@pytest.mark.parametrize(("args", "env", "expected"), CASES)
def test_table_and_send_with_an_app(
    home: Path, args: list[str], env: dict[str, str], expected: str
) -> None:
    """Each candidate file holds the table's changelog with a row naming the file:
    `streams table` prints the row of the one it used; `send --app` writes to it."""
    for name in ("cli", "env", "app", "streams"):
        broker = Broker(str(home / f"{name}.db"))
        broker.create_topic("named-counts-changelog", 1, compacted=True)
        batch = ProduceBatch(
            "named-counts-changelog", 0, 0, [b'"where"'], [orjson.dumps(name)], [0]
        )
        broker.produce(-1, -1, [batch])
        broker.create_topic("source-named", 1)
        broker.close()
    result = streams(home, env, *command(args, "table", "named:named", "counts"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f'"where"\t"{expected}"\n'
    sent = streams(home, env, *command(args, "send", "source-named", "x", "--app", "named:named"))
    assert sent.returncode == 0, sent.stderr
    for name in ("cli", "env", "app", "streams"):
        broker = Broker(str(home / f"{name}.db"))
        end = broker.partition_info("source-named", 0).high_watermark
        broker.close()
        assert end == (1 if name == expected else 0), name


def test_an_app_without_a_broker_uses_streams_db(home: Path) -> None:
    result = streams(home, {}, "send", "source-plain", "x", "--app", "plain:plain")
    assert result.returncode == 1 and "unknown topic 'source-plain'" in result.stderr
    assert streams(home, {}, "topics", "create", "source-plain").returncode == 0
    assert streams(home, {}, "send", "source-plain", "x", "--app", "plain:plain").returncode == 0
    assert {p.name for p in home.glob("*.db")} == {"streams.db"}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        *CASES,
        pytest.param([], {}, "streams", id="default: sqlite:///streams.db"),
    ],
)
def test_worker(home: Path, args: list[str], env: dict[str, str], expected: str) -> None:
    """The worker processes create the app's topics in the broker they use, and the
    supervisor logs that broker when it starts."""
    app = "plain:plain" if expected == "streams" else "named:named"
    source = f"source-{app.split(':')[0]}"
    url = {"cli": "sqlite:///cli.db", "env": "sqlite:///env.db", "app": "sqlite:///app.db"}.get(
        expected, "sqlite:///streams.db"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAMS_")}
    worker = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", *command(args, "worker", app)],
        cwd=home,
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while source not in topics_in(home / url.removeprefix("sqlite:///")):
            assert time.monotonic() < deadline and worker.poll() is None, "no worker started"
            time.sleep(0.2)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert f"on broker {url}" in err
    assert {p.name for p in home.glob("*.db")} == {url.removeprefix("sqlite:///")}


def test_the_logged_url_hides_passwords() -> None:
    from streams.settings import redacted

    assert (
        redacted("kafka://ann:hunter2@h1:9092,h2:9092?sasl.password=x&sasl.username=ann&timeout=5")
        == "kafka://ann:***@h1:9092,h2:9092?sasl.password=***&sasl.username=ann&timeout=5"
    )
    assert (
        redacted("sqlite:///streams.db?synchronous=full") == "sqlite:///streams.db?synchronous=full"
    )
    assert redacted("memory://") == "memory://"


def test_a_table_never_run_on_the_broker_names_it(home: Path) -> None:
    result = streams(home, {}, "table", "named:named", "counts")
    assert result.returncode == 1
    assert result.stderr == (
        "streams: error: table 'counts' has no changelog ('named-counts-changelog') on "
        "sqlite:///app.db: no worker of app 'named' ran on this broker (give --broker or "
        "$STREAMS_BROKER if it ran elsewhere)\n"
    )
