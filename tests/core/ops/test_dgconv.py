"""DGConv2d and FGConv2d against independent computations (numpy Kronecker products, hand-written masks)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.ops.dgconv import DGConv2d, FGConv2d, dgconv_regularizer


def numpy_u(gates, sort):
    """The official recipe written independently: binarise, order the factors, chain np.kron."""
    g = (np.sign(gates) + 1) / 2
    order = list(range(len(g)))
    if sort:  # (1 - g) descending: the I2 factors first
        order = sorted(order, key=lambda i: -(1 - g[i]))
    u = np.ones((1, 1))
    for i in order:
        u = np.kron(u, (1 - g[i]) * np.eye(2) + g[i] * np.ones((2, 2)))
    return u, order


def layer_with(gates, *args, **kwargs):
    m = DGConv2d(*args, **kwargs)
    m.gate.data = torch.tensor(gates, dtype=torch.float32)
    return m


@pytest.mark.parametrize("sort", [True, False])
def test_square_mask_is_the_kronecker_product(sort):
    rng = np.random.default_rng(0)
    for _ in range(10):
        gates = rng.normal(size=4)
        m = layer_with(gates, 16, 16, 3, sort=sort)
        expected, _ = numpy_u(gates, sort)
        np.testing.assert_array_equal(m.mask().detach().numpy(), expected)


def test_sorted_gates_give_contiguous_groups():
    gates = [0.3, -0.2, 0.1, -0.5, 0.7, -0.1]  # three on: blocks of 8 channels, 8 groups
    m = layer_with(gates, 64, 64, 1)
    block = np.kron(np.eye(8), np.ones((8, 8)))
    np.testing.assert_array_equal(m.mask().detach().numpy(), block)
    assert m.nominal_groups() == 8
    assert float(m.regularizer().detach()) == 512 == int(m.mask().sum())  # METHODS' example: C = 64, Σg = 3
    unsorted = layer_with(gates, 64, 64, 1, sort=False)
    assert not np.array_equal(unsorted.mask().detach().numpy(), block)  # strided groups
    assert int(unsorted.mask().sum()) == 512


def test_crop_group_up_and_group_down_follow_the_official_shapes():
    rng = np.random.default_rng(1)
    # crop, MUUFL stem: 66 -> 64, K = 7, a 128x128 U cropped to 64x66
    gates = rng.normal(size=7)
    m = layer_with(gates, 66, 64, 7)
    assert m.mode == "crop" and m.K == 7
    u, _ = numpy_u(gates, True)
    np.testing.assert_array_equal(m.mask().detach().numpy(), u[:64, :66])
    # group-up 16 -> 64: (I_16 ⊗ 1_{4x1}) U, the official formula (C_in a power of two)
    gates = rng.normal(size=4)
    m = layer_with(gates, 16, 64, 3)
    assert m.mode == "up" and m.K == 4
    u, _ = numpy_u(gates, True)
    np.testing.assert_array_equal(m.mask().detach().numpy(), np.kron(np.eye(16), np.ones((4, 1))) @ u)
    # group-down 64 -> 16: U (I_16 ⊗ 1_{1x4})
    m = layer_with(gates, 64, 16, 3)
    assert m.mode == "down"
    np.testing.assert_array_equal(m.mask().detach().numpy(), u @ np.kron(np.eye(16), np.ones((1, 4))))


def test_zero_gate_counts_half_as_in_the_official_code():
    m = layer_with([0.0, 1.0], 4, 4, 1)
    assert set(np.unique(m.mask().detach().numpy()).tolist()) <= {0.5, 1.0, 0.25, 0.0}
    assert float(m.hard_gates().detach().sum()) == 1.5


def test_forward_is_the_convolution_with_the_masked_weight():
    torch.manual_seed(0)
    gates = [0.2, -0.4, 0.3, 0.1]
    m = layer_with(gates, 16, 16, 3, padding=1, bias=True)
    u, _ = numpy_u(np.array(gates), True)
    x = torch.randn(2, 16, 9, 9)
    expected = F.conv2d(x, m.conv.weight * torch.tensor(u, dtype=torch.float32)[:, :, None, None], m.conv.bias,
                        padding=1)
    torch.testing.assert_close(m(x), expected)


@pytest.mark.parametrize("sort", [True, False])
def test_straight_through_gradient_of_the_gates(sort):
    """dL/dĝ_k = <dL/dU, U_1 ⊗ ... ⊗ (1 - I) ⊗ ... ⊗ U_K> at the binarised gates (identity STE)."""
    torch.manual_seed(1)
    gates = np.array([0.5, -0.3, 0.2, -0.6])
    m = layer_with(gates, 16, 16, 3, padding=1, bias=False, sort=sort)
    x = torch.randn(2, 16, 6, 6)
    r = torch.randn(2, 16, 6, 6)
    (m(x) * r).sum().backward()
    # dL/dW' from a plain convolution, independent of the module
    w_masked = (m.conv.weight.detach() * m.mask().detach()[:, :, None, None]).requires_grad_()
    (F.conv2d(x, w_masked, padding=1) * r).sum().backward()
    d_u = (w_masked.grad * m.conv.weight.detach()).sum(dim=(2, 3)).numpy()
    g = (np.sign(gates) + 1) / 2
    _, order = numpy_u(gates, sort)
    expected = np.zeros(4)
    for k in range(4):
        du_dg = np.ones((1, 1))
        for i in order:
            factor = np.ones((2, 2)) - np.eye(2) if i == k else (1 - g[i]) * np.eye(2) + g[i] * np.ones((2, 2))
            du_dg = np.kron(du_dg, factor)
        expected[k] = (d_u * du_dg).sum()
    np.testing.assert_allclose(m.gate.grad.numpy(), expected, rtol=1e-4, atol=1e-5)
    # masked-out weights get no gradient
    assert torch.all(m.conv.weight.grad[m.mask().detach() == 0] == 0)


def test_regularizer_counts_non_zeros_with_the_straight_through_gradient():
    m = layer_with([0.4, -0.1, 0.2], 8, 8, 1)
    reg = dgconv_regularizer(torch.nn.Sequential(m, layer_with([0.1, 0.1, 0.1], 8, 8, 1)))
    assert float(reg.detach()) == 2 ** (3 + 2) + 2 ** (3 + 3)
    m.gate.grad = None
    m.regularizer().backward()
    np.testing.assert_allclose(m.gate.grad.numpy(), [math.log(2) * 32] * 3, rtol=1e-6)


def test_fixed_groups_mask_is_the_official_strided_one():
    m = layer_with([1.0, 1.0, 1.0], 8, 8, 1, groups=2)  # dense gates: only the fixed mask is left
    expected = np.kron(np.ones((4, 4)), np.eye(2))
    np.testing.assert_array_equal(m.mask().detach().numpy(), expected)


def test_gate_signs_follow_torch_seed_and_start_near_zero():
    torch.manual_seed(3)
    a = DGConv2d(32, 32, 3)
    torch.manual_seed(3)
    b = DGConv2d(32, 32, 3)
    assert torch.equal(a.gate, b.gate) and float(a.gate.detach().abs().max()) == pytest.approx(1e-8)


def test_fgconv_block_mask_and_errors():
    f = FGConv2d(66, 64, 7, stride=2, padding=3, in_groups=[64, 2], out_groups=[32, 32])
    u = f.mask()
    assert u[:32, :64].all() and not u[:32, 64:].any() and u[32:, 64:].all() and not u[32:, :64].any()
    x = torch.randn(1, 66, 11, 11)
    x2 = x.clone()
    x2[:, 64:] += 5.0  # changing the second source moves only the second stream's outputs
    d = (f(x) - f(x2)).abs().amax(dim=(0, 2, 3))
    assert d[:32].max() == 0 and d[32:].min() > 0
    assert torch.equal(FGConv2d(4, 6, 1).mask(), torch.ones(6, 4))
    with pytest.raises(ValueError, match="must sum to 66"):
        FGConv2d(66, 64, 3, in_groups=[60, 2], out_groups=[32, 32])


def test_eval_mode_reuses_the_mask_until_the_gates_change(tmp_path):
    m = layer_with([0.3, -0.2, 0.4], 8, 8, 3, padding=1).eval()
    x = torch.randn(1, 8, 5, 5)
    first = m(x)
    assert torch.equal(m.frozen_mask(), m.mask().detach())
    with torch.no_grad():
        m.gate.mul_(-1)  # an in-place change (optimizer step, load_state_dict) rebuilds the mask
    assert torch.equal(m.frozen_mask(), m.mask().detach()) and not torch.equal(m(x), first)
    pytest.importorskip("onnxruntime")
    from core.engine.export import export_onnx

    assert export_onnx(m, x, tmp_path / "masked.onnx") < 1e-5
