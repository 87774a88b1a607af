"""The spectral view of a change of weights, and Mirsky's theorem (paper Theorem 3).

Each selected layer is a matrix: linear weights as they are, convolution kernels (out, in, k, k…)
reshaped to (out, in·k·k…). With σ_1 ≥ σ_2 ≥ … the singular values of W and σ'_i those of W + ΔW:

    max shift                 = max_i |σ'_i − σ_i|
    relative spectral shift   = max_i |σ'_i − σ_i| / σ_1(W)
    Mirsky                    : sqrt(Σ_i (σ'_i − σ_i)²) ≤ ‖ΔW‖_F     (so every |σ'_i − σ_i| ≤ ‖ΔW‖_F)
    relative form (paper)     : sqrt(Σ_i (σ'_i − σ_i)²) / ‖W‖_F ≤ ‖ΔW‖_F / ‖W‖_F

Singular values are computed in float64 with `torch.linalg.svdvals` (on the weights' device) and
returned on the CPU. `holds` checks the Mirsky
inequality (the ℓ2 form, which implies the per-σ one) up to a float64 rounding allowance.
Inputs and layer selection are those of `reltrust.trust.relative_changes` (layers are ≥ 2-d).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from reltrust.trust.distance import Patterns, StateLike, _check_finite, named_tensors, select_layers, to_float64


def as_matrix(w: torch.Tensor) -> torch.Tensor:
    """A weight tensor as a matrix: (out, in) as is; (out, in, k, …) reshaped to (out, in·k·…)."""
    if w.ndim < 2:
        raise ValueError(f"a layer needs at least 2 dimensions to have singular values, got shape {tuple(w.shape)}")
    return w.reshape(w.shape[0], -1)


def singular_values(
    model: StateLike,
    *,
    include: Patterns = None,
    exclude: Patterns = None,
) -> dict[str, torch.Tensor]:
    """Ordered mapping layer → its singular values σ_1 ≥ σ_2 ≥ … (float64, CPU) of `as_matrix(W)`."""
    tensors = named_tensors(model, "model")
    names = select_layers(tensors, include=include, exclude=exclude)
    if not names:
        raise ValueError("no layers selected: no floating tensor with >= 2 dimensions matches the selection")
    out = {}
    for n in names:
        w = to_float64(tensors[n])
        _check_finite(n, "model", w)
        out[n] = torch.linalg.svdvals(as_matrix(w)).cpu()
    return out


@dataclass
class SpectralChange:
    """One layer's spectra before/after and the Mirsky check (all float64; σ in descending order)."""

    name: str
    shape: tuple[int, ...]
    sigma_before: torch.Tensor
    sigma_after: torch.Tensor
    max_shift: float  # max_i |σ'_i − σ_i|
    relative_shift: float  # max_shift / σ_1(W)
    l2_shift: float  # sqrt(Σ (σ'_i − σ_i)²)
    mirsky_bound: float  # ‖ΔW‖_F
    relative_l2_shift: float  # l2_shift / ‖W‖_F  (≤ ‖ΔW‖/‖W‖ by Mirsky)
    relative_change: float  # ‖ΔW‖_F / ‖W‖_F
    holds: bool  # l2_shift ≤ mirsky_bound (up to rounding)

    def to_dict(self, with_sigmas: bool = True) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("sigma_before", "sigma_after")}
        d["shape"] = list(self.shape)
        if with_sigmas:
            d["sigma_before"] = self.sigma_before.tolist()
            d["sigma_after"] = self.sigma_after.tolist()
        return d


def spectral_changes(
    before: StateLike,
    after: StateLike,
    *,
    include: Patterns = None,
    exclude: Patterns = None,
) -> list[SpectralChange]:
    """Per layer: singular values before and after, max shift, relative spectral shift
    max_i |σ'_i − σ_i| / σ_1(W), and Mirsky's bound sqrt(Σ(σ'_i − σ_i)²) ≤ ‖ΔW‖_F with `holds`.

    A layer whose σ_1(W) is 0 gets relative shifts of nan (not an error: the spectrum is defined)."""
    a = named_tensors(before, "before")
    b = named_tensors(after, "after")
    names = select_layers(a, include=include, exclude=exclude)
    if not names:
        raise ValueError("no layers selected: no floating tensor with >= 2 dimensions matches the selection")
    extra = [n for n in select_layers(b, include=include, exclude=exclude) if n not in a]
    if extra:
        raise ValueError(f"layer {extra[0]!r} is in after but not in before (the checkpoints do not match)")
    out = []
    for n in names:
        if n not in b:
            raise ValueError(f"layer {n!r} is in before but not in after (the checkpoints do not match)")
        if a[n].shape != b[n].shape:
            raise ValueError(f"layer {n!r} has shape {tuple(a[n].shape)} in before but {tuple(b[n].shape)} in after")
        w = to_float64(a[n])
        w2 = to_float64(b[n], w.device)
        _check_finite(n, "before", w)
        _check_finite(n, "after", w2)
        s, s2 = torch.linalg.svdvals(as_matrix(w)).cpu(), torch.linalg.svdvals(as_matrix(w2)).cpu()
        shift = (s2 - s).abs()
        max_shift = float(shift.max())
        l2 = float(torch.linalg.vector_norm(shift))
        bound = float(torch.linalg.vector_norm(w2 - w))
        wnorm = float(torch.linalg.vector_norm(w))
        top = float(s[0])
        # svdvals is backward stable: each σ carries an error of a few ulps of σ_1; allow for it
        slack = 64 * torch.finfo(torch.float64).eps * max(top, float(s2[0])) * (len(s) ** 0.5)
        nan = float("nan")
        out.append(SpectralChange(
            name=n, shape=tuple(a[n].shape), sigma_before=s, sigma_after=s2,
            max_shift=max_shift, relative_shift=max_shift / top if top > 0 else nan,
            l2_shift=l2, mirsky_bound=bound,
            relative_l2_shift=l2 / wnorm if wnorm > 0 else nan,
            relative_change=bound / wnorm if wnorm > 0 else nan,
            holds=l2 <= bound + slack,
        ))
    return out
