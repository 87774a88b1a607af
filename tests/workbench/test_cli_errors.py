"""Usage mistakes of `reltrust reproduce` / `reltrust run`: one line on stderr naming the argument and
what it allows, exit status 2, nothing written; a file that is no results store is refused untouched;
output into a closed pipe ends quietly."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from reltrust.cli import main

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _exit_and_stderr(argv: list[str], capsys) -> tuple[int, str]:
    """main(argv)'s exit status (argparse's usage errors exit through SystemExit) and its stderr."""
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


def _assert_one_line_usage_error(rc: int, err: str, command: str, expected: str) -> None:
    assert rc == 2, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith(f"reltrust {command}: error: ") and expected in err, err


COMMON_MISTAKES = [
    (["--seeds", "0"], "argument --seeds: must be a whole number >= 1, got '0'"),
    (["--seeds", "-1"], "argument --seeds: must be a whole number >= 1, got '-1'"),
    (["--seeds", "two"], "argument --seeds: must be a whole number >= 1, got 'two'"),
    (["--device", "tpu"], "argument --device: must be cpu, auto, cuda or cuda:N, got 'tpu'"),
    (["--device", "cuda:99"], "argument --device: 'cuda:99' requested but "),
    (["--data-dir", "{tmp}/missing"], "argument --data-dir: '{tmp}/missing' does not exist; it must be a folder"),
    (["--data-dir", "{tmp}/a-file"], "argument --data-dir: '{tmp}/a-file' is not a folder"),
]
MISTAKES = [("reproduce", *m) for m in COMMON_MISTAKES] + [("run", *m) for m in COMMON_MISTAKES] + [
    ("reproduce", ["--workers", "-1"], "argument --workers: must be a whole number >= 0 (0: run in this process), got '-1'"),
    ("reproduce", ["--threads", "-1"], "argument --threads: must be a whole number >= 1, got '-1'"),
    ("reproduce", ["--threads", "0"], "argument --threads: must be a whole number >= 1, got '0'"),
]
# The options every call needs: which run for `run`, the tiny grid for both.
NEEDED = {"reproduce": ["--tiny", "--no-progress"], "run": ["--tiny", "--index", "0"]}


@pytest.mark.parametrize("command, extra, expected", MISTAKES, ids=[f"{m[0]} {' '.join(m[1])}" for m in MISTAKES])
def test_a_bad_argument_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, command, extra, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("not a folder\n")
    extra = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    rc, err = _exit_and_stderr([command, "depth", "--out", str(tmp_path / "out"), *NEEDED[command], *extra], capsys)
    _assert_one_line_usage_error(rc, err, command, expected.replace("{tmp}", str(tmp_path)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # no output folder, no default runs/


@pytest.mark.parametrize("command", ["reproduce", "run"])
def test_an_unknown_study_or_index_writes_nothing(tmp_path, capsys, command):
    out = tmp_path / "out"
    rc, err = _exit_and_stderr([command, "no-such-study", "--out", str(out), *NEEDED[command]], capsys)
    _assert_one_line_usage_error(rc, err, command, "argument study: unknown study 'no-such-study'; known: depth")
    if command == "run":
        rc, err = _exit_and_stderr(["run", "depth", "--tiny", "--out", str(out), "--index", "36"], capsys)
        _assert_one_line_usage_error(rc, err, "run", "--index must be in [0, 35] for this grid, got 36")
    assert not out.exists()


@pytest.mark.parametrize("command", ["reproduce", "run"])
def test_an_out_that_cannot_be_a_folder_is_one_line(tmp_path, capsys, command):
    a_file = tmp_path / "results-elsewhere.txt"
    a_file.write_text("keep me\n")
    for out, expected in ((a_file, f"argument --out: '{a_file}' is a file; it must be a folder"),
                          (a_file / "sub", f"argument --out: '{a_file / 'sub'}' lies under the file '{a_file}'")):
        rc, err = _exit_and_stderr([command, "depth", "--out", str(out), *NEEDED[command]], capsys)
        _assert_one_line_usage_error(rc, err, command, expected)
    assert a_file.read_text() == "keep me\n" and sorted(p.name for p in tmp_path.iterdir()) == [a_file.name]


def test_an_out_that_is_not_writable_is_one_line(tmp_path, capsys):
    if os.geteuid() == 0:  # root passes every permission check: a read-only file system refuses it still
        if not Path("/sys/kernel").is_dir():
            pytest.skip("needs /sys (sysfs) to try a folder root cannot create")
        rc, err = _exit_and_stderr(["reproduce", "depth", "--out", "/sys/reltrust-out/x", *NEEDED["reproduce"]], capsys)
        _assert_one_line_usage_error(rc, err, "reproduce", "argument --out: cannot create '/sys/reltrust-out/x' (")
        return
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        rc, err = _exit_and_stderr(["reproduce", "depth", "--out", str(locked / "new"), *NEEDED["reproduce"]], capsys)
    finally:
        locked.chmod(0o700)
    _assert_one_line_usage_error(rc, err, "reproduce", f"argument --out: '{locked}' is not writable")


@pytest.mark.parametrize("argv", [["reproduce", "depth", *NEEDED["reproduce"], "--workers", "0"],
                                  ["run", "depth", "--tiny", "--list"],
                                  ["run", "depth", *NEEDED["run"]]], ids=["reproduce", "list", "run"])
def test_a_file_that_is_no_store_is_refused_untouched(tmp_path, capsys, argv):
    out = tmp_path / "out"
    out.mkdir()
    junk = out / "results.sqlite"
    junk.write_bytes(b"my notes, not a database\n" * 50)
    rc, err = _exit_and_stderr([*argv, "--out", str(out)], capsys)
    _assert_one_line_usage_error(
        rc, err, argv[0], f"{junk} is not a reltrust results store (not an SQLite database): "
                          "move it away or pass another --out")
    assert junk.read_bytes() == b"my notes, not a database\n" * 50
    assert sorted(p.name for p in out.iterdir()) in (["results.sqlite"], [".lock", "results.sqlite"])


def test_list_into_a_pipe_that_closes_early_ends_quietly(tmp_path):
    # ~3,600 lines, far more than a pipe holds: the writes after the reader is gone fail with EPIPE.
    cmd = [sys.executable, "-m", "reltrust", "run", "depth", "--tiny", "--seeds", "100", "--list",
           "--out", str(tmp_path / "out")]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": SRC}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()  # as `| head -1` does
    err = proc.stderr.read().decode()
    rc = proc.wait(timeout=120)
    assert first.split()[:2] == [b"0", first.split()[1]] and len(first.split()[1]) == 12
    assert (rc, err) == (141, "")
