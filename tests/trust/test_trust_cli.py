"""`reltrust distance` on saved checkpoints: the table, --json, and one-line errors with exit code 2."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reltrust.cli import main

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def checkpoints(mlp, tmp_path):
    """Two checkpoints of a 3-layer MLP: layer 0 scaled by 1.1, layer 2 given a random move."""
    a = mlp(3, seed=0)
    b = copy.deepcopy(a)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        b[0].weight.mul_(1.1)
        b[2].weight.add_(0.01 * torch.randn(b[2].weight.shape, generator=g))
        b[4].bias.add_(1.0)
    torch.save(a.state_dict(), tmp_path / "a.pt")
    torch.save({"model": b.state_dict(), "step": 10}, tmp_path / "b.pt")
    ref = {}
    for n in ("0.weight", "2.weight", "4.weight", "0.bias", "2.bias", "4.bias"):
        w, w2 = a.get_parameter(n).detach().double(), b.get_parameter(n).detach().double()
        ref[n] = float((w2 - w).norm() / w.norm())
    return tmp_path / "a.pt", tmp_path / "b.pt", ref


def test_text_table(checkpoints, capsys):
    a, b, ref = checkpoints
    assert main(["distance", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split() and line.split()[0] in ref}
    assert list(rows) == ["0.weight", "2.weight", "4.weight"]  # no biases by default
    assert rows["0.weight"][1] == "32x16"
    for n, cells in rows.items():
        assert float(cells[-1]) == pytest.approx(ref[n], rel=1e-5, abs=1e-9)
    drt = (1 + ref["0.weight"]) * (1 + ref["2.weight"]) * (1 + ref["4.weight"]) - 1
    drt_line = next(line for line in out.splitlines() if line.startswith("deep relative trust"))
    assert float(drt_line.split()[3]) == pytest.approx(drt, rel=1e-5)
    sur = sum((1 + ref[n]) ** 3 - 1 for n in ("0.weight", "2.weight", "4.weight")) / 3
    sur_line = next(line for line in out.splitlines() if line.startswith("trust surrogate"))
    assert float(sur_line.split()[2]) == pytest.approx(sur, rel=1e-5)


def test_json_and_include_biases(checkpoints, capsys):
    a, b, ref = checkpoints
    assert main(["distance", str(a), str(b), "--json", "--include-biases"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert [layer["name"] for layer in d["layers"]] == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    for layer in d["layers"]:
        assert layer["relative"] == pytest.approx(ref[layer["name"]], rel=1e-12, abs=1e-15)
        assert layer["delta_norm"] == pytest.approx(layer["relative"] * layer["norm"], rel=1e-12)
    prod = 1.0
    for v in ref.values():
        prod *= 1 + v
    assert d["deep_relative_trust"] == pytest.approx(prod - 1, rel=1e-12)
    assert d["layers"][0]["shape"] == [32, 16] and d["num_layers"] == 6


def test_include_exclude_and_skip_zero(mlp, tmp_path, capsys):
    a = mlp(3)
    with torch.no_grad():
        a[2].weight.zero_()
    torch.save(a.state_dict(), tmp_path / "z.pt")
    assert main(["distance", str(tmp_path / "z.pt"), str(tmp_path / "z.pt")]) == 2
    assert "'2.weight' has zero norm" in capsys.readouterr().err
    assert main(["distance", str(tmp_path / "z.pt"), str(tmp_path / "z.pt"), "--skip-zero-norm"]) == 0
    assert "skipped (zero norm)  2.weight" in capsys.readouterr().out
    assert main(["distance", str(tmp_path / "z.pt"), str(tmp_path / "z.pt"), "--exclude", r"^2\.", "--json"]) == 0
    assert [layer["name"] for layer in json.loads(capsys.readouterr().out)["layers"]] == ["0.weight", "4.weight"]


def test_error_paths_in_process(checkpoints, mlp, tmp_path, capsys):
    a, _, _ = checkpoints
    assert main(["distance", str(a), str(tmp_path / "missing.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("reltrust distance: error:") and "missing.pt" in err
    torch.save(mlp(3, width=8).state_dict(), tmp_path / "narrow.pt")
    assert main(["distance", str(a), str(tmp_path / "narrow.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'0.weight' has shape (32, 16) in before but (8, 16) in after" in err
    torch.save({"epoch": 3}, tmp_path / "nomodel.pt")
    assert main(["distance", str(a), str(tmp_path / "nomodel.pt")]) == 2
    assert "no model state dict found" in capsys.readouterr().err


def run_cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(SRC))
    return subprocess.run([sys.executable, "-m", "reltrust", "distance", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def test_real_process(checkpoints, tmp_path):
    a, b, ref = checkpoints
    ok = run_cli(a, b, "--json", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["layers"][0]["relative"] == pytest.approx(ref["0.weight"], rel=1e-12)
    (tmp_path / "junk.pt").write_bytes(b"\x00 definitely not a checkpoint")
    r = run_cli(a, tmp_path / "junk.pt", cwd=tmp_path)  # (a missing file: see the in-process test)
    assert r.returncode == 2
    assert r.stdout == ""
    assert "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("reltrust distance: error: cannot load checkpoint")


def test_a_text_file_is_named_as_no_checkpoint(checkpoints, tmp_path, capsys):
    a, _, _ = checkpoints
    (tmp_path / "notes.txt").write_text("hello world\nthese are notes, not a checkpoint\n")
    assert main(["distance", str(a), str(tmp_path / "notes.txt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"reltrust distance: error: cannot load checkpoint {tmp_path}")
    assert "the file is neither a zip archive nor a pickle (" in err  # not just torch's "101"
    (tmp_path / "empty.pt").write_bytes(b"")
    assert main(["distance", str(a), str(tmp_path / "empty.pt")]) == 2
    assert "the file is empty or ends too early" in capsys.readouterr().err
