"""`codec`: the search space of a Ballé-family codec's widths and depth.

Choices (all JSON-friendly integers):

- `channels`: N, the width inside g_a / g_s;
- `latent_channels`: M, the channels of the latent y;
- `depth`: the strided layers in g_a (and g_s): 3 (downsampling by 8) or 4 (by 16, the paper's);
- `hyper_channels`: the width of h_a / h_s and of z (scale hyperprior only).

`prior` (not a choice) picks the factorized prior or the scale hyperprior. `cost_size` [H, W] is the
image size params / MACs / latency are reported at (default 512 x 768, a Kodak image); MACs count
g_a + g_s (+ h_a + h_s), i.e. one encode and one decode. The baselines are the paper's settings:
`balle2018` (N = 128, M = 192, depth 4; Ballé et al., ICLR 2018, for the lower rates) when the
options hold them, and `default` (the space's default arch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from core.engine.registry import SPACES, ConfigError
from core.api import Arch, Choice, SearchSpace
from tasks.image_compression.models import CODECS, Codec, build_codec


@SPACES.register("codec")
class CodecSpace(SearchSpace):
    def __init__(self, prior: str = "hyperprior", channels: Sequence[int] = (32, 48, 64, 96, 128),
                 latent_channels: Sequence[int] = (48, 64, 96, 128, 192), depth: Sequence[int] = (3, 4),
                 hyper_channels: Sequence[int] = (32, 64, 128), cost_size: Sequence[int] = (512, 768),
                 default: dict | None = None):
        if prior not in CODECS:
            raise ConfigError(f"space.prior: expected one of {sorted(CODECS)}, got {prior!r}")
        for key, values, low in (("channels", channels, 1), ("latent_channels", latent_channels, 1),
                                 ("depth", depth, 2), ("hyper_channels", hyper_channels, 1)):
            if not values or any(not isinstance(v, int) or v < low for v in values):
                raise ConfigError(f"space.{key}: expected a list of integers >= {low}, got {values!r}")
        if len(cost_size) != 2 or any(int(v) < 16 for v in cost_size):
            raise ConfigError(f"space.cost_size: expected [H, W] of at least 16 pixels, got {cost_size!r}")
        self.prior = prior
        self.cost_size = (int(cost_size[0]), int(cost_size[1]))
        defaults = dict(default or {})
        choices = [self._choice("channels", channels, defaults), self._choice("latent_channels", latent_channels,
                                                                             defaults),
                   self._choice("depth", depth, defaults)]
        if prior == "hyperprior":
            choices.append(self._choice("hyper_channels", hyper_channels, defaults))
        unknown = set(defaults) - {c.name for c in choices}
        if unknown:
            raise ConfigError(f"space.default.{sorted(unknown)[0]}: not a choice of this space")
        super().__init__(choices)

    @staticmethod
    def _choice(name: str, options: Sequence[int], defaults: dict[str, Any]) -> Choice:
        options = tuple(int(v) for v in options)
        default = defaults.get(name, options[len(options) // 2])
        if default not in options:
            raise ConfigError(f"space.default.{name}: {default!r} is not one of {list(options)}")
        return Choice(name, options, default)

    def build(self, arch: Arch, **_: Any) -> Codec:
        """The codec of `arch` (extra keyword arguments such as num_classes are ignored)."""
        arch = self.check(arch)
        return build_codec(self.prior, **dict(arch))

    def baseline(self, name: str) -> Arch:
        if name == "default":
            return self.default()
        if name == "balle2018":
            values = {"channels": 128, "latent_channels": 192, "depth": 4, "hyper_channels": 128}
            arch = {k: v for k, v in values.items() if k in self}
            missing = [k for k, v in arch.items() if v not in self.choice(k).options]
            if missing:
                raise ConfigError(f"retrain.baselines: 'balle2018' needs {', '.join(f'{k}={arch[k]}' for k in missing)}"
                                  " among the space's options")
            return self.check(arch)
        raise ConfigError(f"retrain.baselines: unknown baseline {name!r}; known: balle2018, default")


__all__ = ["CodecSpace"]
