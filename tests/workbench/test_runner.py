"""The runner: crashes are recorded and do not stop a sweep; worker processes give the same numbers."""
from __future__ import annotations

import pytest

from reltrust.workbench.runner import run_sweep, sweep
from reltrust.workbench.store import Store


def test_sweep_is_the_cartesian_product(tiny_spec):
    specs = sweep(tiny_spec(), problems=["mnist"], optimizers={"sgd": {"momentum": 0.9}, "adam": {}},
                  lrs={"sgd": [0.1, 0.01], "adam": [1e-3]}, seeds=[0, 1], models=[{"depth": 2}, {"depth": 3}])
    assert len(specs) == 2 * (2 + 1) * 2
    assert len({s.key for s in specs}) == len(specs)
    assert {s.optimizer for s in specs} == {"sgd", "adam"}
    assert all(s.kwargs("model")["width"] == 16 for s in specs)  # base kwargs kept, depth updated
    assert {s.kwargs("optimizer").get("momentum") for s in specs if s.optimizer == "sgd"} == {0.9}


def test_a_crash_is_recorded_with_its_error_and_the_sweep_goes_on(tmp_path, tiny_spec):
    good = tiny_spec()
    bad = tiny_spec(model_kwargs={"depth": 2, "width": 16, "activation": "no-such-activation"})
    diverging = tiny_spec(lr=1e12, optimizer_kwargs={})
    with Store(tmp_path / "s.sqlite") as store:
        summary = run_sweep([bad, good, diverging], store, workers=0, progress=False)
        assert (summary.ok, summary.diverged, summary.crashed, summary.not_run) == (1, 1, 1, 0)
        rec = store.get(bad)
        assert rec.status == "crashed"
        assert "Traceback" in rec.error and "no-such-activation" in rec.error
        assert store.get(good).status == "ok" and store.get(diverging).status == "diverged"
        # rerunning retries only the crash
        again = run_sweep([bad, good, diverging], store, workers=0, progress=False)
        assert (again.ran, again.skipped, again.crashed) == (1, 2, 1)


def test_negative_workers_and_threads_are_refused(tmp_path, tiny_spec):
    with Store(tmp_path / "s.sqlite") as store:
        with pytest.raises(ValueError, match=r"^workers must be >= 0 \(0: run in this process\), got -1$"):
            run_sweep([tiny_spec()], store, workers=-1, progress=False)
        for threads in (0, -1):
            with pytest.raises(ValueError, match=rf"^threads must be >= 1, got {threads}$"):
                run_sweep([tiny_spec()], store, workers=1, threads=threads, progress=False)
        assert len(store) == 0
