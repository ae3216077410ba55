"""Kafka record batches (magic v2): decoded on produce, encoded on fetch.

The broker stores a batch as its own columnar blob (`runtime.broker.codec`); this module turns
the wire format into the broker's columns and back. A batch's 61-byte header, its CRC-32C
(attributes to the end), zig-zag varint records, and compression none, gzip, snappy, lz4 or zstd
(through cramjam; an unknown codec is UnsupportedCompressionError, which the server answers
as UNSUPPORTED_COMPRESSION_TYPE).

    batches = decode_batches(records_bytes)           # WireBatch per batch, CRC checked
    blob = encode_batch(base, keys, values, timestamps, headers, deltas, pid, epoch, seq, ...)
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Sequence
from typing import NamedTuple

import cramjam
from crc32c import crc32c

from runtime.errors import StreamsError
from runtime.types import Headers

HEADER = struct.Struct(">qiibIhiqqqhii")  # 61 bytes
HEADER_SIZE = HEADER.size
CRC_START = 21  # the CRC covers attributes .. end
MAGIC = 2
COMPRESSION_MASK = 0x07
TRANSACTIONAL = 0x10
CONTROL = 0x20
GZIP = 1
SNAPPY = 2
LZ4 = 3
ZSTD = 4
MAX_RECORDS_PER_BATCH = 1 << 20


class CorruptRecordError(StreamsError):
    """A record batch that does not parse or whose CRC does not match (CORRUPT_MESSAGE)."""


class UnsupportedCompressionError(StreamsError):
    """A batch compressed with a codec this server does not decode."""


class WireBatch(NamedTuple):
    base_offset: int
    attributes: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    keys: list[bytes | None]
    values: list[bytes | None]
    timestamps: list[int]
    headers: list[Headers | None] | None

    @property
    def transactional(self) -> bool:
        return bool(self.attributes & TRANSACTIONAL)

    @property
    def control(self) -> bool:
        return bool(self.attributes & CONTROL)


# --- varints ------------------------------------------------------------------------------


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """A zig-zag varint (Kafka's varint/varlong) at `pos`: (value, next position)."""
    shift = 0
    raw = 0
    while True:
        byte = data[pos]
        pos += 1
        raw |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (raw >> 1) ^ -(raw & 1), pos
        shift += 7
        if shift > 63:
            raise CorruptRecordError("a varint longer than 10 bytes")


def varint(value: int) -> bytes:
    raw = (value << 1) ^ (value >> 63)
    if raw < 0x80:
        return _ONE_BYTE[raw]
    out = bytearray()
    while raw >= 0x80:
        out.append((raw & 0x7F) | 0x80)
        raw >>= 7
    out.append(raw)
    return bytes(out)


_ONE_BYTE = [bytes([n]) for n in range(0x80)]
_ZIGZAG = [varint(n) for n in range(-1, 1 << 14)]  # index n + 1: the varint of n


# --- compression --------------------------------------------------------------------------

XERIAL_MAGIC = b"\x82SNAPPY\x00"  # snappy-java's framing, which Kafka clients use
MAX_DECOMPRESSED_BYTES = 256 * 1024 * 1024


def decompress(codec: int, body: bytes) -> bytes:
    """A batch's records section, decompressed: none, gzip (1), snappy (2, raw or xerial-
    framed), lz4 (3, frame format) or zstd (4)."""
    if codec == 0:
        return body
    try:
        if codec == GZIP:
            inflate = zlib.decompressobj(wbits=31)  # bounded: a gzip bomb stops at the limit
            out = inflate.decompress(body, MAX_DECOMPRESSED_BYTES + 1)
        elif codec == SNAPPY:
            out = _snappy(body)
        elif codec == LZ4:
            out = _lz4(body)
        elif codec == ZSTD:
            declared = _zstd_content_size(body)
            if declared is not None and declared > MAX_DECOMPRESSED_BYTES:
                raise CorruptRecordError(f"a zstd batch declares {declared} bytes: too large")
            out = _bounded(cramjam.zstd.decompress_into, body, declared)
        else:
            raise UnsupportedCompressionError(
                f"compression codec {codec} is not one of none, gzip, snappy, lz4, zstd"
            )
    except (OSError, EOFError, zlib.error, cramjam.DecompressionError, struct.error) as exc:
        raise CorruptRecordError(f"a compressed batch does not decompress: {exc}") from exc
    if len(out) > MAX_DECOMPRESSED_BYTES:
        raise CorruptRecordError(f"a batch decompresses to {len(out)} bytes: too large")
    return out


LZ4_MAGIC = 0x184D2204
ZSTD_MAGIC = 0xFD2FB528
LZ4_BLOCK_SIZES = {4: 64 << 10, 5: 256 << 10, 6: 1 << 20, 7: 4 << 20}


def _lz4(body: bytes) -> bytes:
    """An LZ4 frame. Independent blocks are inflated one by one, each bounded by the frame's
    block size, the total by MAX_DECOMPRESSED_BYTES; a frame of linked blocks (or one we do
    not parse) goes to cramjam whole, after a declared content size is checked."""
    if len(body) < 7 or struct.unpack_from("<I", body)[0] != LZ4_MAGIC:
        raise CorruptRecordError("not an LZ4 frame")
    flags, descriptor = body[4], body[5]
    pos = 6
    declared = None
    if flags & 0x08:
        (declared,) = struct.unpack_from("<Q", body, pos)
        pos += 8
        if declared > MAX_DECOMPRESSED_BYTES:
            raise CorruptRecordError(f"an lz4 batch declares {declared} bytes: too large")
    if flags & 0x01:
        pos += 4  # dictionary id
    pos += 1  # header checksum
    block_size = LZ4_BLOCK_SIZES.get((descriptor >> 4) & 0x07)
    if not flags & 0x20 or block_size is None:  # linked blocks need the whole frame
        return _bounded(cramjam.lz4.decompress_into, body, declared)
    out: list[bytes] = []
    total = 0
    while True:
        (size,) = struct.unpack_from("<I", body, pos)
        pos += 4
        if size == 0:
            break
        raw, size = bool(size & 0x80000000), size & 0x7FFFFFFF
        if pos + size > len(body) or size > block_size:
            raise CorruptRecordError("an lz4 block runs past its frame")
        chunk = body[pos : pos + size]
        if raw:
            block = chunk
        else:
            buffer = bytearray(block_size)
            written = cramjam.lz4.decompress_block_into(chunk, buffer)
            block = bytes(memoryview(buffer)[:written])
        total += len(block)
        if total > MAX_DECOMPRESSED_BYTES:
            raise CorruptRecordError("an lz4 batch decompresses past the limit")
        out.append(block)
        pos += size + (4 if flags & 0x10 else 0)  # block checksum
    return b"".join(out)


FULL_BUFFER = "failed to write whole buffer"  # cramjam: the output did not fit


def _bounded(
    decompress_into: Callable[[bytes, bytearray], int], body: bytes, declared: int | None
) -> bytes:
    """A whole frame inflated into a buffer that grows, doubling, up to the limit: a frame
    that does not say its size (a zstd stream, linked LZ4 blocks) costs memory in proportion
    to what it really holds, and one past MAX_DECOMPRESSED_BYTES stops there."""
    limit = MAX_DECOMPRESSED_BYTES + 1
    guess = declared if declared is not None else max(1 << 20, 8 * len(body))
    size = min(limit, max(1, guess))
    while True:
        buffer = bytearray(size)
        try:
            written = decompress_into(body, buffer)
        except cramjam.DecompressionError as exc:
            if FULL_BUFFER not in str(exc) or size >= limit:
                if FULL_BUFFER in str(exc):
                    raise CorruptRecordError("a batch decompresses past the limit") from exc
                raise
            size = min(limit, size * 2)
            continue
        return bytes(memoryview(buffer)[:written])


def _zstd_content_size(body: bytes) -> int | None:
    """The content size a zstd frame header declares, if it does."""
    if len(body) < 5 or struct.unpack_from("<I", body)[0] != ZSTD_MAGIC:
        raise CorruptRecordError("not a zstd frame")
    descriptor = body[4]
    fcs_flag, single_segment, dict_flag = descriptor >> 6, descriptor & 0x20, descriptor & 0x03
    pos = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[dict_flag]
    width = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
    if width == 0:
        return None
    value = int.from_bytes(body[pos : pos + width], "little")
    return value + 256 if width == 2 else value


def _snappy(body: bytes) -> bytes:
    if not body.startswith(XERIAL_MAGIC):
        return bytes(cramjam.snappy.decompress_raw(body))
    pos = 16  # magic, version i32, compatible version i32
    blocks = []
    while pos < len(body):
        (size,) = struct.unpack_from(">i", body, pos)
        pos += 4
        if size < 0 or pos + size > len(body):
            raise CorruptRecordError("a snappy block runs past its batch")
        blocks.append(bytes(cramjam.snappy.decompress_raw(body[pos : pos + size])))
        pos += size
    return b"".join(blocks)


# --- decode -------------------------------------------------------------------------------


def decode_batches(data: bytes, max_bytes: int | None = None) -> list[WireBatch]:
    """Every batch in a produce request's records field; CorruptRecordError for anything that
    does not parse or fails its CRC."""
    if max_bytes is not None and len(data) > max_bytes:
        raise CorruptRecordError(f"records of {len(data)} bytes exceed {max_bytes}")
    batches = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < HEADER_SIZE:
            raise CorruptRecordError("a truncated record batch header")
        length = struct.unpack_from(">i", data, pos + 8)[0]
        end = pos + 12 + length
        if length < HEADER_SIZE - 12 or end > len(data):
            raise CorruptRecordError(f"a record batch length of {length} does not fit")
        batches.append(_decode_one(data, pos, end))
        pos = end
    if not batches:
        raise CorruptRecordError("no record batch")
    return batches


def _decode_one(data: bytes, start: int, end: int) -> WireBatch:
    (
        base_offset,
        _length,
        _leader_epoch,
        magic,
        crc,
        attributes,
        _last_delta,
        base_ts,
        _max_ts,
        pid,
        epoch,
        base_seq,
        count,
    ) = HEADER.unpack_from(data, start)
    if magic != MAGIC:
        raise CorruptRecordError(f"record batch magic {magic}: only v2 batches are accepted")
    if crc32c(memoryview(data)[start + CRC_START : end]) != crc:
        raise CorruptRecordError("record batch CRC-32C mismatch")
    if not 0 <= count <= MAX_RECORDS_PER_BATCH:
        raise CorruptRecordError(f"record count {count} out of range")
    body = decompress(
        attributes & COMPRESSION_MASK, bytes(memoryview(data)[start + HEADER_SIZE : end])
    )
    keys: list[bytes | None] = []
    values: list[bytes | None] = []
    timestamps: list[int] = []
    all_headers: list[Headers | None] = []
    any_headers = False
    pos = 0
    try:
        for _ in range(count):
            byte = body[pos]
            if byte < 0x80:  # one-byte varints: the common case, inline
                length = (byte >> 1) ^ -(byte & 1)
                pos += 1
            elif body[pos + 1] < 0x80:
                raw = (byte & 0x7F) | (body[pos + 1] << 7)
                length = (raw >> 1) ^ -(raw & 1)
                pos += 2
            else:
                length, pos = read_varint(body, pos)
            record_end = pos + length
            if length < 0 or record_end > len(body):
                raise CorruptRecordError("a record length past the end of its batch")
            pos += 1  # attributes
            byte = body[pos]
            if byte < 0x80:  # one-byte varints: the common case, inline
                ts_delta = (byte >> 1) ^ -(byte & 1)
                pos += 1
            elif body[pos + 1] < 0x80:
                raw = (byte & 0x7F) | (body[pos + 1] << 7)
                ts_delta = (raw >> 1) ^ -(raw & 1)
                pos += 2
            else:
                ts_delta, pos = read_varint(body, pos)
            byte = body[pos]
            if byte < 0x80:  # one-byte varints: the common case, inline
                _offset_delta = (byte >> 1) ^ -(byte & 1)
                pos += 1
            elif body[pos + 1] < 0x80:
                raw = (byte & 0x7F) | (body[pos + 1] << 7)
                _offset_delta = (raw >> 1) ^ -(raw & 1)
                pos += 2
            else:
                _offset_delta, pos = read_varint(body, pos)
            byte = body[pos]
            if byte < 0x80:  # one-byte varints: the common case, inline
                size = (byte >> 1) ^ -(byte & 1)
                pos += 1
            elif body[pos + 1] < 0x80:
                raw = (byte & 0x7F) | (body[pos + 1] << 7)
                size = (raw >> 1) ^ -(raw & 1)
                pos += 2
            else:
                size, pos = read_varint(body, pos)
            if size < 0:
                keys.append(None)
            else:
                keys.append(body[pos : pos + size])
                pos += size
            byte = body[pos]
            if byte < 0x80:  # one-byte varints: the common case, inline
                size = (byte >> 1) ^ -(byte & 1)
                pos += 1
            elif body[pos + 1] < 0x80:
                raw = (byte & 0x7F) | (body[pos + 1] << 7)
                size = (raw >> 1) ^ -(raw & 1)
                pos += 2
            else:
                size, pos = read_varint(body, pos)
            if size < 0:
                values.append(None)
            else:
                values.append(body[pos : pos + size])
                pos += size
            n_headers, pos = read_varint(body, pos)
            if n_headers > 0:
                any_headers = True
                headers: Headers = []
                for _ in range(n_headers):
                    size, pos = read_varint(body, pos)
                    name = body[pos : pos + size].decode()
                    pos += size
                    size, pos = read_varint(body, pos)
                    value = b"" if size < 0 else body[pos : pos + size]
                    pos += max(size, 0)
                    headers.append((name, value))
                all_headers.append(headers)
            else:
                all_headers.append(None)
            if pos != record_end:
                raise CorruptRecordError("a record's fields do not match its length")
            timestamps.append(base_ts + ts_delta)
    except (IndexError, UnicodeDecodeError) as exc:
        raise CorruptRecordError(f"a truncated or malformed record: {exc}") from exc
    if pos != len(body):
        raise CorruptRecordError("bytes after the last record of a batch")
    return WireBatch(
        base_offset,
        attributes,
        pid,
        epoch,
        base_seq,
        keys,
        values,
        timestamps,
        all_headers if any_headers else None,
    )


# --- encode -------------------------------------------------------------------------------


def encode_batch(
    base_offset: int,
    keys: Sequence[bytes | None],
    values: Sequence[bytes | None],
    timestamps: Sequence[int],
    headers: Sequence[Headers | None] | None,
    deltas: Sequence[int] | None,
    *,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
    attributes: int = 0,
    last_offset_delta: int | None = None,
) -> bytes:
    """One uncompressed v2 batch holding the given records (offsets base + delta)."""
    count = len(values)
    base_ts = min(timestamps) if timestamps else 0
    max_ts = max(timestamps) if timestamps else 0
    parts: list[bytes] = []
    extend = parts.extend
    zz = _ZIGZAG
    small = len(zz) - 1  # values -1 .. small-1 come from the table
    for i in range(count):
        key = keys[i]
        value = values[i]
        ts_delta = timestamps[i] - base_ts
        offset_delta = i if deltas is None else deltas[i]
        tsd = zz[ts_delta + 1] if ts_delta < small else varint(ts_delta)
        od = zz[offset_delta + 1] if offset_delta < small else varint(offset_delta)
        if key is None:
            kl = b"\x01"
            key = b""
        else:
            n = len(key)
            kl = zz[n + 1] if n < small else varint(n)
        if value is None:
            vl = b"\x01"
            value = b""
        else:
            n = len(value)
            vl = zz[n + 1] if n < small else varint(n)
        record_headers = None if headers is None else headers[i]
        if record_headers:
            encoded = [varint(len(record_headers))]
            for name, header_value in record_headers:
                raw = name.encode()
                encoded.append(varint(len(raw)) + raw + varint(len(header_value)) + header_value)
            hd = b"".join(encoded)
        else:
            hd = b"\x00"
        size = 1 + len(tsd) + len(od) + len(kl) + len(key) + len(vl) + len(value) + len(hd)
        extend(
            (
                zz[size + 1] if size < small else varint(size),
                b"\x00",
                tsd,
                od,
                kl,
                key,
                vl,
                value,
                hd,
            )
        )
    body = b"".join(parts)
    if last_offset_delta is None:
        last_offset_delta = (count - 1) if deltas is None else deltas[-1]
    tail = struct.pack(
        ">hiqqqhii",
        attributes,
        last_offset_delta,
        base_ts,
        max_ts,
        producer_id,
        producer_epoch,
        base_sequence,
        count,
    )
    crc = crc32c(body, crc32c(tail))
    head = struct.pack(">qiibI", base_offset, 49 + len(body), -1, MAGIC, crc)
    return head + tail + body
