"""`reltrust …`: the command line. Thin: it parses arguments and calls the library.

What `reltrust --help` says to a user is `DESCRIPTION` and `EPILOG` below. Each subcommand has one `_add_<name>` function that declares its arguments and points at the
function that runs it; the work itself lives in `reltrust.trust` and `reltrust.workbench`.

A usage error is one line on stderr (``reltrust CMD: error: argument --X: …``), exit status 2. Output
into a pipe that closes early (``reltrust run depth --list | head``) ends quietly with status 141, as
for any program killed by SIGPIPE.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys

DESCRIPTION = (
    "Measure how far a network moved and reproduce the Fromage, LARS/LAMB and RAdam papers' claims on a CPU."
)
EPILOG = """examples:
  reltrust distance before.pt after.pt          per-layer relative change and deep relative trust
  reltrust reproduce --list                     the studies, with their sizes and times
  reltrust reproduce depth --quick              one study in minutes: results, figures, report
  reltrust bench --quick --optimizer mypkg.optim:MyOpt --optimizer adam
                                                your optimiser against others, one tuning protocol

The optimisers themselves are a library: from reltrust import Fromage, LARS, LAMB.
The workbench commands (reproduce, run, bench) need: pip install 'reltrust[workbench]'."""

#: What the workbench imports for every command (figures, progress bars); each data set's package
#: is checked by its own loader, which names it.
WORKBENCH_MODULES = ("matplotlib", "tqdm")


def _require_workbench(command: str) -> None:
    """Exit 2 with the install command when the workbench extra is missing (before anything runs)."""
    missing = [m for m in WORKBENCH_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        sys.stderr.write(
            f"reltrust {command}: needs the workbench extra (missing: {', '.join(missing)}): "
            "pip install 'reltrust[workbench]'\n"
        )
        raise SystemExit(2)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("reltrust")
    except PackageNotFoundError:  # run from a source tree that is not installed
        from reltrust import __version__

        return __version__


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, pointing at --help instead of the usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_distance(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distance", help="per-layer relative change and deep relative trust between two checkpoints")
    p.add_argument("before", help="checkpoint or state dict (.pt) of the first network")
    p.add_argument("after", help="checkpoint or state dict (.pt) of the second network")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--include-biases", action="store_true", help="count 1-d tensors (biases, norm weights) as layers")
    p.add_argument("--include", action="append", metavar="REGEX", help="only layers whose name matches (repeatable)")
    p.add_argument("--exclude", action="append", metavar="REGEX", help="leave out layers whose name matches (repeatable)")
    p.add_argument("--skip-zero-norm", action="store_true", help="leave out zero-norm layers instead of failing")

    def run(args: argparse.Namespace) -> int:
        from reltrust.trust.cli import distance_command

        return distance_command(args)

    p.set_defaults(func=run)


def _add_study_command(sub: argparse._SubParsersAction, name: str, help: str, quick_help: str) -> None:
    """`reproduce` and `run`: a study name, --quick, --out, then the workbench's own options."""
    p = sub.add_parser(name, help=help)
    p.add_argument("study", nargs="?" if name == "reproduce" else None,
                   help="which study (`reltrust reproduce --list` lists them)")
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--out", default=None, help="output folder (default: runs/<study>[-quick])")
    from reltrust.workbench import cli as workbench_cli

    getattr(workbench_cli, f"add_{name}_arguments")(p)

    def run(args: argparse.Namespace) -> int:
        _require_workbench(name)
        from reltrust.workbench import cli as workbench_cli

        return getattr(workbench_cli, f"{name}_command")(args)

    p.set_defaults(func=run)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="your optimiser against the others on the workbench's tasks: one tuning "
                                     "protocol, steps to a target, performance profiles and a report")
    # --optimizer and --hp share one list, in order: each --hp belongs to the --optimizer before it.
    p.add_argument("--optimizer", dest="entries", action="append", required=True, metavar="NAME_OR_IMPORT_PATH",
                   type=lambda s: ("optimizer", s),
                   help="a registered name (reltrust.optim.available()) or package.module:Class, a "
                        "torch.optim.Optimizer subclass (repeatable)")
    p.add_argument("--hp", dest="entries", action="append", metavar="NAME=VALUE", type=lambda s: ("hp", s),
                   help="a fixed hyperparameter of the --optimizer before it, e.g. --hp momentum=0.9 (repeatable)")
    p.add_argument("--tasks", nargs="+", default=None, metavar="TASK",
                   help="a subset of the tasks (default: all): mlp-mnist cnn-digits transformer-shakespeare mlp-mnist1d")
    p.add_argument("--quick", action="store_true", help="a grid of whole decades and 3 rerun seeds (minutes)")
    p.add_argument("--out", default=None, help="output folder (default: runs/bench[-quick]); rerunning resumes")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: one per CPU core; 0: run in this process)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: cores // workers)")
    p.add_argument("--data-dir", default=None, help="folder with dataset files (see reltrust.workbench.data)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # seconds-long tasks for the tests
    from reltrust.workbench.cli import add_executor_arguments

    add_executor_arguments(p)  # --executor local|dask|slurm, --scheduler, the slurm options, --dry-run

    def run(args: argparse.Namespace) -> int:
        _require_workbench("bench")
        from reltrust.workbench.bench import command

        return command(args)

    p.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="reltrust", description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"reltrust {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_distance(sub)
    _add_study_command(sub, "reproduce", "run one study of the papers and write its results, figures and report",
                       "the scaled-down grid that finishes in minutes on 2 cores")
    _add_study_command(sub, "run", "one run of a study's grid (also under torchrun: FSDP2 or DDP over the ranks)",
                       "a run of the grid of reproduce --quick")
    _add_bench(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away: send what is still buffered nowhere, so exiting does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return status


if __name__ == "__main__":
    sys.exit(main())
