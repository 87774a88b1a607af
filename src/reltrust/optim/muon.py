"""Muon for the hidden weight matrices, AdamW for the rest, as one torch optimiser ("muon").

    opt = create("muon", model, lr=0.02, adamw_lr=1e-3)

The Muon update is torch's own (`torch.optim.Muon`, Nesterov momentum, Newton–Schulz orthogonalisation,
shape-dependent lr adjustment, decoupled weight decay); the others take torch's `AdamW`. This module
only routes parameters and keeps the two as one object.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from reltrust.optim._base import check_float


def route(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(Muon, AdamW) parameters of a model that require grad, each listed once.

    Muon: the 2-D ``weight`` of every ``nn.Linear`` except the output head, the last ``nn.Linear`` in
    ``model.modules()`` order (a model whose head comes earlier in that order should pass explicit
    groups). AdamW: everything else — embeddings (``nn.Embedding``/``nn.EmbeddingBag``, and a Linear
    weight tied to one), the head, biases, normalisation layers, convolutions and any parameter that
    is not a Linear weight (Muon takes 2-D tensors only).
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    head = linears[-1] if linears else None
    embedded = {id(p) for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) for p in m.parameters()}
    muon_ids = {id(m.weight) for m in linears if m is not head and m.weight.ndim == 2 and id(m.weight) not in embedded}
    if head is not None:
        muon_ids.discard(id(head.weight))  # a head tied to a hidden layer's weight goes to AdamW
    muon, adamw, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (muon if id(p) in muon_ids else adamw).append(p)
    return muon, adamw


class MuonAdamW(torch.optim.Optimizer):
    r"""torch's Muon on hidden weight matrices, torch's AdamW on everything else, as one optimiser.

    Routing (each group holds ``use_muon``):
      * a model (``nn.Module``): `route` — Muon for the weights of its ``nn.Linear`` layers but the
        last one (the output head) and any tied to an embedding; AdamW for the head, embeddings,
        biases, normalisation layers, convolutions and all other parameters;
      * an iterable of tensors: every 2-D tensor to Muon, every other to AdamW (a list cannot tell
        the head or an embedding from a hidden matrix: pass the model, or groups, for that);
      * param groups (dicts): a group with ``use_muon`` is routed by it (True: all its tensors must be
        2-D), one without is split by the tensor rule.

    Muon groups take ``lr``, ``momentum``, ``weight_decay``, ``nesterov``, ``ns_steps``,
    ``adjust_lr_fn`` (torch.optim.Muon's meaning); AdamW groups ``adamw_lr`` as their ``lr``,
    ``adamw_betas``, ``adamw_eps``, ``adamw_weight_decay``. Both kinds are in ``param_groups`` (an LR
    scheduler scales each group's lr, so the two keep their ratio), one ``state`` and one
    ``state_dict``; ``step`` runs torch's Muon step, then torch's AdamW step, on the groups of each.
    """

    routes_modules = True  # `create` hands it the model, not model.parameters()

    def __init__(
        self,
        params,
        lr: float = 0.02,
        momentum: float = 0.95,
        weight_decay: float = 0.0,
        nesterov: bool = True,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = None,
        adamw_lr: float = 1e-3,
        adamw_betas: tuple[float, float] = (0.9, 0.999),
        adamw_eps: float = 1e-8,
        adamw_weight_decay: float = 0.0,
    ) -> None:
        check_float("lr", lr, 0.0)
        check_float("adamw_lr", adamw_lr, 0.0)
        check_float("momentum", momentum, 0.0, 1.0)
        check_float("weight_decay", weight_decay, 0.0)
        check_float("adamw_weight_decay", adamw_weight_decay, 0.0)
        self._muon_kw = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                             ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
        self._adamw_kw = dict(lr=adamw_lr, betas=tuple(adamw_betas), eps=adamw_eps, weight_decay=adamw_weight_decay)
        groups = []
        for group in self._split(params):
            kw = self._muon_kw if group["use_muon"] else self._adamw_kw
            groups.append({**kw, **group})
        if not groups:
            raise ValueError("MuonAdamW: no parameters to optimise")
        super().__init__(groups, dict(use_muon=False))
        self._link()

    @staticmethod
    def _split(params) -> list[dict[str, Any]]:
        if isinstance(params, nn.Module):
            muon, adamw = route(params)
            return [g for g in ({"params": muon, "use_muon": True}, {"params": adamw, "use_muon": False}) if g["params"]]
        params = list(params)
        if params and isinstance(params[0], dict):
            out = []
            for g in params:
                ps = list(g["params"]) if not isinstance(g["params"], torch.Tensor) else [g["params"]]
                if "use_muon" in g:
                    if g["use_muon"] and any(p.ndim != 2 for p in ps):
                        raise ValueError("MuonAdamW: a group with use_muon=True must hold 2-D tensors only")
                    out.append({**g, "params": ps})
                    continue
                for flag in (True, False):
                    sel = [p for p in ps if (p.ndim == 2) == flag]
                    if sel:
                        out.append({**g, "params": sel, "use_muon": flag})
            return out
        muon = [p for p in params if p.ndim == 2]
        adamw = [p for p in params if p.ndim != 2]
        return [g for g in ({"params": muon, "use_muon": True}, {"params": adamw, "use_muon": False}) if g["params"]]

    def _link(self) -> None:
        """Inner torch optimisers over the very same group dicts and state (rebuilt after a load)."""
        muon = [g for g in self.param_groups if g["use_muon"]]
        adamw = [g for g in self.param_groups if not g["use_muon"]]
        self._inner = []
        for cls, groups, kw in ((torch.optim.Muon, muon, self._muon_kw), (torch.optim.AdamW, adamw, self._adamw_kw)):
            if not groups:
                continue
            inner = cls([{"params": list(g["params"])} for g in groups], **kw)
            inner.param_groups = groups  # share: schedulers and users edit one dict
            for g in groups:
                for key, value in inner.defaults.items():
                    g.setdefault(key, value)
            inner.state = self.state
            self._inner.append(inner)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if "_muon_kw" in self.__dict__:
            self._link()

    def __getstate__(self) -> dict[str, Any]:
        return {"defaults": self.defaults, "state": self.state, "param_groups": self.param_groups,
                "_muon_kw": self._muon_kw, "_adamw_kw": self._adamw_kw}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict["param_groups"]
        if len(saved) != len(self.param_groups) or any(
                s.get("use_muon") != g["use_muon"] for s, g in zip(saved, self.param_groups)):
            raise ValueError("MuonAdamW.load_state_dict: the saved groups are not routed as these "
                             f"({[s.get('use_muon') for s in saved]} vs {[g['use_muon'] for g in self.param_groups]})")
        super().load_state_dict(state_dict)
        self._link()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for inner in self._inner:
            inner.step()
        return loss

