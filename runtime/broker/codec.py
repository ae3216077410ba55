"""The payload of one stored record batch: columns packed into one blob.

A batch is the unit of storage (one row per batch, as Kafka's log is a sequence of batches). Its
records are stored column by column so that encoding and decoding are a few C-level calls:

    crc       u32: CRC-32 of everything after it (a flipped bit is an error, not bad data)
    header    <B flags> <i32 count> <u32 keys bytes> <u32 values bytes>
    key lengths    count x i32 (-1 = null)
    value lengths  count x i32 (-1 = null)
    timestamps     count x i64
    offset deltas  count x i32      only when FLAG_OFFSETS (a compacted batch has gaps)
    headers        u32 n + n bytes  only when FLAG_HEADERS (orjson; values latin-1 strings)
    keys, values   concatenated

    blob = encode_batch(keys, values, timestamps)
    keys, values, timestamps, headers, deltas = decode_batch(blob)
"""

from __future__ import annotations

import struct
import sys
import zlib
from array import array
from collections.abc import Sequence
from itertools import accumulate

import orjson

from runtime.errors import DatabaseError
from runtime.types import Headers

# (keys, values, timestamps, headers or None, offset deltas or None)
DecodedBatch = tuple[
    list[bytes | None], list[bytes | None], list[int], list[Headers | None] | None, list[int] | None
]

FLAG_OFFSETS = 0x01
FLAG_HEADERS = 0x02
_HEADER = struct.Struct("<BiII")
_CRC = struct.Struct("<I")
_BIG_ENDIAN = sys.byteorder == "big"


def _pack(typecode: str, values: Sequence[int]) -> bytes:
    column = array(typecode, values)
    if _BIG_ENDIAN:
        column.byteswap()
    return column.tobytes()


def _unpack(typecode: str, blob: bytes, start: int, count: int) -> tuple[array[int], int]:
    column = array(typecode)
    end = start + column.itemsize * count
    column.frombytes(blob[start:end])
    if _BIG_ENDIAN:
        column.byteswap()
    return column, end


def _lengths(items: Sequence[bytes | None]) -> list[int]:
    return [-1 if item is None else len(item) for item in items]


def _split(data: bytes, lengths: array[int]) -> list[bytes | None]:
    if not lengths:
        return []
    if min(lengths) >= 0:
        ends = list(accumulate(lengths))
        return [data[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]
    out: list[bytes | None] = []
    pos = 0
    for length in lengths:
        if length < 0:
            out.append(None)
        else:
            out.append(data[pos : pos + length])
            pos += length
    return out


def encode_batch(
    keys: Sequence[bytes | None],
    values: Sequence[bytes | None],
    timestamps: Sequence[int],
    headers: Sequence[Headers | None] | None = None,
    offset_deltas: Sequence[int] | None = None,
) -> bytes:
    """Pack parallel columns of one batch into a blob."""
    flags = 0
    parts = [
        b"",
        _pack("i", _lengths(keys)),
        _pack("i", _lengths(values)),
        _pack("q", timestamps),
    ]
    if offset_deltas is not None:
        flags |= FLAG_OFFSETS
        parts.append(_pack("i", offset_deltas))
    if headers is not None and any(h is not None for h in headers):
        flags |= FLAG_HEADERS
        encoded = orjson.dumps(
            [None if h is None else [[k, v.decode("latin-1")] for k, v in h] for h in headers]
        )
        parts.append(struct.pack("<I", len(encoded)) + encoded)
    key_data = b"".join([k for k in keys if k is not None])
    value_data = b"".join([v for v in values if v is not None])
    parts[0] = _HEADER.pack(flags, len(keys), len(key_data), len(value_data))
    parts += [key_data, value_data]
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    return b"".join([_CRC.pack(crc), *parts])


def decode_batch(blob: bytes) -> DecodedBatch:
    """Unpack a blob into (keys, values, timestamps, headers or None, offset deltas or None)."""
    try:
        (crc,) = _CRC.unpack_from(blob)
        if zlib.crc32(memoryview(blob)[_CRC.size :]) != crc:
            raise ValueError("checksum mismatch")
        flags, count, key_bytes, value_bytes = _HEADER.unpack_from(blob, _CRC.size)
        pos = _CRC.size + _HEADER.size
        key_lengths, pos = _unpack("i", blob, pos, count)
        value_lengths, pos = _unpack("i", blob, pos, count)
        timestamps, pos = _unpack("q", blob, pos, count)
        deltas = None
        if flags & FLAG_OFFSETS:
            delta_column, pos = _unpack("i", blob, pos, count)
            deltas = delta_column.tolist()
        headers = None
        if flags & FLAG_HEADERS:
            (size,) = struct.unpack_from("<I", blob, pos)
            pos += 4
            raw = orjson.loads(blob[pos : pos + size])
            pos += size
            headers = [
                None if h is None else [(str(k), v.encode("latin-1")) for k, v in h] for h in raw
            ]
            if not isinstance(raw, list) or len(headers) != count:
                raise ValueError("the headers section does not match the record count")
        keys = _split(blob[pos : pos + key_bytes], key_lengths)
        pos += key_bytes
        values = _split(blob[pos : pos + value_bytes], value_lengths)
        if pos + value_bytes != len(blob):
            raise ValueError("trailing or missing bytes")
    except (struct.error, ValueError, TypeError, AttributeError, orjson.JSONDecodeError) as exc:
        raise DatabaseError(f"corrupt record batch in the broker database: {exc}") from exc
    return keys, values, timestamps.tolist(), headers, deltas
