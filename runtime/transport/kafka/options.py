"""How a `kafka://` URL and client settings become librdkafka configurations.

    kafka://broker1:9092,broker2:9092
    kafka://broker1:9092?security.protocol=SASL_SSL&sasl.mechanisms=PLAIN&replication_factor=3

Query parameters are librdkafka client settings, passed to every client as given (security,
SASL, TLS, socket and fetch tuning, `debug`: see librdkafka's CONFIGURATION.md; librdkafka
rejects unknown ones), except for ours:

| option                | default | meaning                                                   |
|-----------------------|---------|-----------------------------------------------------------|
| `replication_factor`  | 1       | replicas of topics the app creates (3 in production)      |
| `min_insync_replicas` | unset   | `min.insync.replicas` of those topics (2 in production)   |
| `timeout`             | 5.0     | seconds to wait for the cluster before BrokerUnavailable  |
| `static_membership`   | true    | members with an `instance_id` join as static members      |
|                       |         | (`group.instance.id`); `false` for brokers that mishandle |
|                       |         | them (Tansu 0.6 keeps a replaced static leader: the group |
|                       |         | then never completes a rebalance)                         |

Secrets do not belong in a URL (it is logged): pass them as `client_config`, e.g.
`KafkaTransport(url, client_config={"sasl.password": os.environ["KAFKA_PASSWORD"]})` or
`connect(url, client_config={...})`; it takes the same keys and wins over the URL.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from runtime.errors import ConfigurationError

DEFAULT_TIMEOUT_S = 5.0

# Settings streams decides itself: exactly-once and keyed placement depend on them.
MANAGED = frozenset(
    {
        "bootstrap.servers",
        "group.id",
        "group.instance.id",
        "transactional.id",
        "enable.idempotence",
        "isolation.level",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "partitioner",
        "partition.assignment.strategy",
    }
)

# Our assignor names -> librdkafka's. "copartitioned" needs partition p of every subscribed
# topic on one member: the range assignor does that for topics with equal partition counts
# (what Kafka Streams relies on too); it is eager (revoke all, then assign all).
ASSIGNORS = {"copartitioned": "range", "sticky": "cooperative-sticky", "range": "range"}


@dataclasses.dataclass(frozen=True)
class KafkaOptions:
    """A parsed `kafka://` URL plus client settings."""

    bootstrap: str
    client_config: Mapping[str, str]
    replication_factor: int = 1
    min_insync_replicas: int | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    static_membership: bool = True

    @classmethod
    def from_url(cls, url: str, client_config: Mapping[str, Any] | None = None) -> KafkaOptions:
        parts = urlsplit(url)
        if parts.scheme != "kafka" or not parts.netloc or parts.path not in ("", "/"):
            raise ConfigurationError(
                f"bad Kafka URL {url!r}: expected kafka://host:port[,host:port][?options]"
            )
        settings: dict[str, str] = {}
        ours: dict[str, str] = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            (ours if key in OUR_OPTIONS else settings)[key] = value
        settings.update({k: str(v) for k, v in (client_config or {}).items()})
        managed = sorted(MANAGED & set(settings))
        if managed:
            raise ConfigurationError(
                f"client settings {managed} are set by streams itself and cannot be given"
            )
        return cls(parts.netloc, settings, **_our_options(ours, url))

    def base(self) -> dict[str, Any]:
        """Settings every client gets."""
        return {
            "bootstrap.servers": self.bootstrap,
            "logger": logging.getLogger("runtime.transport.kafka.librdkafka"),
            **self.client_config,
        }

    def topic_config(
        self, compacted: bool, retention_ms: int | None, retention_bytes: int | None
    ) -> dict[str, str]:
        """Explicit configs for a new topic: a broker's defaults (7 days of retention) would
        not mean what `None` means here (keep everything), and some brokers report only the
        configs given at creation."""
        config = {
            "cleanup.policy": "compact" if compacted else "delete",
            "retention.ms": str(-1 if retention_ms is None else retention_ms),
            "retention.bytes": str(-1 if retention_bytes is None else retention_bytes),
        }
        if self.min_insync_replicas is not None:
            config["min.insync.replicas"] = str(self.min_insync_replicas)
        return config


# URL option -> (KafkaOptions field, parser)
def _boolean(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0"):
        raise ValueError(text)
    return text.lower() in ("true", "1")


OUR_OPTIONS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "replication_factor": ("replication_factor", int),
    "min_insync_replicas": ("min_insync_replicas", int),
    "timeout": ("timeout_s", float),
    "static_membership": ("static_membership", _boolean),
}


def _our_options(options: dict[str, str], url: str) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for key, text in options.items():
        name, kind = OUR_OPTIONS[key]
        try:
            value = kind(text)
        except ValueError:
            raise ConfigurationError(f"bad {key}={text!r} in {url!r}") from None
        if not isinstance(value, bool) and value <= 0:
            raise ConfigurationError(f"{key} must be positive, not {text!r}")
        parsed[name] = value
    return parsed
