"""The native kernels' C source is a real file shipped as package data, with its ABI version in one place."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

import pytest

from reltrust.optim import _native

CPP = resources.files("reltrust.optim._cpp")


def test_abi_version_is_written_once_in_the_header_and_the_library_returns_it():
    header, source = CPP.joinpath("kernels.h").read_text(), CPP.joinpath("kernels.c").read_text()
    assert _native._ABI == _native._read_abi(header)
    assert "return RT_ABI_VERSION;" in source and '#include "kernels.h"' in source
    assert not re.search(r"rt_abi_version\(void\)\s*\{\s*return\s+\d", source)
    with pytest.raises(RuntimeError, match="does not define RT_ABI_VERSION"):
        _native._read_abi("#define OTHER 4\n")
    if _native.available():
        assert _native._lib.rt_abi_version() == _native._ABI


@pytest.mark.skipif(_native._compiler() is None, reason="no C compiler")
def test_a_compiler_error_points_into_the_shipped_file(tmp_path, monkeypatch):
    src = tmp_path / "_cpp"
    src.mkdir()
    shutil.copy(CPP.joinpath("kernels.h"), src / "kernels.h")
    text = CPP.joinpath("kernels.c").read_text()
    (src / "kernels.c").write_text(text.replace("int rt_abi_version(void) {", "int rt_abi_version(void) { oops;"))
    monkeypatch.setattr(_native, "_SOURCES", src)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "build"))
    with pytest.raises(RuntimeError) as err:
        _native._build(_native._compiler())
    line = text[: text.index("int rt_abi_version(void) {")].count("\n") + 1
    assert f"{src / 'kernels.c'}:{line}:" in str(err.value), str(err.value)


def test_the_wheel_ships_the_c_source(tmp_path):
    pytest.importorskip("setuptools")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(tmp_path), str(root)], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.skip(f"could not build a wheel here: {proc.stderr.strip()[-300:]}")
    (wheel,) = tmp_path.glob("reltrust-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"reltrust/optim/_cpp/kernels.c", "reltrust/optim/_cpp/kernels.h"} <= names
