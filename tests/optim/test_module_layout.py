"""reltrust.optim's module layout: no import circle, one DTensor helpers module, no shadowed public name."""
from __future__ import annotations

import ast
import types
from pathlib import Path

import reltrust
import reltrust._dtensor as dtensor
import reltrust.optim as optim

OPTIM = Path(optim.__file__).parent


def test_trust_ratio_is_the_function_and_no_module_shadows_it():
    """`reltrust.optim.trust_ratio` was both a module and, after `import reltrust.optim`, a function."""
    assert callable(optim.trust_ratio) and not isinstance(optim.trust_ratio, types.ModuleType)
    public = {name for name in optim.__all__}
    modules = {p.stem for p in OPTIM.glob("*.py")} | {p.name for p in OPTIM.iterdir() if p.is_dir()}
    assert not public & modules, public & modules


def test_no_lazy_imports_inside_functions_of_base():
    """`_base` used to import LAMB's block helpers inside a function (lamb imports _base): an import circle."""
    tree = ast.parse((OPTIM / "_base.py").read_text())
    inner = [n for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not [ast.unparse(n) for n in inner if "reltrust" in ast.unparse(n)]
    top = [n for n in tree.body if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("reltrust.optim")]
    assert {n.module for n in top} <= {"reltrust.optim", "reltrust.optim._native", "reltrust.optim._ratio"}


def test_optim_and_trust_share_one_dtensor_module():
    from reltrust.optim import _base, _native, _ratio, nero
    from reltrust.trust import distance, monitor

    for module in (_base, _ratio, nero, monitor):
        assert module.local is dtensor.local
    assert _ratio.is_dtensor is dtensor.is_dtensor and monitor.is_dtensor is dtensor.is_dtensor
    assert _native.sharded_indices is dtensor.sharded_indices and distance.full is dtensor.full
    src = Path(reltrust.__file__).parent
    for path in src.rglob("*.py"):
        if path.name != "_dtensor.py":
            text = path.read_text().replace("``full_tensor()``", "")  # docs may name it
            assert "def is_dtensor" not in text and ".full_tensor()" not in text, path
