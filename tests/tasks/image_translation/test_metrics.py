"""tasks.image_translation.metrics: PSNR/SSIM by hand, MS-SSIM only on large images, distribution distances
labelled with their extractor, FID/KID from a local Inception weights file (checked weights-only)."""

import math
import pickle

import pytest
import torch
from torch import nn

from core.engine.registry import ConfigError
from tasks.image_translation.metrics import (DistributionDistance, PhotoClassifier, UInt8Features, make_extractor,
                                             paired_metrics, train_photo_classifier)


def test_paired_metrics_match_hand_values():
    target = torch.zeros(2, 3, 32, 32)                 # 0.5 grey in [0, 1]
    pred = target.clone()
    pred[1] += 0.2                                     # +0.1 in [0, 1]: MSE 0.01, PSNR 20 dB
    m = paired_metrics(pred, target)
    assert math.isinf(m["psnr"][0].item()) and m["psnr"][1].item() == pytest.approx(20.0, abs=1e-4)
    assert m["ssim"][0].item() == pytest.approx(1.0, abs=1e-6) and m["ssim"][1].item() < 1.0
    assert "ms_ssim" not in m
    big = torch.rand(1, 3, 176, 176) * 2 - 1
    assert paired_metrics(big, big)["ms_ssim"].item() == pytest.approx(1.0, abs=1e-5)


def test_distances_are_labelled_with_their_extractor_and_never_fid():
    torch.manual_seed(0)
    extractor = UInt8Features(PhotoClassifier(), num_features=64)
    same = DistributionDistance(extractor, "photo_classifier", kid_subset_size=8)
    far = DistributionDistance(extractor, "photo_classifier", kid_subset_size=8)
    real = torch.rand(24, 3, 32, 32) * 2 - 1
    same.update(real, real)
    far.update(-real.abs(), real)
    near, apart = same.compute(), far.compute()
    assert set(near) == {"fd_photo_classifier", "kd_photo_classifier"}
    assert abs(near["fd_photo_classifier"]) < 1e-3 < apart["fd_photo_classifier"]
    with pytest.raises(ConfigError, match="feature_extractor"):
        make_extractor({"feature_extractor": "vgg"})
    assert make_extractor({}) is None


@pytest.mark.slow
def test_photo_classifier_learns_to_name_the_photographs():
    model = train_photo_classifier(steps=60)
    from tasks.image_translation.data import load_embedded_tiles

    tiles = load_embedded_tiles("colorize")
    keep = tiles["split"] == 2
    x = torch.from_numpy(tiles["b"][keep]).float().div(127.5).sub(1.0)
    y = torch.from_numpy(tiles["photo"][keep].astype("int64"))
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.3  # 10 photographs: chance is 0.1


@pytest.mark.slow
def test_fid_and_kid_from_a_local_inception_file(tmp_path, monkeypatch):
    """torch-fidelity's InceptionV3 with random weights (built without a download) saved as a state dict: FID/KID
    load it from the file; a file that is not weights-only is refused with the key's name."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    monkeypatch.setattr(fe, "load_state_dict_from_url", lambda *a, **k: None)
    monkeypatch.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
    torch.manual_seed(0)
    state = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict()
    monkeypatch.undo()
    path = tmp_path / "inception.pt"
    torch.save(state, path)
    extractor, label = make_extractor({"inception_weights": str(path), "feature_extractor": "photo_classifier"})
    assert label == "inception"
    for name, value in state.items():
        torch.testing.assert_close(extractor.state_dict()[name], value.to(extractor.state_dict()[name].dtype))
    dist = DistributionDistance(extractor, label, kid_subset_size=4)
    real = torch.rand(6, 3, 32, 32) * 2 - 1
    dist.update(real, real)
    assert set(dist.compute()) == {"fid", "kid"}
    with pytest.raises(FileNotFoundError, match="metrics.inception_weights"):
        make_extractor({"inception_weights": str(tmp_path / "missing.pt")})
    unsafe = tmp_path / "unsafe.pt"
    unsafe.write_bytes(pickle.dumps(nn.Linear(2, 2)))
    with pytest.raises(ConfigError, match="not a weights-only state dict"):
        make_extractor({"inception_weights": str(unsafe)})
