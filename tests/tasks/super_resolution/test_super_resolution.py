"""Trilevel NAS for SR: relaxation, MACs model, search, basicsr bridge, metrics and data."""

import random

import numpy as np
import pytest
import torch

import tasks.super_resolution  # noqa: F401  (registrations)
from core.cost import count_macs, count_params
from core.engine.registry import DATASETS, ConfigError
from core.api import Arch
from tasks.super_resolution.metrics import psnr_y, ssim_y, to_image
from tasks.super_resolution.search import TrilevelSearcher
from tasks.super_resolution.space import TrilevelSpace, msrresnet_budget, msrresnet_macs
from tasks.super_resolution.task import train_steps


def tiny_space(scale=2, **kw):
    kw = {"num_feat": 8, "stem_cells": 1, "path_cells": 2, "ops_per_cell": 2, **kw}
    return TrilevelSpace(scale=scale, **kw)


def tiny_data(scale=2, **kw):
    kw = {"name": "sr_embedded", "patch_size": 12, "samples_per_epoch": 32, "hr_crop": 48, **kw}
    return DATASETS.build(kw, "data", scale=scale)


def one_hot_supernet(space, arch, logit=3.0):
    """A supernet whose gamma, alpha and beta logits all point at `arch`."""
    sup = space.supernet()
    with torch.no_grad():
        for p in sup.arch_parameters():
            p.copy_(torch.randn(p.shape) * 0.1)
        sup.arch_gamma[sup.paths.index(arch["network.path"])] += logit
        path = arch["network.path"]
        cells = [(f"stem{i}", c) for i, c in enumerate(sup.stem)]
        cells += [(f"cell{i}", sup.edges[path[:k]])
                  for i, k in enumerate(k for k in range(1, len(path) + 1) if path[k - 1] == "C")]
        for prefix, cell in cells:
            for j in range(sup.ops_per_cell):
                cell.arch_alpha[j, sup.ops.index(arch[f"{prefix}.op{j}"])] += logit
            for j in range(sup.ops_per_cell - 1):
                cell.arch_beta[j, sup.widths.index(arch[f"{prefix}.width{j}"])] += logit
    return sup


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_sparsestmax_on_three_levels_is_one_hot_at_the_end_of_the_schedule(scale):
    torch.manual_seed(scale)
    space = tiny_space(scale=scale, path_cells=2, ops_per_cell=3)
    sup = space.supernet()
    with torch.no_grad():
        for p in sup.arch_parameters():
            p.copy_(torch.randn(p.shape) * 0.3)
    rows = lambda: [sup.relaxed(sup.arch_gamma)[None]] + [  # noqa: E731
        sup.relaxed(t) for _, c in sup.search_cells() for t in (c.arch_alpha, c.arch_beta)]
    sup.set_relaxation("sparsestmax", progress=0.1)
    early = torch.cat([r.reshape(-1, r.shape[-1]) for r in rows() if r.shape[-1] == 5])
    assert ((early > 0).sum(-1) > 1).any()  # mixtures early in the schedule
    sup.set_relaxation("sparsestmax", progress=1.0)
    for r in rows():
        r = r.reshape(-1, r.shape[-1])
        assert torch.equal((r == 1).sum(-1), torch.ones(len(r), dtype=torch.long))
        assert torch.equal((r == 0).sum(-1), torch.full((len(r),), r.shape[-1] - 1))
    # one-hot: the supernet computes exactly the derived network, whose weights it exports
    arch = space.check(Arch({c.name: c.default for c in space.choices} | sup.derive()))
    net = sup.export(arch.to_dict())
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        out = sup(x)
        assert out.shape == (2, 3, 8 * scale, 8 * scale) and torch.allclose(out, net(x), atol=1e-6)
    # softmax stays dense
    sup.set_relaxation("softmax")
    assert (sup.relaxed(sup.arch_gamma) > 0).all()


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_macs_model_matches_the_flop_counter(scale):
    space = tiny_space(scale=scale, ops_per_cell=3)
    rng = random.Random(scale)
    for _ in range(3):
        arch = space.sample(rng)
        net = space.build(arch)
        counted = count_macs(net, torch.zeros(1, 3, 10, 12))
        assert space.macs(arch, (10 * scale, 12 * scale)) == counted
        sup = one_hot_supernet(space, arch)
        sup.set_relaxation("sparsestmax", progress=1.0)
        with torch.no_grad():
            assert float(sup.expected_macs((10 * scale, 12 * scale))) == pytest.approx(counted, rel=1e-6)
    base = space.build(Arch({"baseline": "msrresnet", "num_feat": 12, "num_block": 2}))
    assert count_macs(base, torch.zeros(1, 3, 10, 12)) == msrresnet_macs(12, 2, scale, (10 * scale, 12 * scale))


def test_expected_macs_lives_on_the_arch_parameters_device():
    """The MACs term is built on the supernet's device (it once mixed CPU constants into CUDA parameters);
    the meta device catches the same mix-up without a GPU."""
    sup = tiny_space(scale=2, ops_per_cell=3).supernet().to("meta")
    sup.set_relaxation("softmax")
    assert sup.expected_macs((20, 24)).device.type == "meta"


@pytest.mark.slow
def test_search_derives_a_network_that_trains_and_beats_bicubic(tmp_path):
    torch.manual_seed(0)
    space = tiny_space()
    data = tiny_data()
    target = space.macs(space.default()) * 0.3
    searcher = TrilevelSearcher(space, epochs=3, steps_per_epoch=2, batch_size=4, lr=1e-3, arch_lr=3e-2,
                                macs_target=target, macs_weight=4.0, checkpoint=str(tmp_path / "s.pt"))
    arch = searcher.fit(None, data)
    assert space.check(arch) == arch
    assert [r["epoch"] for r in searcher.history] == [0, 1, 2]
    # the MACs term pulled the relaxed supernet's expected MACs down
    assert searcher.history[-1]["expected_macs"] < searcher.history[0]["expected_macs"]
    # resume from the checkpoint: the finished epochs are not run again
    more = TrilevelSearcher(space, epochs=4, steps_per_epoch=2, batch_size=4, lr=1e-3, arch_lr=3e-2,
                            macs_target=target, checkpoint=str(tmp_path / "s.pt"))
    more.fit(None, data)
    assert [r["epoch"] for r in more.history] == [0, 1, 2, 3]
    assert more.history[:3] == searcher.history

    net = space.build(arch)
    before = [p.detach().clone() for p in net.parameters()]
    assert np.isfinite(train_steps(net, data.train, 1, batch_size=4)[0])
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))

    # short training on one image beats MATLAB bicubic on it
    one = data.train.subset([0], samples_per_epoch=16)
    lr_img, hr_img = data.train.lrs[0], data.train.hrs[0]
    lr_t = torch.from_numpy(lr_img.transpose(2, 0, 1)).float()[None]
    hr_t = torch.from_numpy(hr_img.transpose(2, 0, 1)).float()
    bicubic = space.build(Arch({"baseline": "bicubic"}))
    net = space.build(arch)
    train_steps(net, one, 200, batch_size=8, lr=3e-3)
    with torch.no_grad():
        ours, base = psnr_y(net(lr_t)[0].clamp(0, 1), hr_t, 2), psnr_y(bicubic(lr_t)[0].clamp(0, 1), hr_t, 2)
    assert ours > base + 0.1, (ours, base)


def test_derived_network_is_in_basicsr_registry_and_builds_from_an_option_dict():
    from basicsr.archs import build_network
    from basicsr.utils.registry import ARCH_REGISTRY

    space = tiny_space()
    arch = space.sample(random.Random(1))
    assert ARCH_REGISTRY.get("TrilevelSRNet") is not None
    net = build_network({"type": "TrilevelSRNet", "upscale": 2, "num_feat": 8, "arch": arch.to_dict()})
    ours = space.build(arch)
    assert count_params(net) == count_params(ours)
    ours.load_state_dict(net.state_dict())
    x = torch.rand(1, 3, 9, 11)
    with torch.no_grad():
        out = net(x)
        assert out.shape == (1, 3, 18, 22) and torch.equal(out, ours(x))


def test_derived_network_starts_with_basicsrs_scaled_kaiming_init():
    """Kaiming-normal x 0.1 and zero biases on every conv (MSRResNet's init): with PyTorch's default init an
    18-resblock net trained 0.19 dB below the same net with this one (docs/benchmarks.md)."""
    from tasks.super_resolution.models import TrilevelSRNet

    arch = {"network.path": "CU", "stem0.op0": "resblock", "stem0.op1": "resblock", "stem0.width0": 12,
            "cell0.op0": "resblock", "cell0.op1": "resblock", "cell0.width0": 12}
    torch.manual_seed(0)
    net = TrilevelSRNet(2, 48, arch)
    conv = net.stem[0].ops[1].conv2                 # 48 -> 48, 3x3: fan_in 432, Kaiming std sqrt(2 / 432)
    assert float(conv.weight.detach().std()) == pytest.approx(0.1 * (2 / 432) ** 0.5, rel=0.05)
    assert all(float(m.bias.detach().abs().max()) == 0.0 for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    torch.manual_seed(0)
    default = TrilevelSRNet(2, 48, arch, init_scale=None).stem[0].ops[1].conv2
    # PyTorch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), std 1/sqrt(3 fan_in), about 2.9x the scaled init
    assert float(default.weight.detach().std()) == pytest.approx((1 / (3 * 432)) ** 0.5, rel=0.05)


def test_psnr_ssim_match_basicsr_and_an_independent_computation():
    from basicsr.metrics import calculate_psnr, calculate_ssim
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(0)
    hr = torch.rand(3, 40, 36, generator=g)
    sr = (hr + 0.05 * torch.randn(3, 40, 36, generator=g)).clamp(0, 1)
    scale = 3
    a, b = to_image(sr), to_image(hr)  # 8-bit BGR
    assert psnr_y(sr, hr, scale) == calculate_psnr(a, b, scale, test_y_channel=True)
    assert ssim_y(sr, hr, scale) == calculate_ssim(a, b, scale, test_y_channel=True)

    def y(img):  # ITU-R BT.601 luma of 8-bit BGR, as MATLAB's rgb2ycbcr
        img = img.astype(np.float64)
        return (24.966 * img[..., 0] + 128.553 * img[..., 1] + 65.481 * img[..., 2]) / 255.0 + 16.0

    ya, yb = y(a)[scale:-scale, scale:-scale], y(b)[scale:-scale, scale:-scale]
    hand = 10 * np.log10(255.0 ** 2 / np.mean((ya - yb) ** 2))
    assert psnr_y(sr, hr, scale) == pytest.approx(hand, abs=1e-3)
    ref = structural_similarity(ya, yb, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                data_range=255.0)
    assert ssim_y(sr, hr, scale) == pytest.approx(ref, abs=1e-3)


def test_folders_hr_only_and_paired_layouts(tmp_path):
    import cv2
    from basicsr.utils.matlab_functions import imresize

    rng = np.random.default_rng(0)
    hr_dir, lr_dir = tmp_path / "HR", tmp_path / "LR"
    hr_dir.mkdir(), lr_dir.mkdir()
    for i, (h, w) in enumerate([(41, 50), (36, 30)]):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        cv2.imwrite(str(hr_dir / f"im{i}.png"), img)
        cropped = img[:h - h % 2, :w - w % 2]
        lr = np.clip(np.round(imresize(cropped.astype(np.float32) / 255, 0.5) * 255), 0, 255).astype(np.uint8)
        cv2.imwrite(str(lr_dir / f"im{i}x2.png"), lr)
    hr_only = DATASETS.build({"name": "sr_folders", "train": str(hr_dir), "test_sets": {"mine": str(hr_dir)},
                              "patch_size": 8, "samples_per_epoch": 4}, "data", scale=2)
    paired = DATASETS.build({"name": "sr_folders", "train": {"hr": str(hr_dir), "lr": str(lr_dir),
                                                             "filename_tmpl": "{}x2"},
                             "test_sets": {"mine": str(hr_dir)}, "patch_size": 8, "samples_per_epoch": 4},
                            "data", scale=2)
    for ds in (hr_only, paired):
        assert [h.shape[:2] for h in ds.train.hrs] == [(40, 50), (36, 30)]  # cropped to a multiple of 2
        np.testing.assert_allclose(ds.train.lrs[0], paired.train.lrs[0], atol=1e-6)  # same MATLAB bicubic LR
        lr, hr = ds.train[0]
        assert lr.shape == (3, 8, 8) and hr.shape == (3, 16, 16)
    assert hr_only.test.names == ["mine/im0", "mine/im1"]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        DATASETS.build({"name": "sr_folders", "train": str(tmp_path / "nowhere"), "test_sets": {}}, "data", scale=2)
    with pytest.raises(ConfigError, match="scale"):
        DATASETS.build({"name": "sr_embedded"}, "data", scale=5)


def test_msrresnet_baseline_sized_to_a_macs_budget():
    budget = 3e9
    arch = msrresnet_budget(2, budget)
    assert msrresnet_macs(arch["num_feat"], arch["num_block"], 2) <= budget
    above = msrresnet_budget(2, budget, at_least=True)
    assert msrresnet_macs(above["num_feat"], above["num_block"], 2) >= budget


def test_matched_baseline_has_at_least_the_searched_networks_macs_and_the_search_says_when_a_limit_is_broken(capsys):
    from core.pipeline import Setup, check_derived, load_task
    from core.engine.config import load_config
    from core.objective import Objective

    cfg = load_config("configs/super_resolution/trilevel_x2_18g.yaml", ["data.hr_crop=48", "data.patch_size=12"])
    task = load_task(cfg)
    data = task.data()
    space = task.space(data)
    # every op a full-width residual block at LR: 21.7 GMACs, above the config's 18-GMACs limit
    searched = space.check(Arch({c.name: "resblock" if c.name.endswith(tuple(f"op{i}" for i in range(3)))
                                 else c.default for c in space.choices}))
    macs = space.macs(searched)
    matched = task.baseline("msrresnet_matched", space, data, searched=searched)
    budget = task.baseline("msrresnet_budget", space, data)
    assert space.macs(matched) >= macs and matched["num_feat"] == 16
    assert space.macs(budget) <= 18e9 < macs  # the largest MSRResNet under the limit has fewer MACs
    assert space.macs(task.baseline("msrresnet_matched", space, data, searched=Arch({**matched}))) == \
        space.macs(matched)
    cfg_small = {**cfg, "super_resolution": {**cfg["super_resolution"], "cost_output": [24, 32]}}
    small = load_task(cfg_small)
    objective = Objective.from_config("psnr", constraints=[f"macs <= {0.5 * space.macs(searched, (24, 32)):g}"])
    derived = check_derived(Setup(cfg_small, small, data, small.space(data)), searched, objective)
    line = capsys.readouterr().out.strip()
    assert "over the objective's macs <=" in line and "by 100.0%" in line
    assert derived["macs"] == pytest.approx(space.macs(searched, (24, 32)))


def test_side_by_side_labels_each_panel_and_adds_a_zoomed_crop():
    from tasks.super_resolution.data import sr_embedded
    from tasks.super_resolution.task import side_by_side

    data = sr_embedded(scale=2, hr_crop=64)
    lr, hr = data.test[0]
    picture = side_by_side(lr, hr.clone(), hr, 2, gap=4)
    label = 14
    assert picture.shape == (2 * (64 + label) + 4, 3 * 64 + 2 * 4, 3)
    strip = picture[:label, :64]
    assert strip.max() > 200 and (strip == 0).mean() > 0.5  # light text on a black strip


def test_teacher_term_adds_l1_to_a_frozen_basicsr_teacher(tmp_path):
    from basicsr.archs.srresnet_arch import MSRResNet

    torch.manual_seed(0)
    teacher = MSRResNet(num_feat=8, num_block=1, upscale=2)
    torch.save({"params": teacher.state_dict()}, tmp_path / "teacher.pth")
    space = tiny_space()
    spec = {"type": "MSRResNet", "num_feat": 8, "num_block": 1, "upscale": 2,
            "checkpoint": str(tmp_path / "teacher.pth")}
    searcher = TrilevelSearcher(space, teacher=spec, teacher_weight=0.5, macs_target=1e9)
    from tasks.super_resolution.search import load_sr_teacher

    searcher.teacher = load_sr_teacher(spec)
    assert not any(p.requires_grad for p in searcher.teacher.parameters())
    sup = space.supernet()
    lr, hr = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 16, 16)
    terms = searcher.arch_terms(sup, lr, hr)
    with torch.no_grad():
        sr = sup(lr)
        expected = torch.nn.functional.l1_loss(sr, hr) + 0.5 * torch.nn.functional.l1_loss(sr, teacher(lr))
    assert float(terms["fidelity"].detach()) == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(FileNotFoundError, match="teacher.checkpoint"):
        load_sr_teacher({**spec, "checkpoint": str(tmp_path / "missing.pth")})


@pytest.mark.parametrize("mode", ["hinge", "linear", "target"])
def test_macs_term_forms(mode):
    space = tiny_space()
    sup = space.supernet()
    with torch.no_grad():
        expected = float(sup.expected_macs(space.cost_output))
    for target in (expected / 2, expected * 2):
        searcher = TrilevelSearcher(space, macs_target=target, macs_weight=3.0, macs_mode=mode, order_weight=0.0)
        term = float(searcher.arch_terms(sup, torch.rand(1, 3, 6, 6), torch.rand(1, 3, 12, 12))["macs_term"].detach())
        ratio = expected / target
        hand = {"hinge": max(ratio - 1, 0.0), "linear": ratio, "target": abs(ratio - 1)}[mode]
        assert term == pytest.approx(3.0 * hand, rel=1e-5)


def test_macs_pull_below_target_spares_the_network_level():
    """`macs_pull: cells`: below the target the MACs term moves alpha/beta, not gamma; above it, all levels."""
    space = tiny_space()
    sup = space.supernet()
    with torch.no_grad():
        for a in sup.arch_parameters():
            a.copy_(1e-2 * torch.randn(a.shape, generator=torch.Generator().manual_seed(a.numel())))
        expected = float(sup.expected_macs(space.cost_output))
    lr, hr = torch.rand(1, 3, 6, 6), torch.rand(1, 3, 12, 12)

    def grads(target, pull):
        searcher = TrilevelSearcher(space, macs_target=target, macs_mode="target", macs_pull=pull, order_weight=0.0)
        term = searcher.arch_terms(sup, lr, hr)["macs_term"]
        gamma, alpha = torch.autograd.grad(term, [sup.arch_gamma, sup.stem[0].arch_alpha], allow_unused=True)
        return (0.0 if gamma is None else float(gamma.abs().sum())), float(alpha.abs().sum()), float(term.detach())

    gamma_cells, alpha_cells, term_cells = grads(2 * expected, "cells")
    gamma_all, alpha_all, term_all = grads(2 * expected, "all")
    assert gamma_cells == 0.0 and gamma_all > 0.0
    assert alpha_cells == pytest.approx(alpha_all, rel=1e-5) and alpha_cells > 0.0
    assert term_cells == pytest.approx(term_all, rel=1e-6) == pytest.approx(0.5, rel=1e-5)
    gamma_over, _, _ = grads(expected / 2, "cells")  # over the target: pushed down on every level
    assert gamma_over > 0.0
    with pytest.raises(ConfigError, match="macs_pull"):
        TrilevelSearcher(space, macs_pull="gamma")
