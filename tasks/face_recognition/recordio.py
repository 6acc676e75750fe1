"""MXNet RecordIO (`train.rec` + `train.idx`) read and written without MXNet.

The container is dmlc-core's `RecordIOWriter` format (`src/recordio.cc`):
each record is `uint32 magic 0xced7230a`, `uint32 lrec` (upper 3 bits a
continuation flag, lower 29 bits the length), the payload, zero padding to a
multiple of 4 bytes. A payload that contains the magic word at a 4-byte
aligned offset is split there into parts flagged 1 (first), 2 (middle) and
3 (last); the reader joins them with the magic word put back. `train.idx`
holds one `key<TAB>byte offset` line per record (`MXIndexedRecordIO`).

A payload is `mx.recordio.pack`'s: a 24-byte `IRHeader` struct `<IfQQ`
(flag, label, id, id2), then, when flag > 0, `flag` float32 labels, then the
image bytes (JPEG/PNG). insightface training sets (`faces_emore`,
`faces_webface_112x112`, ...) store in record 0 a header whose labels are
`(first identity record, end)`: images are records 1 .. label[0]-1, each
labelled with its identity; records label[0] .. label[1]-1 hold each
identity's `(first image, end)` range.
"""

from __future__ import annotations

import io
import struct
from collections import namedtuple
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from core.engine.data import DataError, image_error

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
IRHeader = namedtuple("IRHeader", "flag label id id2")
_IR_FORMAT = "<IfQQ"
_IR_SIZE = struct.calcsize(_IR_FORMAT)


def _lrec(cflag: int, length: int) -> bytes:
    if length >= 1 << 29:
        raise ValueError(f"RecordIO record part of {length} bytes exceeds the 29-bit length field")
    return struct.pack("<I", (cflag << 29) | length)


def encode_record(payload: bytes) -> bytes:
    """The bytes of one record (split where the payload holds the magic word, as dmlc-core writes it)."""
    out = bytearray()
    start = 0
    for i in range(0, (len(payload) >> 2) << 2, 4):
        if payload[i:i + 4] == _MAGIC_BYTES:
            out += _MAGIC_BYTES + _lrec(1 if start == 0 else 2, i - start) + payload[start:i]
            start = i + 4
    out += _MAGIC_BYTES + _lrec(3 if start else 0, len(payload) - start) + payload[start:]
    out += b"\0" * (-len(payload) % 4)
    return bytes(out)


def read_record(f, path: str | Path = "record file") -> bytes:
    """Read one record at the file's position (joining split parts)."""
    parts = bytearray()
    while True:
        start = f.tell()
        head = f.read(8)
        if len(head) < 8:
            raise DataError(f"{path}: truncated RecordIO record at byte {start} (file ends after {len(head)} "
                            "header bytes)")
        magic, lrec = struct.unpack("<II", head)
        if magic != MAGIC:
            raise DataError(f"{path}: not a RecordIO record at byte {start} (magic {magic:#x})")
        cflag, length = lrec >> 29, lrec & ((1 << 29) - 1)
        data = f.read((length + 3) & ~3)
        if len(data) < length:
            raise DataError(f"{path}: truncated RecordIO record at byte {start} ({len(data)} of {length} "
                            "payload bytes)")
        parts += data[:length]
        if cflag in (0, 3):
            return bytes(parts)
        parts += _MAGIC_BYTES


def pack(header: IRHeader, payload: bytes) -> bytes:
    """`mx.recordio.pack`: a scalar label goes in the struct; a label sequence after it (flag = its length)."""
    label = header.label
    if isinstance(label, (int, float, np.integer, np.floating)):
        return struct.pack(_IR_FORMAT, 0, float(label), header.id, header.id2) + payload
    label = np.asarray(label, dtype=np.float32)
    return struct.pack(_IR_FORMAT, label.size, 0.0, header.id, header.id2) + label.tobytes() + payload


def unpack(record: bytes) -> tuple[IRHeader, bytes]:
    """`mx.recordio.unpack`: (header, image bytes); header.label is a float or a float32 array."""
    if len(record) < _IR_SIZE:
        raise ValueError(f"RecordIO payload of {len(record)} bytes is shorter than an IRHeader ({_IR_SIZE})")
    flag, label, id1, id2 = struct.unpack(_IR_FORMAT, record[:_IR_SIZE])
    body = record[_IR_SIZE:]
    if flag > 0:
        label = np.frombuffer(body[:flag * 4], dtype=np.float32).copy()
        body = body[flag * 4:]
    return IRHeader(flag, label, id1, id2), body


class IndexedRecordReader:
    """Random access to `train.rec` through `train.idx` (opened lazily, so it survives DataLoader workers)."""

    def __init__(self, rec: str | Path, idx: str | Path | None = None):
        self.rec = Path(rec)
        self.idx = Path(idx) if idx else self.rec.with_suffix(".idx")
        for p in (self.rec, self.idx):
            if not p.is_file():
                raise FileNotFoundError(f"data.root: RecordIO file not found: {p}")
        self.offsets: dict[int, int] = {}
        for n, line in enumerate(self.idx.read_text().splitlines()):
            if line.strip():
                try:
                    key, offset = line.split("\t")
                    self.offsets[int(key)] = int(offset)
                except ValueError:
                    raise ValueError(f"{self.idx}:{n + 1}: expected 'key<TAB>offset', got {line!r}") from None
        self._file = None

    def keys(self) -> list[int]:
        return list(self.offsets)

    def read(self, key: int) -> bytes:
        if key not in self.offsets:
            raise DataError(f"{self.idx}: no record {key}")
        if self._file is None:
            self._file = open(self.rec, "rb")
        self._file.seek(self.offsets[key])
        return read_record(self._file, f"{self.rec}: record {key}")

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"] = None
        return state

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def write_indexed(rec: str | Path, records: Iterable[tuple[int, bytes]]) -> None:
    """Write `(key, payload)` records to `rec` and its `.idx`: both go to temporary files flushed to disk
    (fsync), then are renamed over the targets back to back and the folder entry is synced, so neither file
    is ever seen half-written. (Two renames are not one atomic step: a reader that needs both, like the
    synthetic set, writes a marker file last.)"""
    import os

    from core.engine.runs import fsync_dir

    rec = Path(rec)
    idx = rec.with_suffix(".idx")
    rec.parent.mkdir(parents=True, exist_ok=True)
    tmp_rec, tmp_idx = rec.with_name(f".{rec.name}.tmp"), idx.with_name(f".{idx.name}.tmp")
    try:
        lines = []
        with open(tmp_rec, "wb") as f:
            for key, payload in records:
                lines.append(f"{key}\t{f.tell()}\n")
                f.write(encode_record(payload))
            f.flush()
            os.fsync(f.fileno())
        with open(tmp_idx, "w") as f:
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())
        tmp_rec.replace(rec)
        tmp_idx.replace(idx)
    finally:
        tmp_rec.unlink(missing_ok=True)
        tmp_idx.unlink(missing_ok=True)
    fsync_dir(rec.parent)


def encode_image(image: np.ndarray, fmt: str = "JPEG", quality: int = 95) -> bytes:
    """HWC uint8 RGB -> JPEG/PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


def decode_image(data: bytes, where: str = "image") -> np.ndarray:
    """JPEG/PNG bytes -> HWC uint8 RGB (what `mx.image.imdecode` returns); `where` names the entry in errors
    (`DataError`: "<file>: record 12: not a decodable image ...")."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.array(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise DataError(f"{where}: not a decodable image ({image_error(err)})") from None


def write_face_rec(rec: str | Path, images: Sequence[np.ndarray], labels: Sequence[int], fmt: str = "JPEG") -> None:
    """An insightface-layout training set: record 0 the range header, images 1..N, then one range record
    per identity. `images` are HWC uint8 RGB; identities must be contiguous integers from 0."""
    labels = [int(y) for y in labels]
    n, ids = len(images), sorted(set(labels))
    if ids != list(range(len(ids))):
        raise ValueError("write_face_rec: labels must be the integers 0 .. K-1")
    order = sorted(range(n), key=lambda i: labels[i])

    def records():
        yield 0, pack(IRHeader(2, [n + 1, n + 1 + len(ids)], 0, 0), b"")
        starts = {}
        for pos, i in enumerate(order, start=1):
            starts.setdefault(labels[i], pos)
            yield pos, pack(IRHeader(0, float(labels[i]), pos, 0), encode_image(images[i], fmt))
        for k in ids:
            end = starts[k + 1] if k + 1 in starts else n + 1
            yield n + 1 + k, pack(IRHeader(2, [starts[k], end], n + 1 + k, 0), b"")

    from core.engine.runs import atomic_write_text

    write_indexed(rec, records())
    atomic_write_text(Path(rec).parent / "property", f"{len(ids)},{images[0].shape[0]},{images[0].shape[1]}\n")


__all__ = [
    "MAGIC",
    "IRHeader",
    "IndexedRecordReader",
    "decode_image",
    "encode_image",
    "encode_record",
    "pack",
    "read_record",
    "unpack",
    "write_face_rec",
    "write_indexed",
]
