"""Learned codecs of the Ballé family, with a real bitstream.

- `FactorizedPrior`: Ballé, Minnen, Singh, Hwang, Johnston, "Variational image compression with a scale
  hyperprior", ICLR 2018, the "factorized prior" baseline (Fig. 4 without the hyperprior; the model of
  Ballé et al., ICLR 2017 with the transforms of 2018): analysis `g_a` = `depth` strided 5x5 convolutions
  with GDN between them, synthesis `g_s` the mirror with IGDN, an `EntropyBottleneck` on the latent y.
- `ScaleHyperprior`: the same transforms plus the hyperprior of Sec. 3 / Fig. 4: `h_a` = conv3x3(s1)-ReLU-
  conv5x5(s2)-ReLU-conv5x5(s2) on |y|, `h_s` the mirror ending in ReLU, an `EntropyBottleneck` on z and a
  `GaussianConditional` on y with the scales `h_s(z_hat)`.

Widths follow the paper's notation: `channels` N inside the transforms, `latent_channels` M in y (the
paper: N = 128, M = 192 at depth 4 for the lower rates). `hyper_channels` is the width of h_a / h_s
(the paper: N).

Bitstream (`compress(image) -> bytes`, `decompress(bytes) -> image`): see `bitstream.py`. The image
is padded (edge replication) to a multiple of the total stride, coded, and cropped back after decoding;
bits per pixel count every byte over the original H x W.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from tasks.image_compression import bitstream
from tasks.image_compression.entropy import EntropyBottleneck, GaussianConditional
from tasks.image_compression.ops import GDN, conv, deconv


class CodecOutput(NamedTuple):
    x_hat: torch.Tensor
    likelihoods: tuple[torch.Tensor, ...]


def analysis_transform(channels: int, latent_channels: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = [conv(3, channels), GDN(channels)]
    for _ in range(depth - 2):
        layers += [conv(channels, channels), GDN(channels)]
    layers.append(conv(channels, latent_channels))
    return nn.Sequential(*layers)


def synthesis_transform(channels: int, latent_channels: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = [deconv(latent_channels, channels), GDN(channels, inverse=True)]
    for _ in range(depth - 2):
        layers += [deconv(channels, channels), GDN(channels, inverse=True)]
    layers.append(deconv(channels, 3))
    return nn.Sequential(*layers)


def bits_per_pixel(likelihoods: tuple[torch.Tensor, ...], num_pixels: int) -> torch.Tensor:
    """The rate term: -sum log2 p over all latents, per pixel of the batch."""
    return sum(-torch.log2(lk).sum() for lk in likelihoods) / num_pixels


class Codec(nn.Module):
    """Shared parts: padding, the 8-bit round trip, the coding tables, the header. Subclasses code the latents."""

    kind = 0  #: model id in the bitstream header

    def __init__(self, channels: int, latent_channels: int, depth: int):
        super().__init__()
        if depth < 2:
            raise ValueError(f"depth: the transforms need at least 2 strided layers, got {depth}")
        if channels < 1 or latent_channels < 1:
            raise ValueError(f"channels and latent_channels must be positive, got {channels}, {latent_channels}")
        self.channels, self.latent_channels, self.depth = int(channels), int(latent_channels), int(depth)
        self.g_a = analysis_transform(channels, latent_channels, depth)
        self.g_s = synthesis_transform(channels, latent_channels, depth)
        self.register_buffer("tag", torch.zeros(0, dtype=torch.uint8))

    @property
    def stride(self) -> int:
        """Images are padded to a multiple of this."""
        return 2 ** self.depth

    def config(self) -> dict[str, int]:
        return {"channels": self.channels, "latent_channels": self.latent_channels, "depth": self.depth}

    def entropy_modules(self) -> list[nn.Module]:
        return [m for m in self.modules() if isinstance(m, (EntropyBottleneck, GaussianConditional))]

    def aux_loss(self) -> torch.Tensor:
        """The bottlenecks' quantile loss (optimised on its own, on the `quantiles` parameters only)."""
        return sum(m.aux_loss() for m in self.modules() if isinstance(m, EntropyBottleneck))

    def main_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.endswith("quantiles") and p.requires_grad]

    def aux_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n.endswith("quantiles")]

    # -- coding ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self) -> None:
        """Build the coding tables from the trained densities; call after training, before `compress`."""
        for module in self.entropy_modules():
            module.update()
        self.tag = torch.frombuffer(bytearray(bitstream.model_tag(self)), dtype=torch.uint8).clone()

    @property
    def ready(self) -> bool:
        return self.tag.numel() > 0 and all(m.ready for m in self.entropy_modules())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "tag" in state_dict:
            self.tag = torch.empty_like(state_dict[prefix + "tag"])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.stride, (-w) % self.stride
        return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x

    @torch.no_grad()
    def compress(self, image: torch.Tensor) -> bytes:
        """An RGB image ((3, H, W) uint8, or float in [0, 1]) -> the bitstream."""
        if not self.ready:
            raise RuntimeError("compress: the coding tables are missing; call codec.update() after training")
        x = bitstream.as_float_image(image)
        height, width = x.shape[-2:]
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        try:
            y = self.g_a(self._pad(x[None].to(device)))
            payload = self._encode_latents(y)
        finally:
            self.train(was_training)
        return bitstream.pack(self.kind, bytes(self.tag.tolist()), height, width, payload)

    @torch.no_grad()
    def decompress(self, data: bytes) -> torch.Tensor:
        """The bitstream -> the decoded image, (3, H, W) uint8."""
        if not self.ready:
            raise RuntimeError("decompress: the coding tables are missing; call codec.update() or load a "
                               "checkpoint saved after it")
        height, width, payload = bitstream.unpack(data, self.kind, bytes(self.tag.tolist()))
        padded = (height + (-height) % self.stride, width + (-width) % self.stride)
        was_training = self.training
        self.eval()
        try:
            y_size = (padded[0] >> self.depth, padded[1] >> self.depth)
            y_hat = self._decode_latents(payload, y_size)
            x_hat = self.g_s(y_hat.to(next(self.parameters()).device)[None])[0]
        finally:
            self.train(was_training)
        return bitstream.to_uint8(x_hat[:, :height, :width])

    def _encode_latents(self, y: torch.Tensor) -> bytes:
        raise NotImplementedError

    def _decode_latents(self, payload: bytes, size: tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError


class FactorizedPrior(Codec):
    """g_a -> EntropyBottleneck(M) -> g_s (see the module docstring)."""

    kind = 1

    def __init__(self, channels: int = 128, latent_channels: int = 192, depth: int = 4):
        super().__init__(channels, latent_channels, depth)
        self.entropy_bottleneck = EntropyBottleneck(latent_channels)

    def forward(self, x: torch.Tensor) -> CodecOutput:
        y = self.g_a(x)
        y_hat, y_likelihoods = self.entropy_bottleneck(y)
        return CodecOutput(self.g_s(y_hat), (y_likelihoods,))

    def _encode_latents(self, y: torch.Tensor) -> bytes:
        encoder = bitstream.new_encoder()
        self.entropy_bottleneck.encode(encoder, self.entropy_bottleneck.symbols(y[0]))
        return bitstream.finish(encoder)

    def _decode_latents(self, payload: bytes, size: tuple[int, int]) -> torch.Tensor:
        decoder = bitstream.new_decoder(payload)
        return self.entropy_bottleneck.dequantize(self.entropy_bottleneck.decode(decoder, size))


class ScaleHyperprior(Codec):
    """g_a -> y; h_a(|y|) -> z -> EntropyBottleneck(Nh); h_s(z_hat) -> scales -> GaussianConditional(y) -> g_s."""

    kind = 2

    def __init__(self, channels: int = 128, latent_channels: int = 192, depth: int = 4,
                 hyper_channels: int | None = None):
        super().__init__(channels, latent_channels, depth)
        hyper = int(hyper_channels or channels)
        self.hyper_channels = hyper
        self.h_a = nn.Sequential(conv(latent_channels, hyper, 3, 1), nn.ReLU(inplace=True),
                                 conv(hyper, hyper), nn.ReLU(inplace=True), conv(hyper, hyper))
        self.h_s = nn.Sequential(deconv(hyper, hyper), nn.ReLU(inplace=True), deconv(hyper, hyper),
                                 nn.ReLU(inplace=True), conv(hyper, latent_channels, 3, 1), nn.ReLU(inplace=True))
        self.entropy_bottleneck = EntropyBottleneck(hyper)
        self.gaussian_conditional = GaussianConditional()

    @property
    def stride(self) -> int:
        return 2 ** (self.depth + 2)

    def config(self) -> dict[str, int]:
        return {**super().config(), "hyper_channels": self.hyper_channels}

    def forward(self, x: torch.Tensor) -> CodecOutput:
        y = self.g_a(x)
        z = self.h_a(torch.abs(y))
        z_hat, z_likelihoods = self.entropy_bottleneck(z)
        scales = self.h_s(z_hat)
        y_hat, y_likelihoods = self.gaussian_conditional(y, scales)
        return CodecOutput(self.g_s(y_hat), (y_likelihoods, z_likelihoods))

    def _scale_indexes(self, z_hat: torch.Tensor) -> torch.Tensor:
        """The table of every element of y, from h_s run in float64 on the CPU (so that encoder and decoder,
        whatever device runs the transforms, pick the same tables)."""
        h_s = self.h_s
        state = {k: v.detach().double().cpu() for k, v in h_s.state_dict().items()}
        scales = torch.func.functional_call(h_s, state, (z_hat.double().cpu()[None],))[0]
        return self.gaussian_conditional.indexes(scales)

    def _encode_latents(self, y: torch.Tensor) -> bytes:
        eb, gc = self.entropy_bottleneck, self.gaussian_conditional
        z = self.h_a(torch.abs(y))
        z_symbols = eb.symbols(z[0])
        indexes = self._scale_indexes(eb.dequantize(z_symbols))
        encoder = bitstream.new_encoder()
        eb.encode(encoder, z_symbols)
        gc.encode(encoder, gc.symbols(y[0].cpu(), indexes), indexes)
        return bitstream.finish(encoder)

    def _decode_latents(self, payload: bytes, size: tuple[int, int]) -> torch.Tensor:
        eb, gc = self.entropy_bottleneck, self.gaussian_conditional
        decoder = bitstream.new_decoder(payload)
        z_hat = eb.dequantize(eb.decode(decoder, (size[0] // 4, size[1] // 4)))
        indexes = self._scale_indexes(z_hat)
        return gc.dequantize(gc.decode(decoder, indexes), indexes)


CODECS = {"factorized": FactorizedPrior, "hyperprior": ScaleHyperprior}


def build_codec(prior: str = "hyperprior", **kwargs) -> Codec:
    if prior not in CODECS:
        raise ValueError(f"prior: expected one of {sorted(CODECS)}, got {prior!r}")
    if prior == "factorized":
        kwargs.pop("hyper_channels", None)
    return CODECS[prior](**kwargs)


__all__ = ["Codec", "CodecOutput", "FactorizedPrior", "ScaleHyperprior", "CODECS", "build_codec",
           "bits_per_pixel", "analysis_transform", "synthesis_transform"]
