"""The codec's bitstream: exact round trips, bpp from the bytes, decoding in another process, the header's checks."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.image_compression import bitstream
from tasks.image_compression.entropy import EntropyBottleneck, GaussianConditional, quantize_pmf
from tasks.image_compression.models import FactorizedPrior, ScaleHyperprior

ROOT = Path(__file__).resolve().parents[3]


def _codec(cls, seed=0):
    torch.manual_seed(seed)
    codec = cls(channels=16, latent_channels=24, depth=3) if cls is FactorizedPrior else \
        cls(channels=16, latent_channels=24, depth=3, hyper_channels=16)
    codec.eval()
    codec.update()
    return codec


def _image(h=45, w=70, seed=0):
    g = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, h // 8 + 1, w // 8 + 1, generator=g), size=(h, w),
                                             mode="bilinear", align_corners=False)[0]
    return (smooth * 255).round().to(torch.uint8)


def test_quantize_pmf_sums_to_the_precision_and_keeps_every_symbol():
    freq = quantize_pmf(np.array([0.5, 0.25, 0.25 - 1e-12, 1e-12, 0.0]))
    assert freq.sum() == 2 ** 16
    assert (freq >= 1).all()
    assert freq[0] == pytest.approx(2 ** 15, abs=3)  # half of the mass, up to the +1 floor of the others
    assert list(quantize_pmf(np.array([1.0, 1.0]))) == [2 ** 15, 2 ** 15]


@pytest.mark.parametrize("cls", [FactorizedPrior, ScaleHyperprior])
def test_decoded_image_is_the_encoders_reconstruction_and_bpp_counts_the_bytes(cls):
    codec = _codec(cls)
    image = _image()
    data = codec.compress(image)
    decoded = codec.decompress(data)
    assert decoded.dtype == torch.uint8 and decoded.shape == image.shape
    # the encoder's own reconstruction: rounded latents through the synthesis (the eval-mode forward pass)
    with torch.no_grad():
        x_hat = codec(codec._pad(image[None].float() / 255)).x_hat[0, :, :45, :70]
    assert torch.equal(decoded, bitstream.to_uint8(x_hat))
    # the header: kind, 2-byte tag, two 1-byte varints; the rest is the range coder's payload
    assert data[0] == cls.kind and data[1:3] == bytes(codec.tag.tolist())
    assert data[3] == 44 and data[4] == 69


def test_rate_estimate_matches_the_bitstream():
    """The likelihoods' -log2 sum (what training minimises) predicts the real size within a few bytes."""
    codec = _codec(ScaleHyperprior, seed=1)
    image = _image(96, 128, seed=3)
    data = codec.compress(image)
    with torch.no_grad():
        out = codec(image[None].float() / 255)
    estimate_bytes = sum(float(-torch.log2(lk).sum()) for lk in out.likelihoods) / 8
    overhead = 5 + 4  # header + the range coder's final word
    assert abs(len(data) - estimate_bytes) < overhead + 0.02 * estimate_bytes


@pytest.mark.slow
def test_decoding_in_another_process_gives_the_same_image_bit_for_bit(tmp_path):
    codec = _codec(ScaleHyperprior, seed=2)
    torch.save(codec.state_dict(), tmp_path / "codec.pt")
    images = [_image(40, 72, seed=s) for s in range(3)]
    streams = [codec.compress(im) for im in images]
    for i, data in enumerate(streams):
        (tmp_path / f"{i}.bin").write_bytes(data)
    here = [hashlib.sha256(codec.decompress(d).numpy().tobytes()).hexdigest() for d in streams]
    script = (
        "import hashlib, sys, torch\n"
        "from tasks.image_compression.models import ScaleHyperprior\n"
        "torch.set_num_threads(2)\n"
        "codec = ScaleHyperprior(channels=16, latent_channels=24, depth=3, hyper_channels=16)\n"
        "codec.load_state_dict(torch.load(sys.argv[1] + '/codec.pt', weights_only=True))\n"
        "for i in range(3):\n"
        "    image = codec.decompress(open(f'{sys.argv[1]}/{i}.bin', 'rb').read())\n"
        "    print(hashlib.sha256(image.numpy().tobytes()).hexdigest())\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, env=env,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == here


def test_another_model_refuses_the_stream():
    data = _codec(FactorizedPrior, seed=0).compress(_image())
    other = _codec(FactorizedPrior, seed=1)
    with pytest.raises(ValueError, match="another model"):
        other.decompress(data)
    with pytest.raises(ValueError, match="kind"):
        _codec(ScaleHyperprior).decompress(data)


def test_compress_needs_the_tables():
    codec = FactorizedPrior(channels=8, latent_channels=8, depth=2)
    with pytest.raises(RuntimeError, match="update"):
        codec.compress(_image())


def test_tables_travel_in_the_state_dict():
    codec = _codec(ScaleHyperprior, seed=4)
    image = _image(33, 50, seed=5)
    fresh = ScaleHyperprior(channels=16, latent_channels=24, depth=3, hyper_channels=16)
    fresh.load_state_dict(codec.state_dict())
    assert fresh.ready
    assert torch.equal(fresh.decompress(codec.compress(image)), codec.decompress(codec.compress(image)))


def test_out_of_range_latents_are_clamped_consistently():
    """Latents beyond a table's range are clamped on both sides: the stream still decodes to the encoder's values."""
    eb = EntropyBottleneck(2)
    eb.update()
    x = torch.tensor([[[0.2, 1e4, -1e4]], [[3.0, -2.0, 0.0]]])
    symbols = eb.symbols(x)
    encoder = bitstream.new_encoder()
    eb.encode(encoder, symbols)
    decoded = eb.decode(bitstream.new_decoder(bitstream.finish(encoder)), (1, 3))
    assert torch.equal(decoded, symbols)
    values = eb.dequantize(decoded)
    assert values[0, 0, 1] < 1e4 and values[0, 0, 1] == values[0, 0, 1].round()  # clamped to the table's end
    gc = GaussianConditional()
    gc.update()
    y = torch.tensor([[[0.4, -7.6, 5e3]]])
    idx = gc.indexes(torch.full_like(y, 0.5))
    sym = gc.symbols(y, idx)
    enc = bitstream.new_encoder()
    gc.encode(enc, sym, idx)
    assert torch.equal(gc.decode(bitstream.new_decoder(bitstream.finish(enc)), idx), sym)
    radius = (int(gc.freq_length[idx[0, 0, 0]]) - 1) // 2
    assert gc.dequantize(sym, idx).tolist() == [[[0.0, -radius, radius]]]


def test_varints_round_trip():
    for value in (0, 1, 127, 128, 300, 16383, 16384, 2 ** 40):
        encoded = bitstream.write_varint(value)
        assert bitstream.read_varint(encoded + b"xyz", 0) == (value, len(encoded))
    assert len(bitstream.write_varint(127)) == 1 and len(bitstream.write_varint(128)) == 2
