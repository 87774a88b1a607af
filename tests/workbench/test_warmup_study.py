"""`reltrust reproduce warmup`: post-LN and pre-LN blocks, the warmup schedule, the grid, the rules that
answer the questions, and the --tiny grid end to end."""
from __future__ import annotations

import json
import re

import pytest
import torch

from reltrust.cli import main
from reltrust.workbench.models import CharTransformer
from reltrust.workbench.results import RunRecord
from reltrust.workbench.schedules import build_scheduler
from reltrust.workbench.studies import warmup


# ------------------------------------------------------------------------------- post-LN / pre-LN
def _layer_norm(x, ln):
    """LayerNorm written out: (x − mean)/√(var + ε)·γ + β over the last dimension (biased variance)."""
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def _one_layer(post_ln):
    torch.manual_seed(0)
    m = CharTransformer(7, block_size=5, d_model=4, n_layers=1, n_heads=2, post_ln=post_ln).eval()
    with torch.no_grad():  # non-trivial gains and shifts, so that LN's place matters everywhere
        for ln in [mod for mod in m.modules() if isinstance(mod, torch.nn.LayerNorm)]:
            ln.weight.uniform_(0.5, 1.5)
            ln.bias.uniform_(-0.5, 0.5)
    return m


@pytest.mark.parametrize("post_ln", [True, False])
def test_one_layer_block_computes_what_its_name_says(post_ln):
    m = _one_layer(post_ln)
    idx = torch.tensor([[1, 4, 0, 6, 2]])
    b = m.blocks[0]
    x = m.tok_emb(idx) + m.pos_emb(torch.arange(5))[None]
    if post_ln:  # LN(x + attn(x)), then LN(h + mlp(h)), no final LN
        h = _layer_norm(x + b.attn(x), b.ln1)
        out = _layer_norm(h + b.mlp(h), b.ln2)
    else:  # x + attn(LN(x)), then h + mlp(LN(h)), then the final LN
        h = x + b.attn(_layer_norm(x, b.ln1))
        out = _layer_norm(h + b.mlp(_layer_norm(h, b.ln2)), m.ln_f)
    torch.testing.assert_close(m(idx), m.head(out), rtol=1e-5, atol=1e-6)
    other = _one_layer(not post_ln)
    other.load_state_dict(m.state_dict(), strict=False)  # same weights, the other arrangement
    assert not torch.allclose(other(idx), m(idx), atol=1e-3)


@torch.no_grad()
def test_post_ln_output_is_normalised_and_pre_ln_keeps_the_residual_stream():
    torch.manual_seed(1)
    seen = {}
    for post_ln in (True, False):
        m = CharTransformer(11, block_size=8, d_model=16, n_layers=3, n_heads=2, post_ln=post_ln).eval()
        h = m.blocks[-1](m.blocks[-2](m.blocks[0](m.tok_emb(torch.randint(0, 11, (2, 8))) + m.pos_emb.weight[None])))
        seen[post_ln] = h
        n_ln = sum(isinstance(x, torch.nn.LayerNorm) for x in m.modules())
        assert n_ln == 2 * 3 + (0 if post_ln else 1)
    var, mean = torch.var_mean(seen[True], dim=-1, unbiased=False)  # default γ = 1, β = 0
    torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-5, rtol=0)
    torch.testing.assert_close(var, torch.ones_like(var), atol=1e-3, rtol=0)
    assert float(seen[False].var(dim=-1, unbiased=False).mean()) < 0.1  # the embeddings' scale (0.02²·…)


def test_post_ln_must_be_a_bool():
    with pytest.raises(ValueError, match="post_ln must be a bool"):
        CharTransformer(10, post_ln=1)


# -------------------------------------------------------------------------------- schedule, grid
def test_linear_warmup_stepped_per_optimiser_step_is_lr_min_1_t_over_n():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.5)
    sched = build_scheduler(opt, "warmup", 100, warmup=4)
    lrs = []
    for _ in range(6):  # what fit does with schedule_interval="step": read lr, step, then sched.step()
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.5 * t / 4 for t in (1, 2, 3, 4)] + [0.5, 0.5])


def test_untuned_warmup_is_two_over_one_minus_beta2_and_runs_as_a_linear_warmup():
    assert warmup.untuned_warmup(0.999) == 2000 and warmup.untuned_warmup(0.98) == 100
    m = warmup.Method("untuned", warmup.untuned_warmup(0.98))
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1e-3)
    f = m.fields(0.98)
    sched = build_scheduler(opt, f["schedule"], 1000, **f["schedule_kwargs"])
    lrs = []
    for _ in range(150):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1e-3 * min(1.0, t / 100) for t in range(1, 151)])


def test_quick_and_full_grids_hold_what_the_issue_asks():
    for size, n_seeds in (("quick", 2), ("full", 3)):
        specs = warmup.STUDY.grid(size == "quick")
        assert sorted({s.seed for s in specs}) == list(range(n_seeds))
        probs = {warmup.problem_label(s) for s in specs}
        assert probs == {"Transformer, post-LN", "Transformer, pre-LN", "CNN / digits"}
        assert {s.lr for s in specs if s.task == "charlm"} == set(warmup.LM_LRS)
        assert {s.lr for s in specs if s.task == "classify"} == set(warmup.CNN_LRS)
        kinds = {warmup.method_of(s).kind for s in specs}
        assert kinds == set(warmup.KINDS)
        beta2 = warmup.STUDY.config(size == "quick").beta2
        for s in specs:
            m = warmup.method_of(s)
            assert s.schedule == ("warmup" if m.warmup else "constant")
            if m.warmup:
                assert s.schedule_interval == "step" and s.kwargs("schedule") == {"warmup": m.warmup}
            if m.kind == "untuned":
                assert m.warmup == round(2 / (1 - beta2))
            if s.optimizer != "fromage":
                assert s.kwargs("optimizer") == {"betas": [0.9, beta2]}
        # a few warmup lengths: the tuned ones and the untuned 2/(1-beta2), all distinct
        lengths = {warmup.method_of(s).warmup for s in specs if warmup.method_of(s).kind in ("warmup", "untuned")}
        assert len(lengths) >= (2 if size == "quick" else 3)
    assert len(warmup.STUDY.grid(True)) == 3 * 7 * 4 * 2


# ------------------------------------------------------------------------------ the answer rules
def _record(spec, val, initial=4.0, status="ok"):
    return RunRecord(spec=spec, status=status, history=[{"epoch": 0, "val_loss": initial, "train_loss": initial}],
                     final={"val_loss": val})


def _table(values):
    """values: (method kind, lr) → [final val loss per seed] on the post-LN Transformer of the quick grid."""
    specs = [s for s in warmup.STUDY.grid(True) if warmup.problem_label(s) == "Transformer, post-LN"]
    records = []
    for s in specs:
        m = warmup.method_of(s)
        key = (m.kind if m.kind != "warmup" else f"warmup {m.warmup}", s.lr)
        if key in values:
            v = values[key][s.seed]
            records.append(_record(s, v, status="diverged" if v is None else "ok"))
    return warmup.cells(records)


def test_clearly_better_needs_the_margin_and_no_overlap():
    t = _table({("adam", 1e-3): [2.0, 2.1], ("untuned", 1e-3): [1.9, 1.95], ("radam", 1e-3): [1.98, 2.05],
                ("radam_skip", 1e-3): [1.0, 2.5]})
    cell = {m.kind: c for (_, m, _), c in t.items()}
    assert warmup.clearly_better(cell["untuned"], cell["adam"])  # 3.7 % lower, no overlap
    assert not warmup.clearly_better(cell["radam"], cell["adam"])  # 1.2 % lower: within the margin
    assert not warmup.clearly_better(cell["radam_skip"], cell["adam"])  # lower mean but the seeds overlap
    assert not warmup.clearly_better(cell["adam"], cell["untuned"])


def test_answers_follow_the_runs():
    t = _table({
        ("adam", 1e-3): [2.0, 2.02], ("adam", 1e-2): [None, 3.9],  # diverged / stalled at 1e-2
        ("untuned", 1e-3): [2.0, 2.01], ("untuned", 1e-2): [2.2, 2.25],
        ("warmup 25", 1e-3): [2.1, 2.1], ("warmup 25", 1e-2): [3.0, 3.1],
        ("radam", 1e-3): [2.01, 2.03], ("radam", 1e-2): [2.6, 2.7],  # worse than the best warmup at 1e-2
        ("radam_skip", 1e-3): [1.99, 2.0], ("radam_skip", 1e-2): [2.21, 2.24],
    })
    ans = warmup.answers(t)["Transformer, post-LN"]
    assert ans["no_warmup"].startswith("yes at η = 0.01; Adam without warmup: 0.01 (diverged: ∞ vs adam, untuned")
    assert ans["radam"] == "partly: about equal at η = 0.001; better at none; worse at 0.01"
    assert ans["radam_skip"] == "yes: about equal at η = 0.001, 0.01; better at none; worse at none"
    assert ans["untuned_radam"] == "yes: about equal at η = 0.001; better at 0.01; worse at none"
    assert ans["robust"].startswith("yes: max − min over η")  # adam's spread is ∞
    pre = dict(ans, radam="yes: about equal at η = 0.001, 0.01; better at none; worse at none")
    ln = warmup.layer_norm_answer({"Transformer, post-LN": ans, "Transformer, pre-LN": pre})
    assert ln.startswith("yes: ") and "post-LN “partly”, pre-LN “yes”" in ln and ln.count("post-LN “") == 1
    assert warmup.layer_norm_answer({"Transformer, post-LN": ans, "Transformer, pre-LN": ans}).startswith("no")


# ---------------------------------------------------------------------------------- end to end
def test_warmup_study_tiny_grid_end_to_end(tmp_path):
    out = tmp_path / "warmup"
    assert main(["reproduce", "warmup", "--tiny", "--out", str(out), "--workers", "0", "--threads", "1",
                 "--no-progress"]) == 0
    for name in ("report.md", "results.csv", "results.json", "curves_1.png", "curves_2.png", "curves_3.png",
                 "final_vs_lr.png"):
        assert (out / name).is_file(), name
    runs = json.loads((out / "results.json").read_text())
    assert len(runs) == len(warmup.grid(tiny=True)) and all(r["status"] == "ok" for r in runs)
    report = (out / "report.md").read_text()
    assert "`radam` is `torch.optim.RAdam` (SGD with momentum while ρ_t ≤ 5)" in report
    assert "`radam_skip` is `reltrust.optim.RAdamSkip` (no step while ρ_t ≤ 5)" in report
    # the CNN table's radam_skip cell at η = 0.1 is the stored final validation loss (one seed)
    stored = next(r["final"]["val_loss"] for r in runs if r["spec"]["optimizer"] == "radam_skip"
                  and r["spec"]["dataset"] == "digits" and r["spec"]["lr"] == 0.1)
    table = report[report.index("### Table: CNN / digits"):]
    cell = re.search(r"^\| radam_skip \(no step while ρ_t ≤ 5\) \| [^|]+ \| ([0-9.]+)", table, re.M)
    assert cell and float(cell.group(1)) == pytest.approx(stored, abs=6e-4)
    for q in warmup.QUESTIONS.values():
        line = next(ln for ln in report.splitlines() if q in ln)
        assert re.search(r"\| (yes|no|partly|only)", line), line
    assert "Does post-LN versus pre-LN change the answer?" in report
