"""Codecs turn keys and values into bytes and back, chosen by name or by type.

codec = get_codec("json")          # orjson: dict, list, str, int, float, bool, None
codec = get_codec(str)             # UTF-8 text
codec = get_codec(bytes)           # raw bytes, unchanged
codec = get_codec(Order)           # a dataclass, as an orjson object
register_codec("upper", Codec(lambda v: v.upper().encode(), lambda b: b.decode()))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import orjson

from runtime.errors import ConfigurationError


class DecodeError(ValueError):
    """Raised by a codec when bytes cannot be decoded."""


@dataclasses.dataclass(frozen=True)
class Codec:
    name: str
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any]


def _json_decode(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not JSON: {exc}") from exc


def _str_encode(value: Any) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"the str codec encodes str, not {type(value).__name__}")
    return value.encode()


def _str_decode(data: bytes) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise DecodeError(f"not UTF-8: {exc}") from exc


def _raw_encode(value: Any) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError(f"the raw codec encodes bytes, not {type(value).__name__}")
    return value


JSON = Codec("json", orjson.dumps, _json_decode)
STR = Codec("str", _str_encode, _str_decode)
RAW = Codec("raw", _raw_encode, bytes)

_registry: dict[str, Codec] = {"json": JSON, "orjson": JSON, "str": STR, "raw": RAW}


def register_codec(name: str, codec: Codec) -> None:
    """Make `codec` available as `key_type=name` / `value_type=name`."""
    _registry[name] = codec


def dataclass_codec(cls: type) -> Codec:
    """orjson for a dataclass: encoded as an object, decoded back into `cls`."""

    def decode(data: bytes) -> Any:
        fields = _json_decode(data)
        if not isinstance(fields, dict):
            raise DecodeError(f"expected a JSON object for {cls.__name__}")
        try:
            return cls(**fields)
        except TypeError as exc:
            raise DecodeError(f"cannot build {cls.__name__}: {exc}") from exc

    def encode(value: Any) -> bytes:
        if not isinstance(value, cls):
            raise TypeError(f"expected {cls.__name__}, not {type(value).__name__}")
        return orjson.dumps(value)

    return Codec(f"dataclass:{cls.__qualname__}", encode, decode)


def get_codec(spec: str | type | Codec | None) -> Codec:
    """The codec for a name, a type (str, bytes, a dataclass; anything else: json) or None."""
    if spec is None:
        return JSON
    if isinstance(spec, Codec):
        return spec
    if isinstance(spec, str):
        try:
            return _registry[spec]
        except KeyError:
            raise ConfigurationError(
                f"unknown codec {spec!r}: use one of {sorted(_registry)} or register_codec()"
            ) from None
    if spec is str:
        return STR
    if spec is bytes:
        return RAW
    if dataclasses.is_dataclass(spec):
        return dataclass_codec(spec)
    return JSON
