"""App settings: each declared once, with its default, its environment variable and its doc.

    settings = Settings.resolve("wordcount", {"commit_interval": 0.5})
    settings.broker          # $STREAMS_BROKER, else the argument, else sqlite:///streams.db
    settings.state_dir       # $STREAMS_STATE_DIR, else the argument, else beside the broker

An environment variable overrides the value given in code, so one app can be pointed at another
broker or run at-least-once without editing it. The broker an app's commands use is, first to
last: `--broker` on the command line, $STREAMS_BROKER, `App(broker=...)`, sqlite:///streams.db
(the default of every `streams` command, so the app and the commands without an app agree).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from runtime.errors import ConfigurationError
from runtime.transport import Transport, connect
from runtime.worker.failures import DECODE_POLICIES, POLICIES
from runtime.worker.store import MEMORY

DEFAULT_BROKER = "sqlite:///streams.db"
GUARANTEES = ("exactly_once", "at_least_once")


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    env: str
    default: Callable[[str], Any]  # from the app id
    parse: Callable[[str], Any]
    doc: str
    # a default that depends on settings resolved before it: (app id, those values)
    derive: Callable[[str, Mapping[str, Any]], Any] | None = None


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if not math.isfinite(value) or value <= 0:
            raise ValueError("must be a positive, finite number")
        return value

    return parse


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def _json_object(text: str) -> dict[str, Any] | None:
    value = json.loads(text)
    if value is not None and not isinstance(value, dict):
        raise ValueError("must be a JSON object of client settings")
    return value


def _text(value: Any) -> str:
    """A setting given in code as the text its parser reads (mappings as JSON)."""
    return json.dumps(dict(value)) if isinstance(value, Mapping) else str(value)


def _topic_name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", text) or text in (".", ".."):
        raise ValueError("must be a topic name: 1-249 characters of [A-Za-z0-9._-]")
    return text


def default_state_dir(app_id: str, broker: str) -> str:
    """Where an app's local stores live unless told: a function of the broker and the app,
    never of the working directory, so every worker of the app on this machine shares one
    state directory (and its slot locks) wherever it was started.

    - sqlite:///path/x.db: `<directory of x.db>/<app>-state`, beside the broker file;
    - memory://: in memory (the broker and its changelogs end with the process anyway);
    - kafka://... (or any other): `$XDG_CACHE_HOME/streams/<app>-<hash of the URL>`
      (`~/.cache/...` without it).
    """
    scheme = broker.partition("://")[0]
    if scheme == "memory":
        return MEMORY
    if scheme == "sqlite":
        path = broker.split("://", 1)[1].split("?", 1)[0][1:]
        return os.path.join(os.path.dirname(os.path.abspath(path)), f"{app_id}-state")
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    digest = hashlib.sha256(broker.encode()).hexdigest()[:12]
    return os.path.join(cache, "streams", f"{app_id}-{digest}")


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"must be one of {choices}")
        return text

    return parse


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "broker",
        "STREAMS_BROKER",
        lambda app: DEFAULT_BROKER,
        str,
        "Broker URL: sqlite:///path.db (default sqlite:///streams.db, in the current "
        "directory, as for every `streams` command), memory://, kafka://...",
    ),
    Setting(
        "broker_config",
        "STREAMS_BROKER_CONFIG",
        lambda app: None,
        _json_object,
        "Kafka client settings (librdkafka names, e.g. security.protocol, sasl.username, "
        "ssl.ca.location) as a dict in code or a JSON object in the environment; used by "
        "kafka:// brokers only.",
    ),
    Setting(
        "processing_guarantee",
        "STREAMS_PROCESSING_GUARANTEE",
        lambda app: "exactly_once",
        _choice(GUARANTEES),
        "exactly_once: outputs, table changes and offsets commit in one transaction; "
        "at_least_once: no transaction, a crash can repeat work since the last commit.",
    ),
    Setting(
        "commit_interval",
        "STREAMS_COMMIT_INTERVAL",
        lambda app: 0.1,
        _positive(float),
        "Seconds between commits (Kafka Streams uses 0.1 under exactly-once).",
    ),
    Setting(
        "commit_every",
        "STREAMS_COMMIT_EVERY",
        lambda app: 100_000,
        _positive(int),
        "Commit at the latest after this many events, even within the interval.",
    ),
    Setting(
        "state_dir",
        "STREAMS_STATE_DIR",
        lambda app: None,
        str,
        "Directory of the local table stores (a cache of the changelogs) and worker slots; "
        "default: derived from the broker URL and the app id (beside an sqlite:// file).",
        derive=lambda app, values: default_state_dir(app, values["broker"]),
    ),
    Setting(
        "max_poll_records",
        "STREAMS_MAX_POLL_RECORDS",
        lambda app: 2000,
        _positive(int),
        "Records fetched per poll.",
    ),
    Setting(
        "on_error",
        "STREAMS_ON_ERROR",
        lambda app: "fail",
        _choice(POLICIES),
        "A record that cannot be processed (undecodable, or its agent or group_by raises): "
        "'fail' stops the worker naming topic[partition]@offset, 'skip' logs and counts it, "
        "'dead_letter' sends it unchanged to the dead-letter topic. Agents may override it "
        "(@app.stream(..., on_error=...)).",
    ),
    Setting(
        "on_decode_error",
        "STREAMS_ON_DECODE_ERROR",
        lambda app: None,
        _choice(DECODE_POLICIES),
        "The policy for records the codecs cannot decode, if not on_error's: 'fail' (or "
        "'stop'), 'skip' or 'dead_letter'.",
    ),
    Setting(
        "dead_letter_topic",
        "STREAMS_DEAD_LETTER_TOPIC",
        lambda app: f"{app}-dead-letter",
        _topic_name,
        "Where on_error='dead_letter' sends records (unless an agent names its own).",
    ),
    Setting(
        "transaction_timeout_ms",
        "STREAMS_TRANSACTION_TIMEOUT_MS",
        lambda app: 10_000,
        _positive(int),
        "Transaction timeout; a killed worker's transaction is aborted "
        "after it, or at once when the worker restarts.",
    ),
    Setting(
        "session_timeout_ms",
        "STREAMS_SESSION_TIMEOUT_MS",
        lambda app: 10_000,
        _positive(int),
        "A worker that misses heartbeats this long leaves the group.",
    ),
    Setting(
        "table_standby_replicas",
        "STREAMS_TABLE_STANDBY_REPLICAS",
        lambda app: 0,
        _non_negative_int,
        "Other workers that keep a warm copy of each table partition (tailing its changelog "
        "into their store), so a takeover restores only the tail.",
    ),
    Setting(
        "table_cache_size",
        "STREAMS_TABLE_CACHE_SIZE",
        lambda app: 100_000,
        _positive(int),
        'Keys of each store-backed table (app.table(..., store="local")) a worker keeps '
        "decoded in memory (an LRU); the rows themselves stay in the local store.",
    ),
    Setting(
        "default_partitions",
        "STREAMS_DEFAULT_PARTITIONS",
        lambda app: 4,
        _positive(int),
        "Partitions of topics created without an explicit count.",
    ),
)
_BY_NAME = {s.name: s for s in SETTINGS}


@dataclasses.dataclass(frozen=True)
class Settings:
    broker: str
    broker_config: dict[str, Any] | None
    processing_guarantee: str
    commit_interval: float
    commit_every: int
    state_dir: str
    max_poll_records: int
    on_error: str
    on_decode_error: str | None
    dead_letter_topic: str
    transaction_timeout_ms: int
    session_timeout_ms: int
    table_standby_replicas: int
    table_cache_size: int
    default_partitions: int

    def override(self, **changes: Any) -> Settings:
        """A copy with `changes`, each validated like a setting given in code."""
        unknown = set(changes) - set(_BY_NAME)
        if unknown:
            raise ConfigurationError(
                f"unknown settings {sorted(unknown)}; known: {sorted(_BY_NAME)}"
            )
        parsed = {}
        for name, value in changes.items():
            try:
                parsed[name] = _BY_NAME[name].parse(_text(value))
            except ValueError as exc:
                raise ConfigurationError(f"bad {name}={value!r}: {exc}") from exc
        if "broker" in parsed and "state_dir" not in parsed and self.state_dir != MEMORY:
            # a derived state dir follows the broker (the stores are caches of its topics)
            app_id = os.path.basename(self.state_dir).rsplit("-", 1)[0]  # <app>-state|<hash>
            if self.state_dir == default_state_dir(app_id, self.broker):
                parsed["state_dir"] = default_state_dir(app_id, parsed["broker"])
        return dataclasses.replace(self, **parsed)

    def connect(self) -> Transport:
        """A transport to the broker, with the client settings where they apply."""
        kafka = self.broker.startswith("kafka://")
        return connect(self.broker, self.broker_config if kafka else None)

    @property
    def exactly_once(self) -> bool:
        return self.processing_guarantee == "exactly_once"

    @classmethod
    def resolve(
        cls, app_id: str, given: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> Settings:
        environ = os.environ if environ is None else environ
        unknown = set(given) - set(_BY_NAME)
        if unknown:
            raise ConfigurationError(
                f"unknown settings {sorted(unknown)}; known: {sorted(_BY_NAME)}"
            )
        values: dict[str, Any] = {}
        for setting in SETTINGS:
            text = environ.get(setting.env)
            source = f"${setting.env}"
            if text is None:
                if given.get(setting.name) is None:
                    derive = setting.derive
                    values[setting.name] = (
                        setting.default(app_id) if derive is None else derive(app_id, values)
                    )
                    continue
                text, source = _text(given[setting.name]), setting.name
            try:
                values[setting.name] = setting.parse(text)
            except ValueError as exc:
                raise ConfigurationError(f"bad {source}={text!r}: {exc}") from exc
        return cls(**values)


SECRET_WORDS = ("password", "secret", "token", "key")


def redacted(url: str) -> str:
    """`url` fit for a log line: a password in it (user:password@, or a query option whose
    name says password/secret/token/key) replaced by ***.

    >>> redacted("kafka://u:hunter2@h:9092?sasl.password=x&timeout=5")
    'kafka://u:***@h:9092?sasl.password=***&timeout=5'
    """
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}{':***' if colon else ''}@{hosts}"
    query = "&".join(
        f"{k}=***" if any(w in k.lower() for w in SECRET_WORDS) else f"{k}={v}"
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    )
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
