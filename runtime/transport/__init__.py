"""One async interface to a broker, chosen by URL scheme.

broker = connect("sqlite:///app.db")     # a file beside the app, shared by processes
broker = connect("memory://")            # private, in this process (tests)
broker = connect("memory://shared")      # one per name, in this process
broker = connect("kafka://host:9092")    # Apache Kafka (pip install 'streams[kafka]')
broker = connect("kafka://host:9092?security.protocol=SASL_SSL",
                 client_config={"sasl.password": secret})   # librdkafka client settings
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from runtime.errors import ConfigurationError
from runtime.transport.base import (
    READ_COMMITTED,
    READ_UNCOMMITTED,
    Consumer,
    Producer,
    RebalanceCallback,
    Transport,
)

# scheme -> "module:attribute" of a Transport factory taking the URL; imported on first use so
# that the Kafka client is needed only by those who use it.
_BACKENDS: dict[str, str] = {
    "sqlite": "runtime.transport.embedded:EmbeddedTransport",
    "memory": "runtime.transport.embedded:EmbeddedTransport",
    "kafka": "runtime.transport.kafka:KafkaTransport",
}


def register_backend(scheme: str, factory: str) -> None:
    """Serve `scheme://` URLs with `factory` ("package.module:Class")."""
    _BACKENDS[scheme] = factory


def connect(url: str, client_config: Mapping[str, Any] | None = None) -> Transport:
    """A transport for `url`; see the module docstring for the schemes. `client_config`
    (Kafka only) adds librdkafka client settings, e.g. credentials that must not be in a URL."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"bad broker URL {url!r}: expected sqlite:///path.db, memory:// or kafka://host:port"
        )
    scheme = url.split("://", 1)[0]
    target = _BACKENDS.get(scheme)
    if target is None:
        raise ConfigurationError(
            f"unknown broker URL scheme {scheme!r} in {url!r}: use one of "
            + ", ".join(f"{s}://" for s in sorted(_BACKENDS))
        )
    module_name, attribute = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigurationError(
            f"the {scheme}:// back end is not available ({exc.name} is missing); "
            f"for kafka:// install it with: pip install 'streams[kafka]'"
        ) from exc
    factory: Callable[..., Transport] = getattr(module, attribute)
    if client_config is None:
        return factory(url)
    try:
        return factory(url, client_config=client_config)
    except TypeError:
        raise ConfigurationError(
            f"client_config is not used by the {scheme}:// back end (only by kafka://)"
        ) from None


__all__ = [
    "READ_COMMITTED",
    "READ_UNCOMMITTED",
    "Consumer",
    "Producer",
    "RebalanceCallback",
    "Transport",
    "connect",
    "register_backend",
]
