"""The bitstream: a small header, then one range-coded stream (constriction's `RangeEncoder`).

Layout, in bytes:

    kind (1)          1 = factorized prior, 2 = scale hyperprior
    model tag (2)     the first bytes of a SHA-1 over the model's weights and coding tables:
                      decoding with another model fails with a message instead of giving noise
    height, width     unsigned LEB128 varints (1 byte below 128 pixels, 2 below 16384)
    payload           the range coder's 32-bit words, little-endian, trailing zero bytes removed

The entropy coder is `constriction` (Bamler, "Understanding Entropy Coding With Asymmetric Numeral
Systems (ANS): a Statistician's Perspective", 2022; github.com/bamler-lab/constriction), used as a
queue (range coding): symbols decode in the order they were encoded, so the hyperprior's z symbols
go first and y's follow in the same stream. CompressAI's coder was the first choice; its current
release (1.2.8) requires numpy < 2 and would downgrade the suite's numpy, so it is not used.
Removing trailing zero bytes is lossless: the decoder pads them back to whole words.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

HEADER_BYTES = 3  # kind + tag, before the two varints


def new_encoder():
    try:
        import constriction
    except ImportError:
        raise ImportError("the image compression codec needs constriction (pip install 'archforge[compress]')") \
            from None
    return constriction.stream.queue.RangeEncoder()


def finish(encoder) -> bytes:
    return encoder.get_compressed().astype("<u4").tobytes().rstrip(b"\x00")


def new_decoder(payload: bytes):
    import constriction

    padded = payload + b"\x00" * ((-len(payload)) % 4)
    return constriction.stream.queue.RangeDecoder(np.frombuffer(padded, dtype="<u4").astype(np.uint32))


def write_varint(value: int) -> bytes:
    if value < 0:
        raise ValueError(f"varint: expected a non-negative integer, got {value}")
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data):
            raise ValueError("bitstream: truncated header")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos
        if shift > 63:
            raise ValueError("bitstream: corrupt header (varint too long)")


def pack(kind: int, tag: bytes, height: int, width: int, payload: bytes) -> bytes:
    return bytes([kind]) + tag + write_varint(height - 1) + write_varint(width - 1) + payload


def unpack(data: bytes, kind: int, tag: bytes) -> tuple[int, int, bytes]:
    data = bytes(data)
    if len(data) < HEADER_BYTES + 2:
        raise ValueError(f"bitstream: {len(data)} bytes is too short for a header")
    if data[0] != kind:
        raise ValueError(f"bitstream: written by a codec of kind {data[0]}, this codec is kind {kind}")
    if data[1:3] != tag:
        raise ValueError(f"bitstream: written by another model (tag {data[1:3].hex()}, this model {tag.hex()})")
    height, pos = read_varint(data, HEADER_BYTES)
    width, pos = read_varint(data, pos)
    return height + 1, width + 1, data[pos:]


def model_tag(model: torch.nn.Module, size: int = 2) -> bytes:
    """A short hash of everything decoding depends on: the state dict (weights and tables), in key order."""
    digest = hashlib.sha1()
    for key, value in sorted(model.state_dict().items()):
        if key == "tag" or key.endswith(".tag"):
            continue
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.digest()[:size]


def as_float_image(image) -> torch.Tensor:
    """(3, H, W) uint8 or float tensor, or (H, W, 3) uint8 numpy array -> (3, H, W) float32 in [0, 1]."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image: expected an (H, W, 3) array, got shape {image.shape}")
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image: expected a (3, H, W) tensor, got {getattr(image, 'shape', type(image))}")
    if image.dtype == torch.uint8:
        return image.float().div(255.0)
    return image.float().clamp(0.0, 1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float image in [0, 1] -> uint8, rounding to the nearest level."""
    return x.detach().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8).cpu()


__all__ = ["pack", "unpack", "model_tag", "new_encoder", "new_decoder", "finish", "write_varint", "read_varint",
           "as_float_image", "to_uint8", "HEADER_BYTES"]
