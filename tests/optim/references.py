"""Independent float64 references for the optimisers, written from shared/design/algorithms.md.

Each takes lists of float64 tensors (weights, gradients) and a state dict it owns, and returns the
new weights. Plain loops, no shared code with reltrust.
"""
import math

import torch


def _norm(t):
    return math.sqrt(float((t.double() ** 2).sum()))


def fromage(ws, gs, state, lr, momentum=0.0, p_bound=None, trust=True, maximize=False):
    out = []
    for i, (w, g) in enumerate(zip(ws, gs)):
        g = -g if maximize else g
        if momentum > 0:
            m = state.get(("m", i), torch.zeros_like(w))
            m = momentum * m + (1 - momentum) * g
            state[("m", i)] = m
            g = m
        wn, gn = _norm(w), _norm(g)
        if p_bound is not None and ("w0", i) not in state:
            state[("w0", i)] = wn
        if not (trust and gn == 0):  # a zero direction takes no step, not even the division (see Fromage)
            r = wn / gn if (trust and wn > 0 and gn > 0) else 1.0
            w = (w - lr * r * g) / math.sqrt(1 + lr * lr)
        if p_bound is not None:
            bound = p_bound * state[("w0", i)]
            if _norm(w) > bound:
                w = w * (bound / _norm(w))
        out.append(w)
    return out


def lars(ws, gs, state, lr, momentum=0.9, weight_decay=0.0, kappa=0.001, eps=0.0, nesterov=False,
         trust=True, maximize=False):
    out = []
    for i, (w, g) in enumerate(zip(ws, gs)):
        g = -g if maximize else g
        wn, gn = _norm(w), _norm(g)
        r = kappa * wn / (gn + weight_decay * wn + eps) if (trust and wn > 0 and gn > 0) else 1.0
        d = lr * r * (g + weight_decay * w)
        if momentum > 0:
            v = momentum * state.get(("v", i), torch.zeros_like(w)) + d
            state[("v", i)] = v
            w = w - (d + momentum * v) if nesterov else w - v
        else:
            w = w - d
        out.append(w)
    return out


def lamb(ws, gs, state, lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, trust=True, maximize=False):
    b1, b2 = betas
    out = []
    for i, (w, g) in enumerate(zip(ws, gs)):
        g = -g if maximize else g
        t = state.get(("t", i), 0) + 1
        m = b1 * state.get(("m", i), torch.zeros_like(w)) + (1 - b1) * g
        v = b2 * state.get(("v", i), torch.zeros_like(w)) + (1 - b2) * g * g
        state[("t", i)], state[("m", i)], state[("v", i)] = t, m, v
        u = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps) + weight_decay * w
        wn, un = _norm(w), _norm(u)
        r = wn / un if (trust and wn > 0 and un > 0) else 1.0
        out.append(w - lr * r * u)
    return out


def nero(ws, gs, state, lr, beta=0.999, constraints=True, maximize=False):
    """Nero (algorithms.md): rows of a ≥2-D tensor are neurons, each entry of a 1-D tensor one."""

    def project(rows):
        out = []
        for r in rows:
            r = r - float(r.sum()) / r.numel()
            n = _norm(r)
            out.append(r / n if n > 0 else r)
        return out

    out = []
    for i, (w, g) in enumerate(zip(ws, gs)):
        g = -g if maximize else g
        n_rows = w.shape[0] if w.ndim else 1
        rows = list(w.reshape(n_rows, -1).clone())
        grows = list(g.reshape(n_rows, -1))
        proj = constraints and w.ndim >= 2
        t = state.get(("t", i), 0) + 1
        state[("t", i)] = t
        if t == 1:
            if proj:
                rows = project(rows)
            sigma = sum(_norm(r) for r in rows) / n_rows
            state[("sigma", i)] = sigma if sigma != 0 else 0.01
        sigma = state[("sigma", i)]
        v = state.get(("v", i), [0.0] * n_rows)
        for k in range(n_rows):
            v[k] = beta * v[k] + (1 - beta) * _norm(grows[k]) ** 2
            if v[k] != 0:
                rows[k] = rows[k] - lr * sigma * grows[k] / math.sqrt(v[k] / (1 - beta**t))
        state[("v", i)] = v
        if proj:
            rows = project(rows)
        out.append(torch.stack(rows).reshape(w.shape))
    return out
