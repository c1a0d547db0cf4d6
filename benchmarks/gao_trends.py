"""Gao et al.'s qualitative findings, checked on a results folder of the reference zoo.

    python benchmarks/gao_trends.py RESULTS_DIR [--out docs/gao_trends_table.md]

Gao et al. (2024, "Scaling and evaluating sparse autoencoders", arXiv 2406.04093; ICLR 2025)
report trends across SAE width, k and architecture. ``FINDINGS`` below declares each trend our
board can test as comparisons of two zoo members on one metric, with the sign of A − B the paper
predicts. For each, the difference and its 95% interval come from the project's own comparison
(:func:`saebench.compare.compare`, as in ``saebench compare A B``: paired over the units the two
results share, Welch otherwise), and the verdict is

- ``reproduced``: the paper's sign, interval excluding 0;
- ``contradicted``: the opposite sign, interval excluding 0;
- ``not resolvable at this profile``: the interval covers 0, or there is none;
- ``not run``: a result or metric is missing (e.g. an evaluator the board did not run).

The intervals are per row (95% each, no correction for the number of rows) and cover the data
sample of one set of weights, not training seeds. Reads result JSONs only: seconds on one core.
Prints a markdown table (docs/gao_trends.md explains the findings and caveats).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from saebench.compare import Row, compare
from saebench.errors import SaebenchError
from saebench.results import load_results


@dataclass(frozen=True)
class Finding:
    """One comparison: the paper expects ``sign`` (+1 or -1) for ``metric``(a) − ``metric``(b)."""

    text: str
    cite: str
    metric: str  # "evaluator.metric"
    a: str  # SAE folder names under the results folder
    b: str
    sign: int


TOPK, RELU = "topk-2304-k32", "relu-2304-l0_32"
WIDE, MID, NARROW = "topk-4608-k32", "topk-2304-k32", "topk-1152-k32"
K64, K32, K16 = "topk-2304-k64", "topk-2304-k32", "topk-2304-k16"
ABL = "ablation.ablation_sparsity_active"

#: (finding, citation, metric, A, B, expected sign of A − B); width pairs at k = 32, k pairs at width 2304
FINDINGS = (
    Finding("MSE falls with width at fixed k", "sec. 3.1, Fig. 1", "core.fvu", WIDE, MID, -1),
    Finding("MSE falls with width at fixed k", "sec. 3.1, Fig. 1", "core.fvu", MID, NARROW, -1),
    Finding("MSE falls with k at fixed width", "sec. 3.1, Fig. 1", "core.fvu", K64, K32, -1),
    Finding("MSE falls with k at fixed width", "sec. 3.1, Fig. 1", "core.fvu", K32, K16, -1),
    Finding("Downstream loss falls with width at fixed k", "sec. 4.1", "core.delta_ce", WIDE, MID, -1),
    Finding("Downstream loss falls with width at fixed k", "sec. 4.1", "core.delta_ce", MID, NARROW, -1),
    Finding("Downstream loss falls with k at fixed width", "sec. 4.1", "core.delta_ce", K64, K32, -1),
    Finding("Downstream loss falls with k at fixed width", "sec. 4.1", "core.delta_ce", K32, K16, -1),
    Finding("TopK reconstructs better than ReLU at matched L0", "sec. 5.2, Fig. 2a", "core.fvu", TOPK, RELU, -1),
    Finding("TopK has lower downstream loss than ReLU at matched L0", "sec. 4.1, 5.2", "core.delta_ce", TOPK, RELU, -1),
    Finding("TopK (AuxK) leaves fewer dead latents than ReLU", "sec. 2.4", "core.dead_frac", TOPK, RELU, -1),
    Finding("1-D probe loss falls with width", "sec. 4.2", "probing.heldout_probe_loss", WIDE, NARROW, -1),
    Finding("1-D probe loss falls with width", "sec. 4.2", "probing.probe_loss_below_floor", WIDE, NARROW, 1),
    Finding("TopK probes better than ReLU", "sec. 4.2", "probing.heldout_probe_loss", TOPK, RELU, -1),
    Finding("N2G explanations improve with width", "sec. 4.3", "n2g.n2g_f1", WIDE, NARROW, 1),
    Finding("TopK explains better than ReLU at same width and L0", "sec. 4.3", "n2g.n2g_f1", TOPK, RELU, 1),
    Finding("Ablation effects get sparser with width", "sec. 4.5", ABL, WIDE, NARROW, -1),
    Finding("Ablation effects sparser for TopK than ReLU", "sec. 4.5", ABL, TOPK, RELU, -1),
)

NOT_RESOLVED = "not resolvable at this profile"


def comparison_rows(results: Path, a: str, b: str, evaluator: str) -> dict[str, Row] | str:
    """Every metric row of ``saebench compare A B`` for one evaluator, or why there is none."""
    fa, fb = results / a / f"{evaluator}.json", results / b / f"{evaluator}.json"
    missing = [str(f.relative_to(results)) for f in (fa, fb) if not f.is_file()]
    if missing:
        return f"not run ({', '.join(missing)} missing)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cmp = compare([fa], [fb], direct=True)
    return {r.metric: r for r in cmp.rows}


def judge(row: Row, sign: int) -> tuple[str, str]:
    """The A − B cell and the verdict for a row whose expected sign is ``sign``."""
    if row.verdict in ("not run", "new metric", "missing"):
        return "", "not run (metric absent on one side)"
    if row.diff is None:  # null / NaN on a side
        return "", f"{NOT_RESOLVED} ({row.verdict})"
    if row.low is None or row.high is None:
        why = "identical" if row.diff == 0 else "no interval"
        if row.diff != 0 and "no interval (" in row.basis:  # e.g. too few distinct values to bound it
            why += ": " + row.basis.split("no interval (", 1)[1][:-1].split(" (")[0]
        return f"{row.diff:+.4g} ({why})", NOT_RESOLVED
    cell = f"{row.diff:+.4g} [{row.low:+.3g}, {row.high:+.3g}]" + (" p" if row.paired else "")
    if row.low > 0 or row.high < 0:
        return cell, "reproduced" if (row.diff > 0) == (sign > 0) else "contradicted"
    return cell, NOT_RESOLVED


def l0_note(results: Path, names: list[str]) -> str:
    """The measured L0 of the SAEs compared across architectures (the paper compares at matched L0)."""
    parts = []
    for name in names:
        f, l0 = results / name / "core.json", None
        try:
            l0 = load_results([f])[0].metrics.get("l0") if f.is_file() else None
        except SaebenchError:  # damaged: the table's core rows already say so
            pass
        parts.append(f"{name} {l0:.1f}" if isinstance(l0, (int, float)) else f"{name} (no core result)")
    return "L0 measured by core: " + ", ".join(parts) + "."


def table(results: Path) -> str:
    """The markdown table of every finding, followed by a count of verdicts and the L0 note."""
    cache: dict[tuple[str, str, str], dict[str, Row] | str] = {}
    lines = [
        "| finding | citation | metric | A vs B | A − B [95% CI] (p: paired) | verdict |",
        "|---|---|---|---|---|---|",
    ]
    kinds = {"reproduced": 0, "contradicted": 0, NOT_RESOLVED: 0, "not run": 0}
    previous = ""
    for f in FINDINGS:
        evaluator, metric = f.metric.split(".", 1)
        key = (f.a, f.b, evaluator)
        if key not in cache:
            try:
                cache[key] = comparison_rows(results, f.a, f.b, evaluator)
            except SaebenchError as exc:  # incomparable configurations, damaged files
                cache[key] = f"not run (cannot compare: {exc})"
        rows = cache[key]
        if isinstance(rows, str):
            cell, verdict = "", rows
        elif metric not in rows:
            cell, verdict = "", "not run (metric absent)"
        else:
            cell, verdict = judge(rows[metric], f.sign)
        kinds[next(k for k in kinds if verdict.startswith(k))] += 1
        expect = "A < B" if f.sign < 0 else "A > B"
        text, cite = (f.text, f.cite) if f.text != previous else ("", "")
        previous = f.text
        lines.append(f"| {text} | {cite} | `{f.metric}` ({expect}) | {f.a} vs {f.b} | {cell} | {verdict} |")
    lines += [
        "",
        f"{len(FINDINGS)} comparisons: " + ", ".join(f"{n} {k}" for k, n in kinds.items()) + ".",
        l0_note(results, [TOPK, RELU]),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, help="a results folder: one subfolder per SAE (saebench run --out)")
    ap.add_argument("--out", type=Path, help="also write the table to this file")
    args = ap.parse_args(argv)
    try:
        if not args.results.is_dir():
            raise SaebenchError(f"{args.results} is not a folder; pass the --out folder of `saebench run`")
        text = table(args.results)
    except SaebenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
