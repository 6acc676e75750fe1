"""JPEG and WebP through Pillow, with the same `compress(image) -> bytes` / `decompress(bytes) -> image` as the codec.

JPEG: libjpeg through Pillow at `quality`, Huffman tables optimised (`optimize=True`, smaller files at
the same pixels), Pillow's default 4:2:0 chroma subsampling. WebP: libwebp's lossy mode at `quality`
with `method=6` (its slowest, best-compressing search). Every byte of the file counts, headers
included, as for the learned codec.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch

#: the quality sweeps that draw the JPEG and WebP curves
JPEG_QUALITIES = (5, 10, 15, 20, 30, 40, 50, 60, 75, 90)
WEBP_QUALITIES = (0, 5, 10, 20, 30, 40, 50, 60, 75, 90)
FORMATS = {"jpeg": "JPEG", "webp": "WEBP"}


@dataclass(frozen=True)
class PillowCodec:
    format: str
    quality: int

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"format: expected one of {sorted(FORMATS)}, got {self.format!r}")
        if not 0 <= int(self.quality) <= 100:
            raise ValueError(f"quality: expected 0..100, got {self.quality!r}")

    @property
    def label(self) -> str:
        return f"{self.format} q{self.quality}"

    def compress(self, image: torch.Tensor) -> bytes:
        """(3, H, W) uint8 -> the file's bytes."""
        from PIL import Image

        array = image.permute(1, 2, 0).contiguous().numpy()
        buffer = io.BytesIO()
        options = {"optimize": True} if self.format == "jpeg" else {"method": 6}
        Image.fromarray(array, "RGB").save(buffer, FORMATS[self.format], quality=int(self.quality), **options)
        return buffer.getvalue()

    def decompress(self, data: bytes) -> torch.Tensor:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            array = np.asarray(img.convert("RGB"))
        return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def sweep(fmt: str, qualities: tuple[int, ...] | None = None) -> list[PillowCodec]:
    qualities = qualities if qualities is not None else (JPEG_QUALITIES if fmt == "jpeg" else WEBP_QUALITIES)
    return [PillowCodec(fmt, int(q)) for q in qualities]


__all__ = ["PillowCodec", "sweep", "JPEG_QUALITIES", "WEBP_QUALITIES", "FORMATS"]
