"""Models for the workbench studies: the paper's deep MLP, a small CNN, a small character
Transformer, a small class-conditional GAN pair, and the random-features model of regression.

Every constructor validates its arguments and raises ``ValueError`` naming the argument and the
allowed range. ``build_model(name, dataset, **kwargs)`` builds "mlp", "cnn" or "transformer" from a
:class:`reltrust.workbench.data.Dataset` (or anything with ``input_shape``, ``num_classes``,
``kind`` and, for text, ``vocab``).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

__all__ = [
    "ACTIVATIONS",
    "INITS",
    "CharTransformer",
    "Discriminator",
    "Generator",
    "MLP",
    "RandomFeatures",
    "SmallCNN",
    "build_model",
    "init_linear_",
]

ACTIVATIONS = ("relu", "tanh", "gelu", "identity")
INITS = ("default", "lecun", "xavier", "kaiming")


# --------------------------------------------------------------------------------------------
# Argument checks


def _int(name: str, value, lo: int, hi: int | None = None) -> int:
    rng = f"[{lo}, {hi if hi is not None else 'inf'})" if hi is None else f"[{lo}, {hi}]"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int in {rng}, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        raise ValueError(f"{name} must be an int in {rng}, got {value!r}")
    return int(value)


def _prob(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= float(value) < 1.0):
        raise ValueError(f"{name} must be a float in [0, 1), got {value!r}")
    return float(value)


def _choice(name: str, value, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def _shape(name: str, value, ndim: Sequence[int]) -> tuple[int, ...]:
    try:
        shape = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be a tuple of positive ints, got {value!r}") from None
    if len(shape) not in ndim or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(
            f"{name} must be a tuple of {' or '.join(map(str, ndim))} positive ints, got {value!r}"
        )
    return shape


def _activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "identity": nn.Identity}[name]()


# --------------------------------------------------------------------------------------------
# Initialisation


@torch.no_grad()
def init_linear_(layer: nn.Linear, init: str) -> nn.Linear:
    """Initialise a Linear layer in place.

    - ``"default"``: PyTorch's own ``nn.Linear.reset_parameters``: weight and bias
      U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (variance 1/(3 fan_in)); what the paper's code used.
    - ``"lecun"``: weight N(0, 1/fan_in), bias 0. This is the rule the lecture notes call "Xavier"
      (sigma^2 = 1/d_{l-1}); LeCun et al. 1998 is its usual name.
    - ``"xavier"``: Glorot & Bengio 2010, weight N(0, 2/(fan_in + fan_out)), bias 0. On a square
      layer (the hidden width x width layers) it equals "lecun".
    - ``"kaiming"``: He et al. 2015 for ReLU, weight N(0, 2/fan_in), bias 0.
    """
    _choice("init", init, INITS)
    fan_out, fan_in = layer.weight.shape
    if init == "default":
        layer.reset_parameters()
        return layer
    var = {"lecun": 1.0 / fan_in, "xavier": 2.0 / (fan_in + fan_out), "kaiming": 2.0 / fan_in}[init]
    layer.weight.normal_(0.0, math.sqrt(var))
    if layer.bias is not None:
        layer.bias.zero_()
    return layer


# --------------------------------------------------------------------------------------------
# MLP


class MLP(nn.Module):
    """The multilayer perceptron of the depth and trust studies.

    ``depth`` is the TOTAL number of Linear layers:

    - depth 1: a single Linear ``in_features -> num_classes`` (a linear classifier);
    - depth L >= 2: an input layer ``in_features -> width``, then L - 2 hidden ``width -> width``
      layers, then a head ``width -> num_classes``; the activation sits between consecutive Linear
      layers (so after every Linear except the head), no normalisation layers. With
      ``in_features = width = 784`` and ReLU this is the paper's depth-study network ("every hidden
      layer 784x784 + ReLU, head 784->10").

    The input is flattened (``x.flatten(1)``), so (B, 1, 28, 28) images go in as they are.

    ``residual=True`` makes the hidden layers pre-activation residual blocks,
    ``h <- h + beta * W_l phi(h)`` (with dropout on phi(h)), and the head reads ``phi(h)``; the
    input layer and head are the same as in the plain net, and the number of Linear layers is still
    ``depth``. ``beta`` is ``residual_scale`` (ignored when ``residual=False``), by default ``1/sqrt(L - 2)`` (one over the square root
    of the number of blocks): each block adds a zero-mean branch whose variance is beta^2 times a
    constant, so the activation variance grows by at most a factor (1 + c/(L-2))^(L-2) <= e^c
    over the whole depth instead of exponentially; the forward pass of a deep residual net stays
    stable at initialisation (Hayou et al. 2021, "stable ResNet").

    ``init``: see :func:`init_linear_` ("default" | "lecun" | "xavier" | "kaiming"); ``dropout``:
    probability of dropping activations before every Linear except the first; ``bias``: whether
    the Linear layers have biases.

    ``self.layers`` is the ``nn.ModuleList`` of the Linear layers, input to head, for per-layer
    statistics (deep relative trust moves every one of them).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        depth: int,
        width: int,
        *,
        activation: str = "relu",
        residual: bool = False,
        init: str = "default",
        dropout: float = 0.0,
        bias: bool = True,
        residual_scale: float | None = None,
    ) -> None:
        super().__init__()
        self.in_features = _int("in_features", in_features, 1)
        self.num_classes = _int("num_classes", num_classes, 1)
        self.depth = _int("depth", depth, 1)
        self.width = _int("width", width, 1)
        self.activation = _choice("activation", activation, ACTIVATIONS)
        if not isinstance(residual, bool):
            raise ValueError(f"residual must be a bool, got {residual!r}")
        if not isinstance(bias, bool):
            raise ValueError(f"bias must be a bool, got {bias!r}")
        self.init = _choice("init", init, INITS)
        self.dropout_p = _prob("dropout", dropout)
        self.residual = residual
        n_blocks = max(self.depth - 2, 0)
        if residual_scale is None:
            residual_scale = 1.0 / math.sqrt(n_blocks) if n_blocks else 1.0
        elif isinstance(residual_scale, bool) or not isinstance(residual_scale, (int, float)) or not (
            0.0 < float(residual_scale) <= 1.0
        ):
            raise ValueError(f"residual_scale must be a float in (0, 1], got {residual_scale!r}")
        self.residual_scale = float(residual_scale)

        if self.depth == 1:
            dims = [(self.in_features, self.num_classes)]
        else:
            dims = [(self.in_features, self.width)]
            dims += [(self.width, self.width)] * n_blocks
            dims += [(self.width, self.num_classes)]
        self.layers = nn.ModuleList(nn.Linear(i, o, bias=bias) for i, o in dims)
        for layer in self.layers:
            init_linear_(layer, self.init)
        self.act = _activation(self.activation)
        self.drop = nn.Dropout(self.dropout_p) if self.dropout_p > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layers[0](x.flatten(1))
        last = len(self.layers) - 1
        for i in range(1, last):
            if self.residual:
                h = h + self.residual_scale * self.layers[i](self.drop(self.act(h)))
            else:
                h = self.layers[i](self.drop(self.act(h)))
        if last >= 1:
            h = self.layers[last](self.drop(self.act(h)))
        return h

    def extra_repr(self) -> str:
        return (
            f"depth={self.depth}, width={self.width}, activation={self.activation!r}, "
            f"residual={self.residual}, init={self.init!r}, dropout={self.dropout_p}"
        )


# --------------------------------------------------------------------------------------------
# Small CNN


class SmallCNN(nn.Module):
    """A small conv net for 28x28 (MNIST-like) or 8x8 (digits) images.

    conv3x3(C->w) ReLU, conv3x3(w->w) ReLU, maxpool 2, conv3x3(w->2w) ReLU, maxpool 2, flatten,
    Linear(2w * (H//4) * (W//4) -> num_classes). Padding 1 keeps the size before each pool. PyTorch's
    default initialisation. ``input_hw`` (H, W) must both be >= 4.
    """

    def __init__(self, in_channels: int, num_classes: int, input_hw: Sequence[int], width: int = 32) -> None:
        super().__init__()
        self.in_channels = _int("in_channels", in_channels, 1)
        self.num_classes = _int("num_classes", num_classes, 1)
        hw = _shape("input_hw", input_hw, (2,))
        if min(hw) < 4:
            raise ValueError(f"input_hw must be (H, W) with H, W >= 4, got {input_hw!r}")
        self.input_hw = hw
        self.width = _int("width", width, 1)
        w = self.width
        self.features = nn.Sequential(
            nn.Conv2d(self.in_channels, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(2 * w * (hw[0] // 4) * (hw[1] // 4), self.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.in_channels, *self.input_hw):
            raise ValueError(
                f"SmallCNN expects input of shape (B, {self.in_channels}, {self.input_hw[0]}, "
                f"{self.input_hw[1]}), got {tuple(x.shape)}"
            )
        return self.head(self.features(x).flatten(1))


# --------------------------------------------------------------------------------------------
# Character Transformer (nanoGPT-like)


class _CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.dropout = dropout
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_heads, c // self.n_heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        return self.resid_drop(self.proj(y.transpose(1, 2).contiguous().view(b, t, c)))


class _Block(nn.Module):
    """Pre-LN: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``. Post-LN: ``ln1(x + attn(x))``, then
    ``ln2(x + mlp(x))``."""

    def __init__(self, d_model: int, n_heads: int, dropout: float, post_ln: bool = False) -> None:
        super().__init__()
        self.post_ln = post_ln
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = _CausalSelfAttention(d_model, n_heads, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.post_ln:
            x = self.ln1(x + self.attn(x))
            return self.ln2(x + self.mlp(x))
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CharTransformer(nn.Module):
    """A small causal character-level Transformer (nanoGPT-like, pre-LayerNorm by default).

    Token and learned position embeddings, ``n_layers`` blocks ``x + attn(LN(x))``,
    ``x + MLP(LN(x))`` (MLP 4*d_model with GELU), causal attention through
    ``F.scaled_dot_product_attention(is_causal=True)``, a final LayerNorm and an untied Linear head.
    ``post_ln=True`` gives the original Transformer's post-LayerNorm blocks ``LN(x + attn(x))``,
    ``LN(x + MLP(x))`` and no final LayerNorm (the last block's output is already normalised).
    Init as nanoGPT (for both): N(0, 0.02) for Linear and embeddings, residual projections
    N(0, 0.02/sqrt(2 n_layers)), biases 0. ``forward(idx)``: idx (B, T) int64 with T <= block_size
    -> logits (B, T, vocab_size).
    """

    def __init__(
        self,
        vocab_size: int,
        block_size: int = 64,
        d_model: int = 128,
        n_layers: int = 2,
        n_heads: int = 4,
        dropout: float = 0.0,
        post_ln: bool = False,
    ) -> None:
        super().__init__()
        self.vocab_size = _int("vocab_size", vocab_size, 1)
        self.block_size = _int("block_size", block_size, 1)
        self.d_model = _int("d_model", d_model, 1)
        self.n_layers = _int("n_layers", n_layers, 1)
        self.n_heads = _int("n_heads", n_heads, 1)
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads must divide d_model = {d_model}, got {n_heads}")
        self.dropout_p = _prob("dropout", dropout)
        if not isinstance(post_ln, bool):
            raise ValueError(f"post_ln must be a bool, got {post_ln!r}")
        self.post_ln = post_ln
        self.tok_emb = nn.Embedding(self.vocab_size, self.d_model)
        self.pos_emb = nn.Embedding(self.block_size, self.d_model)
        self.drop = nn.Dropout(self.dropout_p)
        self.blocks = nn.ModuleList(_Block(self.d_model, self.n_heads, self.dropout_p, post_ln)
                                    for _ in range(self.n_layers))
        self.ln_f = nn.Identity() if post_ln else nn.LayerNorm(self.d_model)
        self.head = nn.Linear(self.d_model, self.vocab_size)
        self.apply(self._init)
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp[2]):
                nn.init.normal_(proj.weight, 0.0, 0.02 / math.sqrt(2 * self.n_layers))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.dim() != 2 or idx.dtype != torch.int64:
            raise ValueError(f"idx must be a (B, T) int64 tensor, got {tuple(idx.shape)} {idx.dtype}")
        t = idx.shape[1]
        if not 1 <= t <= self.block_size:
            raise ValueError(f"sequence length T must be in [1, {self.block_size}] (block_size), got {t}")
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos)[None])
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    @torch.no_grad()
    def generate(
        self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample ``max_new_tokens`` characters after ``idx`` (B, T); returns (B, T + max_new_tokens)."""
        max_new_tokens = _int("max_new_tokens", max_new_tokens, 0)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
            raise ValueError(f"temperature must be a float > 0, got {temperature!r}")
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.block_size:])[:, -1] / temperature
            nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
        return idx


# --------------------------------------------------------------------------------------------
# Class-conditional GAN pair


class Generator(nn.Module):
    """A small class-conditional MLP generator: [z, embed(y)] -> Linear-ReLU -> Linear-ReLU ->
    Linear -> tanh, reshaped to ``out_shape`` (e.g. (1, 28, 28)). Outputs lie in [-1, 1]: pair it
    with data loaded with ``normalize="symmetric"``. ``forward(z, y)``: z (B, latent_dim), y (B,)
    int64 labels -> (B, *out_shape)."""

    def __init__(self, latent_dim: int, num_classes: int, out_shape: Sequence[int], hidden: int = 256) -> None:
        super().__init__()
        self.latent_dim = _int("latent_dim", latent_dim, 1)
        self.num_classes = _int("num_classes", num_classes, 1)
        self.out_shape = _shape("out_shape", out_shape, (1, 2, 3))
        self.hidden = _int("hidden", hidden, 1)
        emb = min(self.latent_dim, 32)
        self.embed = nn.Embedding(self.num_classes, emb)
        self.net = nn.Sequential(
            nn.Linear(self.latent_dim + emb, self.hidden), nn.ReLU(),
            nn.Linear(self.hidden, self.hidden), nn.ReLU(),
            nn.Linear(self.hidden, math.prod(self.out_shape)), nn.Tanh(),
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape (B, {self.latent_dim}), got {tuple(z.shape)}")
        if y.shape != (z.shape[0],):
            raise ValueError(f"y must have shape ({z.shape[0]},), got {tuple(y.shape)}")
        h = self.net(torch.cat([z, self.embed(y)], dim=1))
        return h.view(z.shape[0], *self.out_shape)

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n standard-normal latent vectors."""
        return torch.randn(_int("n", n, 1), self.latent_dim, generator=generator)


class Discriminator(nn.Module):
    """A small class-conditional projection discriminator (Miyato & Koyama 2018).

    Features phi(x) = LeakyReLU(0.2) MLP (flattened input -> hidden -> hidden); score
    ``psi(phi(x)) + <embed(y), phi(x)>`` (the projection term). With ``spectral_norm=True`` (default)
    every Linear layer and the class embedding are spectrally normalised through
    ``torch.nn.utils.parametrizations.spectral_norm``. ``forward(x, y)`` -> (B,) raw scores (for a
    hinge or logistic loss, the study's choice)."""

    def __init__(self, num_classes: int, in_shape: Sequence[int], spectral_norm: bool = True, hidden: int = 256) -> None:
        super().__init__()
        self.num_classes = _int("num_classes", num_classes, 1)
        self.in_shape = _shape("in_shape", in_shape, (1, 2, 3))
        self.hidden = _int("hidden", hidden, 1)
        if not isinstance(spectral_norm, bool):
            raise ValueError(f"spectral_norm must be a bool, got {spectral_norm!r}")
        self.spectral_norm = spectral_norm
        sn = _spectral_norm if spectral_norm else (lambda m: m)
        self.fc1 = sn(nn.Linear(math.prod(self.in_shape), self.hidden))
        self.fc2 = sn(nn.Linear(self.hidden, self.hidden))
        self.out = sn(nn.Linear(self.hidden, 1))
        self.embed = sn(nn.Embedding(self.num_classes, self.hidden))
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, self.in_shape))}), got {tuple(x.shape)}")
        if y.shape != (x.shape[0],):
            raise ValueError(f"y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
        h = self.act(self.fc2(self.act(self.fc1(x.flatten(1)))))
        return self.out(h).squeeze(1) + (self.embed(y) * h).sum(dim=1)


# --------------------------------------------------------------------------------------------
# Random features (regression)


class RandomFeatures(nn.Module):
    """A random-features model: fixed random ReLU features, then a trainable linear read-out.

    ``f(x) = head(relu(x.flatten(1) @ W.T / sqrt(in_features)) / sqrt(features))`` with ``W``
    (features × in_features) drawn N(0, 1) once (a buffer, never trained) and ``head`` a bias-free
    ``nn.Linear(features, out_features)`` initialised to zero, so training it is least squares in the
    features (scaled so that their kernel stays O(1) at any width): the model of double descent as
    ``features`` crosses the number of training examples."""

    def __init__(self, in_features: int, out_features: int, features: int = 100) -> None:
        super().__init__()
        self.in_features = _int("in_features", in_features, 1)
        self.out_features = _int("out_features", out_features, 1)
        self.features = _int("features", features, 1)
        self.register_buffer("projection", torch.randn(self.features, self.in_features))
        self.head = nn.Linear(self.features, self.out_features, bias=False)
        nn.init.zeros_(self.head.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        phi = F.relu(x.flatten(1) @ self.projection.T / math.sqrt(self.in_features)) / math.sqrt(self.features)
        return self.head(phi)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, features={self.features}, out_features={self.out_features}"


# --------------------------------------------------------------------------------------------
# Factory

MODEL_NAMES = ("mlp", "cnn", "transformer")


def build_model(name: str, dataset, **kwargs) -> nn.Module:
    """Build model ``name`` for ``dataset``:

    - ``"mlp"``: ``MLP(prod(input_shape), num_classes, depth=3, width=256, **kwargs)`` (image or
      vector data; kwargs override depth/width/...);
    - ``"cnn"``: ``SmallCNN(input_shape[0], num_classes, input_shape[1:], **kwargs)`` (images);
    - ``"transformer"``: ``CharTransformer(len(vocab), **kwargs)`` (text).
    """
    _choice("name", name, MODEL_NAMES)
    kind = getattr(dataset, "kind", None)
    if name == "transformer":
        vocab = getattr(dataset, "vocab", None)
        if kind != "text" or not vocab:
            raise ValueError(f"dataset must be a text corpus with a vocab for 'transformer', got kind={kind!r}")
        return CharTransformer(len(vocab), **kwargs)
    if kind not in ("image", "vector"):
        raise ValueError(f"dataset must be image or vector data for {name!r}, got kind={kind!r}")
    shape = tuple(dataset.input_shape)
    if name == "cnn":
        if kind != "image" or len(shape) != 3:
            raise ValueError(f"dataset must be (C, H, W) images for 'cnn', got input_shape={shape}")
        return SmallCNN(shape[0], dataset.num_classes, shape[1:], **kwargs)
    params = {"depth": 3, "width": 256, **kwargs}
    return MLP(math.prod(shape), dataset.num_classes, **params)
