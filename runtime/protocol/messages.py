"""Request and response bodies, through `kio` (types generated from Kafka's JSON schemas).

The request header is read here by hand (so that an unknown API key or version can still be
answered); bodies are kio entities of the version the client sent. Handlers answer with plain
dicts, and `build` turns one into the response entity of that version: fields the version does
not have are dropped, fields the handler left out take their schema default (or zero, empty,
null), so one handler serves every version it is advertised for.

    header, body = parse_request(frame)                 # UnsupportedVersionError if unknown
    payload = encode_response(header, {"error_code": 0, ...})
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import functools
import io
import struct
import types
import typing
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

from kio.index import load_request_schema, load_response_schema
from kio.serial import entity_reader, entity_writer

from runtime.errors import StreamsError

# api key -> (min, max) versions this server implements and advertises (kio has no older ones
# of Produce and Fetch; newer ones need topic ids, KIP-848 or transactions v2)
SUPPORTED: dict[int, tuple[int, int]] = {
    0: (3, 9),  # Produce
    1: (4, 12),  # Fetch
    2: (1, 7),  # ListOffsets
    3: (0, 12),  # Metadata
    8: (2, 8),  # OffsetCommit
    9: (1, 7),  # OffsetFetch
    10: (0, 4),  # FindCoordinator
    11: (0, 7),  # JoinGroup
    12: (0, 4),  # Heartbeat
    13: (0, 4),  # LeaveGroup
    14: (0, 5),  # SyncGroup
    15: (0, 5),  # DescribeGroups
    16: (0, 4),  # ListGroups
    18: (0, 3),  # ApiVersions
    19: (2, 7),  # CreateTopics
    20: (1, 5),  # DeleteTopics
    21: (0, 2),  # DeleteRecords
    22: (0, 4),  # InitProducerId
    24: (0, 3),  # AddPartitionsToTxn
    25: (0, 3),  # AddOffsetsToTxn
    26: (0, 3),  # EndTxn
    28: (0, 3),  # TxnOffsetCommit
    32: (1, 4),  # DescribeConfigs
    42: (0, 2),  # DeleteGroups
    60: (0, 1),  # DescribeCluster
}
API_VERSIONS = 18
UNSUPPORTED_VERSION = 35


class ProtocolError(StreamsError):
    """A frame that cannot be a Kafka request: the connection is closed."""


class UnsupportedVersionError(StreamsError):
    """An API key or version this server does not implement."""

    def __init__(self, message: str, api_key: int, version: int, correlation_id: int) -> None:
        super().__init__(message)
        self.api_key = api_key
        self.version = version
        self.correlation_id = correlation_id


class RequestHeader(NamedTuple):
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    flexible: bool


_HEAD = struct.Struct(">hhi")


def _uvarint(data: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if pos >= len(data):
            raise ProtocolError("a truncated varint in the request header")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 35:
            raise ProtocolError("a varint longer than 5 bytes in the request header")


def parse_request(frame: bytes) -> tuple[RequestHeader, Any]:
    """The header and the body entity of one request frame (without its length prefix)."""
    if len(frame) < _HEAD.size + 2:
        raise ProtocolError(f"a request of {len(frame)} bytes is shorter than any header")
    api_key, version, correlation_id = _HEAD.unpack_from(frame)
    low_high = SUPPORTED.get(api_key)
    if low_high is None or not low_high[0] <= version <= low_high[1]:
        raise UnsupportedVersionError(
            f"API key {api_key} version {version} is not supported",
            api_key,
            version,
            correlation_id,
        )
    request_cls = _request_class(api_key, version)
    flexible = bool(request_cls.__flexible__)
    pos = _HEAD.size
    (size,) = struct.unpack_from(">h", frame, pos)
    pos += 2
    client_id = None
    if size >= 0:
        if pos + size > len(frame):
            raise ProtocolError("the client id runs past the end of the request")
        client_id = frame[pos : pos + size].decode("utf-8", "replace")
        pos += size
    if flexible:
        count, pos = _uvarint(frame, pos)
        for _ in range(count):
            _tag, pos = _uvarint(frame, pos)
            length, pos = _uvarint(frame, pos)
            pos += length
        if pos > len(frame):
            raise ProtocolError("tagged header fields run past the end of the request")
    header = RequestHeader(api_key, version, correlation_id, client_id, flexible)
    try:
        body, read = _reader(request_cls)(frame, pos)
    except Exception as exc:  # kio raises assorted errors on malformed input
        raise ProtocolError(f"a malformed {request_cls.__name__} v{version}: {exc}") from exc
    if pos + read > len(frame):
        raise ProtocolError(f"a {request_cls.__name__} v{version} runs past its frame")
    # bytes after the body are ignored, as Kafka does (librdkafka pads some requests)
    return header, body


def encode_response(header: RequestHeader, body: dict[str, Any]) -> bytes:
    """Response header and body, without the length prefix."""
    cls = _response_class(header.api_key, header.api_version)
    out = io.BytesIO()
    out.write(struct.pack(">i", header.correlation_id))
    if header.flexible and header.api_key != API_VERSIONS:  # ApiVersions: header v0 always
        out.write(b"\x00")
    _writer(cls)(out, build(cls, body))
    return out.getvalue()


def encode_error_response(correlation_id: int, error_code: int) -> bytes:
    """The answer to a request whose version we cannot parse: ApiVersions v0's layout
    (correlation id, error code, an empty API list), which every client reads."""
    return struct.pack(">ihi", correlation_id, error_code, 0)


def encode_api_versions_error(correlation_id: int) -> bytes:
    """ApiVersions v0 with UNSUPPORTED_VERSION and our versions, as Kafka answers a newer
    ApiVersions request than it knows (the client retries with a version we list)."""
    parts = [struct.pack(">ihi", correlation_id, UNSUPPORTED_VERSION, len(SUPPORTED))]
    parts += [struct.pack(">hhh", key, lo, hi) for key, (lo, hi) in sorted(SUPPORTED.items())]
    return b"".join(parts)


# --- kio plumbing -------------------------------------------------------------------------


@functools.cache
def _request_class(api_key: int, version: int) -> Any:
    return load_request_schema(api_key, version)


@functools.cache
def _response_class(api_key: int, version: int) -> Any:
    return load_response_schema(api_key, version)


@functools.cache
def _reader(cls: Any) -> Callable[[bytes, int], tuple[Any, int]]:
    return entity_reader(cls)


@functools.cache
def _writer(cls: Any) -> Callable[[io.BytesIO, Any], None]:
    return entity_writer(cls)


_Field = tuple[str, Callable[[Any], Any], bool]  # (name, converter, has default)


@functools.cache
def _fields(cls: Any) -> list[_Field]:
    hints = typing.get_type_hints(cls)
    out: list[_Field] = []
    for field in dataclasses.fields(cls):
        has_default = (
            field.default is not dataclasses.MISSING
            or field.default_factory is not dataclasses.MISSING
        )
        out.append((field.name, _converter(hints[field.name]), has_default))
    return out


def _strip_optional(hint: Any) -> tuple[Any, bool]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


def _converter(hint: Any) -> Callable[[Any], Any]:
    inner, optional = _strip_optional(hint)
    if typing.get_origin(inner) is tuple:
        element = _converter(typing.get_args(inner)[0])

        def convert_tuple(value: Any) -> Any:
            if value is None:
                return None if optional else ()
            return tuple(element(v) for v in value)

        return convert_tuple
    if dataclasses.is_dataclass(inner):

        def convert_entity(value: Any) -> Any:
            if value is None:
                return None if optional else build(inner, {})
            return build(inner, value) if isinstance(value, dict) else value

        return convert_entity
    if isinstance(inner, type) and issubclass(inner, datetime.timedelta):

        def convert_ms(value: Any) -> Any:
            if value is None:
                return None if optional else datetime.timedelta(0)
            if isinstance(value, datetime.timedelta):
                return value
            return datetime.timedelta(milliseconds=value)

        return convert_ms
    if isinstance(inner, type) and issubclass(inner, datetime.datetime):

        def convert_time(value: Any) -> Any:
            if value is None or value < 0:
                return None
            return datetime.datetime.fromtimestamp(value / 1000, datetime.UTC)

        return convert_time
    if isinstance(inner, type) and issubclass(inner, enum.Enum):
        enum_type: Any = inner

        def convert_enum(value: Any) -> Any:
            return enum_type(0 if value is None else value)

        return convert_enum
    zero: Any = None
    if isinstance(inner, type):
        if issubclass(inner, bool):
            zero = False
        elif issubclass(inner, int):
            zero = 0
        elif issubclass(inner, str):
            zero = ""
        elif issubclass(inner, bytes):
            zero = b""
        elif issubclass(inner, uuid.UUID):
            zero = uuid.UUID(int=0)
    default = None if optional else zero

    def convert_plain(value: Any) -> Any:
        return default if value is None else value

    return convert_plain


def build(cls: Any, data: dict[str, Any]) -> Any:
    """An entity of `cls` from a dict: unknown keys are dropped, missing ones defaulted."""
    kwargs = {}
    for name, convert, has_default in _fields(cls):
        if name in data:
            kwargs[name] = convert(data[name])
        elif not has_default:
            kwargs[name] = convert(None)
    return cls(**kwargs)


def millis(value: Any) -> int:
    """A kio timedelta or datetime field as integer milliseconds (or the int it already is)."""
    if isinstance(value, datetime.timedelta):
        return round(value.total_seconds() * 1000)
    if isinstance(value, datetime.datetime):
        return round(value.timestamp() * 1000)
    return int(value)
