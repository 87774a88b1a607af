"""The norm study: the GAN task's monitor traces against checkpoints, the quality scores against
hand-made cases, and the tiny grid end to end with its verdicts recomputed."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reltrust.workbench import quality
from reltrust.workbench.spec import RunSpec
from reltrust.workbench.train import fit

SPEC = RunSpec(study="norms-test", task="gan", dataset="mnist", model="mlp", optimizer="fromage", lr=0.01,
               optimizer2="adam", lr2=1e-3, optimizer2_kwargs={"betas": [0.0, 0.999]}, epochs=0, steps=7,
               batch_size=128, model_kwargs={"hidden": 16}, task_kwargs={"eval_examples": 64, "monitor_every": 3})


def _norms(state: dict, names: list[str]) -> list[float]:
    return [float(torch.linalg.vector_norm(state[n].double())) for n in names]


def test_norm_traces_equal_norms_of_saved_checkpoints(tmp_path):
    models: dict = {}
    run = fit(SPEC, models_out=models)
    trust = run.info["trust"]
    assert trust["generator"]["steps"] == [0, 3, 6, 7]
    assert all("parametrizations.weight.original" in n for n in trust["discriminator"]["layers"])
    assert not any(n.endswith("bias") for p in trust.values() for n in p["layers"])
    for steps in (0, 3, 7):  # a run stopped after `steps` steps is the long run's checkpoint there
        if steps == 7:
            ckpt = models
        else:
            ckpt = {}
            fit(SPEC.replace(steps=steps), models_out=ckpt) if steps else None
            if steps == 0:
                torch.manual_seed(SPEC.seed)
                from reltrust.workbench.tasks import make_task
                ckpt = make_task(SPEC, device=torch.device("cpu")).build()
        for player, t in trust.items():
            path = tmp_path / f"{player}-{steps}.pt"
            torch.save(ckpt[player].state_dict(), path)
            state = dict(torch.load(path, weights_only=True))
            i = t["steps"].index(steps)
            np.testing.assert_allclose(t["norm"][i], _norms(state, t["layers"]), rtol=1e-6)
            if steps in t["spectral_steps"]:
                j = t["spectral_steps"].index(steps)
                exact = [float(torch.linalg.matrix_norm(state[n].double().reshape(state[n].shape[0], -1), ord=2))
                         for n in t["layers"]]
                np.testing.assert_allclose(t["top_singular_value"][j], exact, rtol=1e-3)


@pytest.fixture(scope="module")
def scorer():
    return quality.load_scorer(quality.scorer_spec("mnist", epochs=2, width=32))


def test_real_images_against_themselves(scorer):
    from reltrust.workbench.tasks.base import load_cached

    d = load_cached("mnist", None, 0.1, 0, "symmetric")
    x, y = d.x_val, d.y_val
    logits, feats = scorer.logits_and_features(x)
    # the label accuracy of real images is the classifier's own accuracy on them
    assert quality.label_accuracy(logits, y) == pytest.approx(scorer.held_out["acc"], abs=1e-9)
    assert abs(quality.frechet_distance(feats, feats)) < 1e-6 * float(feats.double().var(0).sum())
    # an independent float64 reference: Tr((Σ_a Σ_b)^½) from the eigenvalues of Σ_a Σ_b
    xt = load_cached("mnist", None, 0.1, 0, "symmetric").x_train[:1000]
    _, ft = scorer.logits_and_features(xt)
    a, b = ft.double().numpy(), feats.double().numpy()
    ca, cb = np.cov(a.T), np.cov(b.T)
    ev = np.linalg.eigvals(ca @ cb).real.clip(min=0)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * np.sqrt(ev).sum()
    assert quality.frechet_distance(ft, feats) == pytest.approx(ref, rel=1e-5, abs=1e-6)


def test_noise_scores_near_chance(scorer):
    gen = torch.Generator().manual_seed(0)
    noise = torch.rand(2000, 1, 28, 28, generator=gen) * 2 - 1
    labels = torch.randint(0, 10, (2000,), generator=gen)
    logits, f_noise = scorer.logits_and_features(noise)
    assert abs(quality.label_accuracy(logits, labels) - 0.1) < 0.04
    from reltrust.workbench.tasks.base import load_cached

    d = load_cached("mnist", None, 0.1, 0, "symmetric")
    _, f_train = scorer.logits_and_features(d.x_train[:2000])
    _, f_val = scorer.logits_and_features(d.x_val)
    assert quality.frechet_distance(f_train, f_noise) > 10 * quality.frechet_distance(f_train, f_val)


def test_bad_task_kwargs_are_named():
    from reltrust.workbench.tasks import TaskError, make_task

    with pytest.raises(TaskError, match="monitor_every"):
        make_task(SPEC.replace(task_kwargs={"monitor_every": -1}), device=torch.device("cpu"))
    with pytest.raises(TaskError, match="scorer"):
        make_task(SPEC.replace(task_kwargs={"scorer": {"depth": 3}}), device=torch.device("cpu"))


def test_tiny_grid_end_to_end(tmp_path):
    from reltrust.workbench.runner import run_sweep
    from reltrust.workbench.store import Store
    from reltrust.workbench.studies import get_study
    from reltrust.workbench.studies import norms

    study = get_study("norms")
    specs = study.grid(tiny=True)
    study.prepare(specs, tmp_path)
    assert list(tmp_path.glob("scorer-mnist-*.pt"))
    with Store(tmp_path / "results.sqlite") as store:
        summary = run_sweep(specs, store, workers=0, progress=False)
        assert summary.ok == len(specs)
        report = study.analyse(store, tmp_path, specs=specs).read_text()
        records = store.records(specs=specs)
    table = norms.cells(records)
    for clause, verdict in norms.verdicts(table, "mnist"):
        assert f"| {clause} | {verdict} |" in report
        assert verdict.startswith(("holds", "does not hold"))
    # the Fromage verdict recomputed from the stored traces
    fro = next(r for r in records if norms.method_label(r.spec) == "fromage η=0.01")
    drift = max(abs(b / a - 1) for t in fro.info["trust"].values() for a, b in zip(t["norm"][0], t["norm"][-1]))
    first = norms.verdicts(table, "mnist")[0][1]
    assert first.startswith("holds" if drift <= norms.STABLE else "does not hold")
    assert list(tmp_path.glob("samples_mnist_*.png")) and (tmp_path / "norm_mnist.png").exists()
    assert "Fréchet" in report and "FID" not in report.replace("FID's formula", "")
