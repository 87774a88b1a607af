"""RunSpec: canonical, stable keys (the store's primary key)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from reltrust.workbench.spec import RunSpec

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_key_is_stable_across_processes(tiny_spec):
    spec = tiny_spec(model_kwargs={"width": 16, "depth": 2, "init": "kaiming"}, schedule="cosine",
                     schedule_kwargs={"warmup": 2, "min_factor": 0.1}, lr=0.05)
    # spec.py imports only the standard library: load it alone so the check costs no torch import.
    code = (
        "import importlib.util, json, sys\n"
        "m = importlib.util.spec_from_file_location('spec', sys.argv[1]); mod = importlib.util.module_from_spec(m)\n"
        "sys.modules['spec'] = mod; m.loader.exec_module(mod)\n"
        "print(mod.RunSpec.from_dict(json.loads(sys.argv[2])).key)\n"
    )
    path = str(Path(SRC) / "reltrust" / "workbench" / "spec.py")
    # str hashing is salted per process (PYTHONHASHSEED); the key must not depend on it.
    for hashseed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code, path, json.dumps(spec.to_dict())], capture_output=True,
                             text=True, check=True, env={"PYTHONHASHSEED": hashseed})
        assert out.stdout.strip() == spec.key


def test_key_ignores_dict_order_and_int_float_spelling(tiny_spec):
    a = tiny_spec(lr=1, model_kwargs={"depth": 2, "width": 16})
    b = tiny_spec(lr=1.0, model_kwargs={"width": 16, "depth": 2})
    assert a == b and a.key == b.key and hash(a) == hash(b)
    assert len(a.key) == 64


@pytest.mark.parametrize("change", [dict(lr=0.2), dict(seed=1), dict(optimizer="adam", optimizer_kwargs={}),
                                    dict(model_kwargs={"depth": 3, "width": 16}), dict(epochs=3),
                                    dict(schedule="exponential"), dict(weight_decay=1e-4), dict(study="other")])
def test_every_field_is_part_of_the_key(change, tiny_spec):
    assert tiny_spec(**change).key != tiny_spec().key


def test_round_trip_and_views(tiny_spec):
    spec = tiny_spec(probe={"name": "perturbation", "etas": [0.0, 0.05, 0.1], "at_epochs": [0, 2]})
    again = RunSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and again.key == spec.key
    assert spec.kwargs("model") == {"depth": 2, "width": 16}
    assert spec.kwargs("probe")["etas"] == [0.0, 0.05, 0.1]
    with pytest.raises(Exception):
        spec.lr = 3.0  # frozen


@pytest.mark.parametrize("bad", [dict(schedule="linear"), dict(lr=float("nan")), dict(epochs=-1),
                                 dict(schedule_interval="batch"), dict(seed=1.5)])
def test_invalid_specs_are_refused(bad, tiny_spec):
    with pytest.raises((ValueError, TypeError)):
        tiny_spec(**bad)
