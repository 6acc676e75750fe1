"""Entropy models of the Ballé family, for training (likelihoods) and for coding (integer tables).

`EntropyBottleneck`: the factorized prior (Ballé, Minnen, Singh, Hwang, Johnston, "Variational image
compression with a scale hyperprior", ICLR 2018, Appendix 6.1): per channel, a cumulative density
`c = f_K o ... o f_1` with `f_k(x) = g_k(H_k x + b_k)`, `g_k(x) = x + a_k * tanh(x)` (the last without
the tanh), K = 4 with filters (3, 3, 3) and `init_scale = 10`. The likelihood of a quantized value
is `c(y + 1/2) - c(y - 1/2)`, computed on logits with the sign trick for precision. Three quantiles
per channel (the tails of mass `tail_mass / 2` and the median) are learned by an auxiliary loss
and fix the channel's coding range.

`GaussianConditional`: the scale hyperprior's conditional, a zero-mean Gaussian convolved with a unit
uniform, `p(y) = Phi((1/2 - |y|) / s) - Phi((-1/2 - |y|) / s)` with `s >= 0.11` (Sec. 3 and 6.2).
For coding, the predicted scale is snapped up to one of 64 log-spaced levels in [0.11, 256], each
with its own table (the reference implementation's `scale_table`).

Quantization (Ballé et al., ICLR 2017, Sec. 2.1): additive uniform noise U(-1/2, 1/2) in training,
rounding at test (around the learned medians for the bottleneck).

Coding tables (`update()`): each distribution becomes a table of integer frequencies summing to
2**16 with every symbol at least 1, stored in the module's buffers, so encoder and decoder read the
same integers from the checkpoint and never recompute a density. Deviation from the reference
implementation: values outside a table's range are clamped to its end symbols, whose frequencies
include the tails (the reference codes them with an escape); the encoder reconstructs from the
clamped values too, so the bitstream and the decoded image always agree. The range covers all but
`tail_mass = 1e-9` of each density, so clamping is rare.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tasks.image_compression.ops import lower_bound

PRECISION = 16  #: table frequencies sum to 2**PRECISION


def quantize_pmf(pmf: np.ndarray, precision: int = PRECISION) -> np.ndarray:
    """Integer frequencies >= 1 summing to exactly 2**precision, close to `pmf` (float64, any positive total).

    Each entry gets floor(p * free) + 1 (free = total minus one per symbol); what floor leaves over goes
    to the largest entries, one each. Plain IEEE arithmetic: the same input gives the same table anywhere.
    """
    pmf = np.asarray(pmf, dtype=np.float64)
    total = 1 << precision
    if pmf.ndim != 1 or len(pmf) < 1 or len(pmf) > total // 2:
        raise ValueError(f"quantize_pmf: need 1 to {total // 2} probabilities, got shape {pmf.shape}")
    pmf = np.clip(pmf, 0.0, None)
    pmf = pmf / pmf.sum() if pmf.sum() > 0 else np.full(len(pmf), 1.0 / len(pmf))
    free = total - len(pmf)
    freq = np.floor(pmf * free).astype(np.int64) + 1
    short = total - int(freq.sum())
    if short > 0:
        order = np.argsort(-pmf, kind="stable")
        freq[order[np.arange(short) % len(pmf)]] += 1
    return freq


def _categorical(freq: np.ndarray):
    import constriction

    return constriction.stream.model.Categorical(freq.astype(np.float64), perfect=False)


class EntropyBottleneck(nn.Module):
    """Factorized prior over `channels` (see the module docstring)."""

    def __init__(self, channels: int, filters: Sequence[int] = (3, 3, 3), init_scale: float = 10.0,
                 tail_mass: float = 1e-9, likelihood_bound: float = 1e-9):
        super().__init__()
        self.channels, self.filters = int(channels), tuple(int(f) for f in filters)
        self.tail_mass, self.likelihood_bound = float(tail_mass), float(likelihood_bound)
        dims = (1, *self.filters, 1)
        scale = init_scale ** (1.0 / (len(self.filters) + 1))
        self.matrices, self.biases, self.factors = nn.ParameterList(), nn.ParameterList(), nn.ParameterList()
        for i in range(len(self.filters) + 1):
            init = math.log(math.expm1(1.0 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.empty(channels, dims[i + 1], 1).uniform_(-0.5, 0.5)))
            if i < len(self.filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))
        self.quantiles = nn.Parameter(torch.tensor([-init_scale, 0.0, init_scale]).repeat(channels, 1, 1))
        target = math.log(2.0 / tail_mass - 1.0)
        self.register_buffer("target", torch.tensor([-target, 0.0, target]), persistent=False)
        # coding tables (update()): frequencies per channel, padded; table length; symbol of entry 0
        self.register_buffer("freq", torch.zeros(0, dtype=torch.int32))
        self.register_buffer("freq_length", torch.zeros(0, dtype=torch.int32))
        self.register_buffer("offset", torch.zeros(0, dtype=torch.int32))

    # -- density ------------------------------------------------------------------------------------
    def _logits_cumulative(self, x: torch.Tensor, stop_gradient: bool) -> torch.Tensor:
        """x: (C, 1, N) -> logits of the cumulative (C, 1, N)."""
        logits = x
        for i, matrix in enumerate(self.matrices):
            matrix = F.softplus(matrix.detach() if stop_gradient else matrix)
            bias = self.biases[i].detach() if stop_gradient else self.biases[i]
            logits = torch.matmul(matrix, logits) + bias
            if i < len(self.factors):
                factor = self.factors[i].detach() if stop_gradient else self.factors[i]
                logits = logits + torch.tanh(factor) * torch.tanh(logits)
        return logits

    def _likelihood(self, values: torch.Tensor) -> torch.Tensor:
        """values (C, 1, N) -> P(value - 1/2 < y < value + 1/2)."""
        lower = self._logits_cumulative(values - 0.5, stop_gradient=False)
        upper = self._logits_cumulative(values + 0.5, stop_gradient=False)
        sign = -torch.sign(lower + upper).detach()
        return (torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs()

    @property
    def medians(self) -> torch.Tensor:
        return self.quantiles[:, 0, 1].detach()

    def aux_loss(self) -> torch.Tensor:
        """Moves the quantiles to the tails and median of the current density (only `quantiles` gets gradients)."""
        logits = self._logits_cumulative(self.quantiles, stop_gradient=True)
        return (logits - self.target).abs().sum()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> (quantized x: noisy in training, rounded at eval; likelihoods)."""
        if self.training:
            x_hat = x + torch.empty_like(x).uniform_(-0.5, 0.5)
        else:
            medians = self.medians.view(1, -1, 1, 1)
            x_hat = torch.round(x - medians) + medians
        values = x_hat.transpose(0, 1).reshape(self.channels, 1, -1)
        likelihood = self._likelihood(values).reshape(self.channels, x.shape[0], *x.shape[2:]).transpose(0, 1)
        return x_hat, lower_bound(likelihood, self.likelihood_bound)

    # -- coding ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self) -> None:
        """Tabulate each channel's density over its learned range [lower quantile, upper quantile]."""
        q = self.quantiles.detach().double().cpu()[:, 0, :]
        medians = q[:, 1]
        below = torch.ceil(medians - q[:, 0]).clamp(min=0).long()
        above = torch.ceil(q[:, 2] - medians).clamp(min=0).long()
        lengths = below + above + 1
        width = int(lengths.max())
        freq = torch.zeros(self.channels, width, dtype=torch.int32)
        for c in range(self.channels):
            symbols = torch.arange(-int(below[c]), int(above[c]) + 1, dtype=torch.float64) + medians[c]
            lower = self._cumulative_logits_double(c, symbols - 0.5)
            upper = self._cumulative_logits_double(c, symbols + 0.5)
            cdf_low, cdf_high = torch.sigmoid(lower), torch.sigmoid(upper)
            pmf = (cdf_high - cdf_low).clamp(min=0)
            pmf[0] += cdf_low[0]            # the lower tail is clamped onto the first symbol
            pmf[-1] += 1.0 - cdf_high[-1]   # the upper tail onto the last
            freq[c, : len(pmf)] = torch.from_numpy(quantize_pmf(pmf.numpy())).int()
        self.freq = freq.to(self.quantiles.device)
        self.freq_length = lengths.int().to(self.quantiles.device)
        self.offset = (-below).int().to(self.quantiles.device)

    def _cumulative_logits_double(self, channel: int, x: torch.Tensor) -> torch.Tensor:
        logits = x.view(1, -1)
        for i, matrix in enumerate(self.matrices):
            logits = F.softplus(matrix[channel].detach().double().cpu()) @ logits + \
                self.biases[i][channel].detach().double().cpu()
            if i < len(self.factors):
                logits = logits + torch.tanh(self.factors[i][channel].detach().double().cpu()) * torch.tanh(logits)
        return logits.view(-1)

    @property
    def ready(self) -> bool:
        return self.freq.numel() > 0

    def symbols(self, x: torch.Tensor) -> torch.Tensor:
        """(C, H, W) float -> table indices (C, H, W) int64: round(x - median), clamped to the channel's range."""
        medians = self.medians.view(-1, 1, 1).to(x.device)
        low = self.offset.view(-1, 1, 1).long().to(x.device)
        high = low + self.freq_length.view(-1, 1, 1).long().to(x.device) - 1
        s = torch.round(x - medians).long()
        return torch.maximum(torch.minimum(s, high), low) - low

    def dequantize(self, indices: torch.Tensor) -> torch.Tensor:
        """Table indices (C, H, W) -> the quantized values (float32) the synthesis sees."""
        medians = self.medians.view(-1, 1, 1).to(indices.device)
        return (indices + self.offset.view(-1, 1, 1).long().to(indices.device)).float() + medians

    def encode(self, encoder, indices: torch.Tensor) -> None:
        array = indices.cpu().numpy().astype(np.int32)
        for c in range(self.channels):
            encoder.encode(array[c].ravel(), _categorical(self._table(c)))

    def decode(self, decoder, size: tuple[int, int]) -> torch.Tensor:
        out = np.empty((self.channels, size[0] * size[1]), dtype=np.int64)
        for c in range(self.channels):
            out[c] = decoder.decode(_categorical(self._table(c)), size[0] * size[1])
        return torch.from_numpy(out).view(self.channels, *size)

    def _table(self, c: int) -> np.ndarray:
        return self.freq[c, : int(self.freq_length[c])].cpu().numpy()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("freq", "freq_length", "offset"):  # tables have the size update() gave them
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def default_scale_table(low: float = 0.11, high: float = 256.0, levels: int = 64) -> torch.Tensor:
    return torch.exp(torch.linspace(math.log(low), math.log(high), levels, dtype=torch.float64))


class GaussianConditional(nn.Module):
    """Zero-mean Gaussian conditional with predicted scales (see the module docstring)."""

    def __init__(self, scale_bound: float = 0.11, tail_mass: float = 1e-9, likelihood_bound: float = 1e-9,
                 scale_table: Sequence[float] | None = None):
        super().__init__()
        self.scale_bound, self.tail_mass, self.likelihood_bound = float(scale_bound), float(tail_mass), \
            float(likelihood_bound)
        table = default_scale_table() if scale_table is None else torch.tensor(scale_table, dtype=torch.float64)
        if table.dim() != 1 or len(table) < 2 or bool((table[1:] <= table[:-1]).any()):
            raise ValueError("scale_table: expected an increasing list of at least 2 scales")
        self.register_buffer("scale_table", table)
        self.register_buffer("freq", torch.zeros(0, dtype=torch.int32))
        self.register_buffer("freq_length", torch.zeros(0, dtype=torch.int32))

    @staticmethod
    def _standard_cumulative(x: torch.Tensor) -> torch.Tensor:
        """Phi(x) as 0.5 erfc(-x / sqrt 2), exact in the lower tail where the likelihood is evaluated; ONNX has
        no Erfc, so an export writes 0.5 (1 + erf(x / sqrt 2)) (equal up to rounding in the far tail)."""
        if torch.onnx.is_in_onnx_export():
            return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))
        return 0.5 * torch.erfc(-x / math.sqrt(2.0))

    def likelihood(self, y_hat: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        scales = lower_bound(scales, self.scale_bound)
        values = y_hat.abs()
        upper = self._standard_cumulative((0.5 - values) / scales)
        lower = self._standard_cumulative((-0.5 - values) / scales)
        return lower_bound(upper - lower, self.likelihood_bound)

    def forward(self, y: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y_hat = y + torch.empty_like(y).uniform_(-0.5, 0.5) if self.training else torch.round(y)
        return y_hat, self.likelihood(y_hat, scales)

    # -- coding ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self) -> None:
        """One table per scale level, over [-R, R] with R = ceil(s * Phi^-1(1 - tail_mass / 2))."""
        from scipy.stats import norm

        multiplier = float(norm.isf(self.tail_mass / 2))
        scales = self.scale_table.double().cpu()
        radii = torch.ceil(scales * multiplier).long()
        width = int(2 * radii.max() + 1)
        freq = torch.zeros(len(scales), width, dtype=torch.int32)
        for i, (s, r) in enumerate(zip(scales.tolist(), radii.tolist())):
            k = np.arange(-r, r + 1, dtype=np.float64)
            cdf_high, cdf_low = norm.cdf((k + 0.5) / s), norm.cdf((k - 0.5) / s)
            pmf = cdf_high - cdf_low
            pmf[0] += cdf_low[0]
            pmf[-1] += 1.0 - cdf_high[-1]
            freq[i, : len(pmf)] = torch.from_numpy(quantize_pmf(pmf)).int()
        self.freq = freq.to(self.scale_table.device)
        self.freq_length = (2 * radii + 1).int().to(self.scale_table.device)

    @property
    def ready(self) -> bool:
        return self.freq.numel() > 0

    def indexes(self, scales: torch.Tensor) -> torch.Tensor:
        """The table of each element: the smallest tabulated scale >= the predicted one (the largest table
        for scales above it). Computed in float64 so encoder and decoder agree."""
        table = self.scale_table.to(scales.device, torch.float64)
        scales = scales.double().clamp(min=self.scale_bound)
        return torch.searchsorted(table, scales.contiguous(), right=False).clamp(max=len(table) - 1)

    def symbols(self, y: torch.Tensor, indexes: torch.Tensor) -> torch.Tensor:
        """round(y), clamped to each element's table range, as table indices (>= 0)."""
        radius = ((self.freq_length.long().to(y.device)[indexes] - 1) // 2)
        s = torch.round(y).long()
        return torch.maximum(torch.minimum(s, radius), -radius) + radius

    def dequantize(self, symbols: torch.Tensor, indexes: torch.Tensor) -> torch.Tensor:
        radius = ((self.freq_length.long().to(symbols.device)[indexes] - 1) // 2)
        return (symbols - radius).float()

    def encode(self, encoder, symbols: torch.Tensor, indexes: torch.Tensor) -> None:
        sym = symbols.cpu().numpy().ravel().astype(np.int32)
        idx = indexes.cpu().numpy().ravel()
        for level in np.unique(idx):
            encoder.encode(sym[idx == level], _categorical(self._table(int(level))))

    def decode(self, decoder, indexes: torch.Tensor) -> torch.Tensor:
        idx = indexes.cpu().numpy().ravel()
        out = np.empty(idx.shape, dtype=np.int64)
        for level in np.unique(idx):
            mask = idx == level
            out[mask] = decoder.decode(_categorical(self._table(int(level))), int(mask.sum()))
        return torch.from_numpy(out).view(indexes.shape)

    def _table(self, level: int) -> np.ndarray:
        return self.freq[level, : int(self.freq_length[level])].cpu().numpy()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("freq", "freq_length", "scale_table"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


__all__ = ["EntropyBottleneck", "GaussianConditional", "quantize_pmf", "default_scale_table", "PRECISION"]
