"""`reltrust distance A.pt B.pt [--json] [--include-biases]`: the per-layer table and deep relative trust.

Bad inputs (a missing or unreadable file, checkpoints that do not match, a zero-norm or non-finite
layer) print one line on stderr and return exit code 2; no traceback.
"""
from __future__ import annotations

import argparse
import json
import sys

from reltrust.trust.distance import DistanceReport, distance_report


def format_table(report: DistanceReport) -> str:
    """The text table printed by `reltrust distance`."""
    head = ("layer", "shape", "|W|", "|dW|", "|dW|/|W|")
    rows = [(d.name, "x".join(map(str, d.shape)), f"{d.norm:.6g}", f"{d.delta_norm:.6g}", f"{d.relative:.6g}")
            for d in report.layers]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells):
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(head), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    out.append("")
    out.append(f"layers               {len(report.layers)}")
    out.append(f"deep relative trust  {report.deep_relative_trust:.6g}   (prod_l (1 + |dW_l|/|W_l|) - 1)")
    out.append(f"trust surrogate      {report.trust_surrogate:.6g}   (mean_l (1 + |dW_l|/|W_l|)^L - 1)")
    if report.skipped:
        out.append(f"skipped (zero norm)  {', '.join(report.skipped)}")
    return "\n".join(out)


def distance_command(args: argparse.Namespace) -> int:
    """Run `reltrust distance`; return the exit code (0, or 2 for bad inputs)."""
    try:
        report = distance_report(
            args.before,
            args.after,
            include_biases=bool(getattr(args, "include_biases", False)),
            include=getattr(args, "include", None) or None,
            exclude=getattr(args, "exclude", None) or None,
            on_zero="skip" if getattr(args, "skip_zero_norm", False) else "raise",
        )
    except (OSError, ValueError, TypeError) as e:
        msg = " ".join(str(e).split())  # exactly one line
        print(f"reltrust distance: error: {msg}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(format_table(report))
    return 0
