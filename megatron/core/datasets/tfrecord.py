"""TFRecord files, ``tf.train.Example`` protos and DALI's text index files, without TensorFlow.

Framing of one record: the payload length as little-endian uint64, the masked CRC-32C of those
8 bytes (uint32 LE), the payload, the masked CRC-32C of the payload. The mask is
``((crc >> 15) | (crc << 17)) + 0xa282ead8`` (mod 2**32).

Examples are encoded by hand in the order the features are given (the MLPerf script's order),
so the Python and C++ writers produce identical bytes; they are decoded with ``protobuf``
message classes built at run time from descriptors (no ``protoc``, no TensorFlow), an
implementation independent of the encoder. An index file (DALI's ``tfrecord2idx`` format) has
one line per record: ``<byte offset> <record size including the 16 framing bytes>``.

No torch import: the data tools use this module.
"""
from __future__ import annotations

import os
import struct
from typing import Dict, Iterator, List, Mapping, Sequence, Tuple

import numpy as np

from megatron.core.fileio import atomic_open

_MASK_DELTA = 0xA282EAD8
HEADER_BYTES = 12  # length + its CRC
FRAMING_BYTES = 16


class TFRecordError(ValueError):
    """A TFRecord or index file that is not what it should be; the message names file and offset."""


def _crc32c(data: bytes) -> int:
    import crc32c

    return crc32c.crc32c(data)


def masked_crc32c(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame_record(payload: bytes) -> bytes:
    length = struct.pack("<Q", len(payload))
    return b"".join((length, struct.pack("<I", masked_crc32c(length)), payload,
                     struct.pack("<I", masked_crc32c(payload))))


# -- tf.train.Example: hand encoder ------------------------------------------------------------

def _varint(value: int) -> bytes:
    out = bytearray()
    value &= 0xFFFFFFFFFFFFFFFF  # negative int64 values are ten-byte two's complement varints
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _len_field(field: int, body: bytes) -> bytes:
    return bytes(((field << 3) | 2,)) + _varint(len(body)) + body


def _packed_int64(values) -> bytes:
    values = [int(v) for v in values]
    if all(0 <= v < 0x80 for v in values):
        return bytes(values)
    return b"".join(map(_varint, values))


def encode_example(features: Mapping[str, Sequence]) -> bytes:
    """A ``tf.train.Example`` of int64 lists (ints / integer arrays) and float lists (floats /
    float arrays), map entries in the given order."""
    body = []
    for name, values in features.items():
        array = np.asarray(values)
        if array.dtype.kind == "f":
            feature = _len_field(2, _len_field(1, array.astype("<f4").tobytes()))
        elif array.dtype.kind in "iub":
            feature = _len_field(3, _len_field(1, _packed_int64(array.reshape(-1).tolist())))
        else:
            raise TypeError(f"feature {name!r}: only int64 and float lists are supported, got {array.dtype}")
        body.append(_len_field(1, _len_field(1, name.encode("utf-8")) + _len_field(2, feature)))
    return _len_field(1, b"".join(body))


# -- tf.train.Example: protobuf decoder --------------------------------------------------------

_EXAMPLE_CLASS = None


def example_message_class():
    """``tf.train.Example`` as a protobuf class built from descriptors (tensorflow/core/example)."""
    global _EXAMPLE_CLASS
    if _EXAMPLE_CLASS is not None:
        return _EXAMPLE_CLASS
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(name="megatron_tf_example.proto", package="tensorflow",
                                             syntax="proto3")
    F = descriptor_pb2.FieldDescriptorProto

    def message(name, fields, nested=None, oneofs=()):
        msg = fdp.message_type.add(name=name) if nested is None else nested.nested_type.add(name=name)
        for oneof in oneofs:
            msg.oneof_decl.add(name=oneof)
        for fname, number, ftype, label, type_name, oneof_index in fields:
            field = msg.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                field.type_name = type_name
            if oneof_index is not None:
                field.oneof_index = oneof_index
            if ftype in (F.TYPE_INT64, F.TYPE_FLOAT) and label == F.LABEL_REPEATED:
                field.options.packed = True
        return msg

    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    message("BytesList", [("value", 1, F.TYPE_BYTES, rep, None, None)])
    message("FloatList", [("value", 1, F.TYPE_FLOAT, rep, None, None)])
    message("Int64List", [("value", 1, F.TYPE_INT64, rep, None, None)])
    message("Feature", [("bytes_list", 1, F.TYPE_MESSAGE, opt, ".tensorflow.BytesList", 0),
                        ("float_list", 2, F.TYPE_MESSAGE, opt, ".tensorflow.FloatList", 0),
                        ("int64_list", 3, F.TYPE_MESSAGE, opt, ".tensorflow.Int64List", 0)], oneofs=("kind",))
    features = message("Features", [("feature", 1, F.TYPE_MESSAGE, rep, ".tensorflow.Features.FeatureEntry", None)])
    entry = message("FeatureEntry", [("key", 1, F.TYPE_STRING, opt, None, None),
                                     ("value", 2, F.TYPE_MESSAGE, opt, ".tensorflow.Feature", None)], nested=features)
    entry.options.map_entry = True
    message("Example", [("features", 1, F.TYPE_MESSAGE, opt, ".tensorflow.Features", None)])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    _EXAMPLE_CLASS = message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))
    return _EXAMPLE_CLASS


def decode_example(payload: bytes, where: str = "record") -> Dict[str, np.ndarray]:
    """Feature name -> int64 / float32 / object (bytes) array."""
    from google.protobuf.message import DecodeError

    example = example_message_class()()
    try:
        example.ParseFromString(payload)
    except DecodeError as exc:
        raise TFRecordError(f"{where}: not a tf.train.Example ({exc})") from None
    out = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        if kind == "int64_list":
            out[name] = np.array(feature.int64_list.value, dtype=np.int64)
        elif kind == "float_list":
            out[name] = np.array(feature.float_list.value, dtype=np.float32)
        elif kind == "bytes_list":
            out[name] = np.array(list(feature.bytes_list.value), dtype=object)
        else:
            out[name] = np.zeros(0, dtype=np.int64)
    return out


# -- files --------------------------------------------------------------------------------------

class TFRecordWriter:
    """Appends framed records to ``path``, published atomically when the block ends without error."""

    def __init__(self, path: str):
        self.path = path
        self._ctx = atomic_open(path, "wb")
        self._file = None

    def __enter__(self):
        self._file = self._ctx.__enter__()
        return self

    def write(self, payload: bytes) -> None:
        self._file.write(frame_record(payload))

    def write_framed(self, data: bytes) -> None:
        """Bytes that already hold whole framed records."""
        self._file.write(data)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def scan_records(path: str, verify_crc: bool = True) -> Iterator[Tuple[int, int, bytes]]:
    """``(offset, size incl. framing, payload)`` of every record; a truncated or corrupt file is a
    ``TFRecordError`` naming the file and the record's byte offset."""
    with open(path, "rb") as f:
        data = f.read()
    offset, end = 0, len(data)
    while offset < end:
        if end - offset < HEADER_BYTES:
            raise TFRecordError(f"{path}: truncated record header at byte offset {offset} "
                                f"({end - offset} of {HEADER_BYTES} bytes)")
        header = data[offset:offset + 8]
        (length,) = struct.unpack("<Q", header)
        if verify_crc and struct.unpack_from("<I", data, offset + 8)[0] != masked_crc32c(header):
            raise TFRecordError(f"{path}: bad length checksum of the record at byte offset {offset}")
        size = length + FRAMING_BYTES
        if offset + size > end:
            raise TFRecordError(f"{path}: truncated record at byte offset {offset} (needs {size} bytes, "
                                f"{end - offset} left)")
        payload = data[offset + HEADER_BYTES:offset + HEADER_BYTES + length]
        if verify_crc and struct.unpack_from("<I", data, offset + HEADER_BYTES + length)[0] != masked_crc32c(payload):
            raise TFRecordError(f"{path}: bad data checksum of the record at byte offset {offset}")
        yield offset, size, payload
        offset += size


def read_records(path: str, verify_crc: bool = True) -> List[bytes]:
    return [payload for _, _, payload in scan_records(path, verify_crc)]


def build_index(path: str) -> np.ndarray:
    """``[n, 2]`` int64 (offset, size) of the records of ``path``, as DALI's tfrecord2idx finds
    them (lengths only; a truncated file is an error)."""
    rows = []
    with open(path, "rb") as f:
        end = os.fstat(f.fileno()).st_size
        offset = 0
        while offset < end:
            f.seek(offset)
            header = f.read(8)
            if len(header) < 8 or end - offset < HEADER_BYTES:
                raise TFRecordError(f"{path}: truncated record header at byte offset {offset}")
            size = struct.unpack("<Q", header)[0] + FRAMING_BYTES
            if offset + size > end:
                raise TFRecordError(f"{path}: truncated record at byte offset {offset} (needs {size} bytes, "
                                    f"{end - offset} left)")
            rows.append((offset, size))
            offset += size
    return np.array(rows, dtype=np.int64).reshape(-1, 2)


def write_index(index: np.ndarray, idx_path: str) -> None:
    with atomic_open(idx_path, "w", encoding="ascii", newline="\n") as f:
        f.write("".join(f"{int(o)} {int(s)}\n" for o, s in index))


def read_index(idx_path: str, tfrecord_path: str = None) -> np.ndarray:
    """Parse an index file; with ``tfrecord_path`` check that it tiles that file exactly."""
    rows = []
    with open(idx_path, encoding="ascii", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            try:
                offset, size = (int(p) for p in parts)
            except ValueError:
                raise TFRecordError(f"{idx_path}:{lineno}: expected '<offset> <size>', got {line.strip()!r}") from None
            rows.append((offset, size))
    index = np.array(rows, dtype=np.int64).reshape(-1, 2)
    if tfrecord_path is not None:
        file_size = os.path.getsize(tfrecord_path)
        expected_offsets = np.concatenate([[0], np.cumsum(index[:, 1])[:-1]]) if len(index) else index[:, 0]
        if (index[:, 1] < FRAMING_BYTES).any() or not np.array_equal(index[:, 0], expected_offsets) \
                or int(index[:, 1].sum()) != file_size:
            raise TFRecordError(f"{idx_path}: does not index {tfrecord_path} ({len(index)} records covering "
                                f"{int(index[:, 1].sum())} of {file_size} bytes); delete it to rebuild")
    return index


def read_record_at(fd: int, offset: int, size: int, path: str, verify_crc: bool = False) -> bytes:
    """The payload of the record at ``offset`` of the file descriptor ``fd``.

    ``os.pread`` leaves the descriptor's file offset alone, so processes that share a descriptor
    across ``fork`` (DataLoader workers) cannot move each other's reads."""
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise TFRecordError(f"{path}: truncated record at byte offset {offset}")
    length = struct.unpack_from("<Q", data)[0]
    if length + FRAMING_BYTES != size:
        raise TFRecordError(f"{path}: record at byte offset {offset} has length {length}, index says "
                            f"{size - FRAMING_BYTES}")
    payload = data[HEADER_BYTES:HEADER_BYTES + length]
    if verify_crc and struct.unpack_from("<I", data, HEADER_BYTES + length)[0] != masked_crc32c(payload):
        raise TFRecordError(f"{path}: bad data checksum of the record at byte offset {offset}")
    return payload
