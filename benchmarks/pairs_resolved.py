"""How many of the board's pairwise differences each metric resolves, at two profiles (issue 20).

For every directional headline metric, the SAE pairs whose difference is significant (paired over
the same units where they coincide, else Welch; Holm over the pairs at 5% family-wise:
:func:`saebench.significance.resolved_pairs`), counted on the SAEs both result sets hold, so the
two profiles are compared on the same pairs; and on every SAE of the first set.

    python benchmarks/pairs_resolved.py leaderboard/results STANDARD_RESULTS

Each argument is a results folder (``saebench run --out``); the first is usually the quick board,
the second the standard profile on a subset (docs/seed_reliability.md has the figures).
"""

from __future__ import annotations

import argparse
import warnings

from saebench.evaluators import metric_table
from saebench.leaderboard import evaluator_order, group_results, headline_columns
from saebench.results import is_baseline, load_results
from saebench.significance import resolved_pairs


def _rows(path: str) -> dict:
    """The SAE rows of a results folder's one real-model section (synthetic SAEs and baselines left out)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = [r for r in load_results([path]) if "synthetic" not in str(r.config.get("model"))]
    groups = group_results(results)
    if len(groups) != 1:
        raise SystemExit(f"{path}: expected one model/hook/config section, found {len(groups)}")
    rows = next(iter(groups.values()))
    return {n: row for n, row in rows.items() if not is_baseline(n)}, results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("first", help="results folder (e.g. the quick board)")
    ap.add_argument("second", help="results folder (e.g. the standard profile on a subset)")
    a = ap.parse_args()
    rows_a, res_a = _rows(a.first)
    rows_b, res_b = _rows(a.second)
    common = sorted(set(rows_a) & set(rows_b))
    evs = evaluator_order({e for row in rows_b.values() for e in row["results"]})
    decl = metric_table(evs, res_a + res_b)
    heads = headline_columns(rows_b, evs, decl)
    sub_a = {n: rows_a[n] for n in common}
    sub_b = {n: rows_b[n] for n in common}
    print(f"{len(common)} SAEs in both ({', '.join(common)}); first set: {len(rows_a)} SAEs")
    print("| evaluator | metric | first, same SAEs | second, same SAEs | first, all its SAEs |")
    print("|---|---|---|---|---|")
    for ev in evs:
        for m in heads[ev]:
            if m.direction not in ("up", "down"):
                continue
            qa, qb, qall = resolved_pairs(sub_a, ev, m), resolved_pairs(sub_b, ev, m), resolved_pairs(rows_a, ev, m)
            print(f"| {ev} | {m.column} | {qa[0]} of {qa[1]} | {qb[0]} of {qb[1]} | {qall[0]} of {qall[1]} |")


if __name__ == "__main__":
    main()
