"""Tests for reltrust.workbench.models: architecture as documented, init statistics, residual
stability, causality, the GAN pair, build_model and argument checks."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from reltrust.workbench.models import (
    MLP,
    CharTransformer,
    Discriminator,
    Generator,
    SmallCNN,
    build_model,
    init_linear_,
)


def linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


# ------------------------------------------------------------------------------------------------
# MLP


@pytest.mark.parametrize("depth", [1, 2, 3, 7, 15])
@pytest.mark.parametrize("residual", [False, True])
def test_mlp_depth_is_the_number_of_linear_layers(depth, residual):
    m = MLP(784, 10, depth, 32, residual=residual)
    ls = linears(m)
    assert len(ls) == depth and list(m.layers) == ls
    if depth == 1:
        assert ls[0].in_features == 784 and ls[0].out_features == 10
    else:
        assert (ls[0].in_features, ls[0].out_features) == (784, 32)
        assert all((l.in_features, l.out_features) == (32, 32) for l in ls[1:-1])
        assert (ls[-1].in_features, ls[-1].out_features) == (32, 10)
    assert not any(isinstance(x, (nn.BatchNorm1d, nn.LayerNorm)) for x in m.modules())
    out = m(torch.randn(3, 1, 28, 28))  # images go in as they are; the MLP flattens
    assert out.shape == (3, 10)


def test_mlp_plain_forward_is_linear_relu_chain():
    torch.manual_seed(0)
    m = MLP(6, 3, 4, 5)
    x = torch.randn(2, 6)
    h = x
    for layer in m.layers[:-1]:
        h = torch.relu(layer(h))
    torch.testing.assert_close(m(x), m.layers[-1](h))


def test_mlp_residual_forward_and_scale():
    torch.manual_seed(0)
    m = MLP(6, 3, 6, 5, residual=True)
    assert m.residual_scale == pytest.approx(1 / math.sqrt(4))
    x = torch.randn(2, 6)
    h = m.layers[0](x)
    for layer in m.layers[1:-1]:
        h = h + 0.5 * layer(torch.relu(h))
    torch.testing.assert_close(m(x), m.layers[-1](torch.relu(h)))
    assert m(torch.randn(4, 1, 2, 3)).shape == (4, 3)


def test_deep_residual_mlp_is_stable_at_init():
    torch.manual_seed(0)
    x = torch.randn(64, 64)
    with torch.no_grad():
        shallow = MLP(64, 10, 3, 128, residual=True, init="kaiming")(x).std()
        deep = MLP(64, 10, 50, 128, residual=True, init="kaiming")(x).std()
        unscaled = MLP(64, 10, 50, 128, residual=True, init="kaiming", residual_scale=1.0)(x).std()
    # the 1/sqrt(#blocks) branch scale bounds the growth over 48 blocks by a constant factor
    assert torch.isfinite(deep) and 0.5 < float(deep / shallow) < 4.0
    assert float(unscaled / shallow) > 1e3  # without the scale it explodes


@pytest.mark.parametrize(
    "init,var",
    [
        ("kaiming", lambda fi, fo: 2 / fi),
        ("lecun", lambda fi, fo: 1 / fi),
        ("xavier", lambda fi, fo: 2 / (fi + fo)),
        ("default", lambda fi, fo: 1 / (3 * fi)),  # U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    ],
)
def test_init_statistics(init, var):
    torch.manual_seed(0)
    m = MLP(1500, 10, 3, 1000, init=init)
    for layer in m.layers[:2]:  # 1500 -> 1000 (non-square) and 1000 -> 1000
        fo, fi = layer.weight.shape
        w, b = layer.weight.detach(), layer.bias.detach()
        assert abs(float(w.mean())) < 3 * math.sqrt(var(fi, fo) / w.numel())
        assert float(w.var()) == pytest.approx(var(fi, fo), rel=0.02)
        if init == "default":
            bound = 1 / math.sqrt(fi)
            assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.999 * bound
            assert float(b.abs().max()) <= bound
        else:
            assert float(b.abs().max()) == 0.0


def test_default_init_is_pytorch_reset_parameters():
    layer = nn.Linear(40, 30)
    torch.manual_seed(5)
    init_linear_(layer, "default")
    ref = nn.Linear(40, 30)
    torch.manual_seed(5)
    ref.reset_parameters()
    torch.testing.assert_close(layer.weight, ref.weight)
    torch.testing.assert_close(layer.bias, ref.bias)


def test_mlp_dropout_and_no_bias():
    m = MLP(20, 4, 3, 64, dropout=0.5, bias=False)
    assert all(l.bias is None for l in m.layers)
    x = torch.randn(8, 20)
    m.train()
    torch.manual_seed(0)
    a = m(x)
    torch.manual_seed(1)
    assert not torch.equal(a, m(x))
    m.eval()
    assert torch.equal(m(x), m(x))


# ------------------------------------------------------------------------------------------------
# CNN, Transformer, GAN


@pytest.mark.parametrize("hw", [(28, 28), (8, 8)])
def test_small_cnn(hw):
    m = SmallCNN(1, 10, hw, width=8)
    assert m(torch.randn(2, 1, *hw)).shape == (2, 10)
    assert m.head.in_features == 16 * (hw[0] // 4) * (hw[1] // 4)
    with pytest.raises(ValueError, match="expects input"):
        m(torch.randn(2, 1, 9, 9))


def test_transformer_is_causal():
    torch.manual_seed(0)
    m = CharTransformer(30, block_size=16, d_model=32, n_layers=2, n_heads=4).eval()
    idx = torch.randint(0, 30, (2, 16))
    logits = m(idx)
    assert logits.shape == (2, 16, 30)
    changed = idx.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 30
    new = m(changed)
    torch.testing.assert_close(new[:, :10], logits[:, :10])  # the past does not see the future
    assert not torch.allclose(new[:, 10:], logits[:, 10:])
    assert m(idx[:, :5]).shape == (2, 5, 30)
    with pytest.raises(ValueError, match="block_size"):
        m(torch.randint(0, 30, (1, 17)))
    out = m.generate(idx[:, :3], 4, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 7) and torch.equal(out[:, :3], idx[:, :3])


def test_transformer_init_and_layout():
    m = CharTransformer(50, n_layers=3)
    assert sum(isinstance(x, nn.LayerNorm) for x in m.modules()) == 2 * 3 + 1
    assert float(m.blocks[0].attn.qkv.weight.detach().std()) == pytest.approx(0.02, rel=0.05)
    assert float(m.blocks[0].attn.proj.weight.detach().std()) == pytest.approx(0.02 / math.sqrt(6), rel=0.05)


def test_gan_shapes_and_spectral_norm():
    torch.manual_seed(0)
    G = Generator(16, 10, (1, 28, 28))
    Dn = Discriminator(10, (1, 28, 28))
    y = torch.arange(6) % 10
    x = G(G.sample_latent(6), y)
    assert x.shape == (6, 1, 28, 28) and float(x.detach().abs().max()) <= 1.0
    assert Dn(x, y).shape == (6,)
    sn_modules = [m for m in Dn.modules() if isinstance(m, (nn.Linear, nn.Embedding))]
    assert len(sn_modules) == 4
    assert all(parametrize.is_parametrized(m, "weight") for m in sn_modules)
    # after power iterations in train mode the normalised weights have spectral norm ~1
    small = Discriminator(10, (1, 8, 8), hidden=64).train()
    for _ in range(20):
        small(torch.randn(4, 1, 8, 8), y[:4])
    for m in [m for m in small.modules() if isinstance(m, (nn.Linear, nn.Embedding))]:
        assert float(torch.linalg.matrix_norm(m.weight.detach(), ord=2)) == pytest.approx(1.0, rel=0.05)
    plain = Discriminator(10, (1, 8, 8), spectral_norm=False)
    assert not any(parametrize.is_parametrized(m) for m in plain.modules())
    assert plain(torch.randn(3, 1, 8, 8), torch.tensor([0, 1, 2])).shape == (3,)


def test_gan_both_condition_on_the_label():
    torch.manual_seed(0)
    G = Generator(8, 10, (1, 8, 8))
    Dn = Discriminator(10, (1, 8, 8)).eval()
    z = G.sample_latent(2)
    assert not torch.allclose(G(z, torch.tensor([0, 0])), G(z, torch.tensor([1, 1])))
    x = torch.randn(2, 1, 8, 8)
    assert not torch.allclose(Dn(x, torch.tensor([0, 0])), Dn(x, torch.tensor([1, 1])))


# ------------------------------------------------------------------------------------------------
# build_model


def test_build_model_from_dataset_metadata():
    img = SimpleNamespace(kind="image", input_shape=(1, 8, 8), num_classes=10)
    vec = SimpleNamespace(kind="vector", input_shape=(40,), num_classes=10)
    txt = SimpleNamespace(kind="text", input_shape=(), num_classes=5, vocab=list("abcde"))
    mlp = build_model("mlp", vec, depth=4, width=16)
    assert isinstance(mlp, MLP) and mlp.layers[0].in_features == 40 and len(mlp.layers) == 4
    assert build_model("mlp", img)(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    cnn = build_model("cnn", img, width=4)
    assert isinstance(cnn, SmallCNN) and cnn(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    tr = build_model("transformer", txt, block_size=8, d_model=16, n_heads=2)
    assert tr(torch.zeros(1, 8, dtype=torch.int64)).shape == (1, 8, 5)
    with pytest.raises(ValueError, match="'cnn'"):
        build_model("cnn", vec)
    with pytest.raises(ValueError, match="transformer"):
        build_model("transformer", img)
    with pytest.raises(ValueError, match="name must be one of"):
        build_model("resnet", img)


# ------------------------------------------------------------------------------------------------
# Arguments


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: MLP(784, 10, 0, 32), r"depth must be an int in \[1"),
        (lambda: MLP(784, 10, 2.0, 32), "depth"),
        (lambda: MLP(784, 10, 3, 0), "width"),
        (lambda: MLP(0, 10, 3, 8), "in_features"),
        (lambda: MLP(784, 0, 3, 8), "num_classes"),
        (lambda: MLP(784, 10, 3, 8, activation="sigmoid"), "activation must be one of"),
        (lambda: MLP(784, 10, 3, 8, init="he"), "init must be one of"),
        (lambda: MLP(784, 10, 3, 8, dropout=1.0), r"dropout must be a float in \[0, 1\)"),
        (lambda: MLP(784, 10, 3, 8, residual=1), "residual must be a bool"),
        (lambda: MLP(784, 10, 3, 8, residual=True, residual_scale=0.0), "residual_scale"),
        (lambda: SmallCNN(1, 10, (2, 2)), "input_hw"),
        (lambda: SmallCNN(0, 10, (8, 8)), "in_channels"),
        (lambda: SmallCNN(1, 10, (8,)), "input_hw"),
        (lambda: CharTransformer(0), "vocab_size"),
        (lambda: CharTransformer(10, d_model=30, n_heads=4), "n_heads must divide"),
        (lambda: CharTransformer(10, block_size=0), "block_size"),
        (lambda: CharTransformer(10, dropout=-0.1), "dropout"),
        (lambda: Generator(0, 10, (1, 8, 8)), "latent_dim"),
        (lambda: Generator(8, 10, (1, 0, 8)), "out_shape"),
        (lambda: Discriminator(10, (1, 8, 8), spectral_norm="yes"), "spectral_norm must be a bool"),
        (lambda: Discriminator(0, (1, 8, 8)), "num_classes"),
    ],
)
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()
