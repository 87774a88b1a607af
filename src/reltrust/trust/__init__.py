"""Deep relative trust (Bernstein et al., NeurIPS 2020): distances between networks and the tools to measure them.

    relative_changes(before, after)         per-layer ‖ΔW_l‖/‖W_l‖
    deep_relative_trust(before, after)      Π_l (1 + ‖ΔW_l‖/‖W_l‖) − 1
    trust_surrogate(before, after)          (1/L) Σ_l [(1 + ‖ΔW_l‖/‖W_l‖)^L − 1]
    relative_function_change(a, b, x)       ‖f_b(x) − f_a(x)‖/‖f_a(x)‖             (Theorem 1)
    relative_gradient_change(a, b, loss, batch)  per layer ‖g_b − g_a‖/‖g_a‖       (Theorem 2)
    perturbation_probe(model, loss, batch, etas)  loss/function/gradient along a relative slice
    spectral_changes(before, after)         singular-value shifts and Mirsky's bound
    TrustMonitor(optimizer, model)          per-step relative updates, norms, σ_max during training

`before`/`after` are modules, state dicts or checkpoint paths.
"""
from reltrust.trust.distance import (
    DistanceReport,
    LayerDistance,
    deep_relative_trust,
    distance_report,
    drt_from_changes,
    layer_distances,
    load_state_dict,
    named_tensors,
    relative_changes,
    select_layers,
    surrogate_from_changes,
    trust_surrogate,
)
from reltrust.trust.function_space import relative_function_change, relative_gradient_change
from reltrust.trust.monitor import TrustMonitor
from reltrust.trust.probe import ProbeResult, perturbation_probe
from reltrust.trust.spectral import SpectralChange, singular_values, spectral_changes

__all__ = [
    "DistanceReport",
    "LayerDistance",
    "ProbeResult",
    "SpectralChange",
    "TrustMonitor",
    "deep_relative_trust",
    "distance_report",
    "drt_from_changes",
    "layer_distances",
    "load_state_dict",
    "named_tensors",
    "perturbation_probe",
    "relative_changes",
    "relative_function_change",
    "relative_gradient_change",
    "select_layers",
    "singular_values",
    "spectral_changes",
    "surrogate_from_changes",
    "trust_surrogate",
]
