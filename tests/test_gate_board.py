"""The gate on every result the board publishes (issue 24): each committed zoo row passes against an
identical copy of itself, and fails against a copy whose headline metric got worse, for every
evaluator. CI gated only core, so a false failure on another evaluator (an offline autointerp
result once failed against itself) went unseen; this holds the gate to the whole board."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from saebench import stats
from saebench.compare import compare
from saebench.evaluators import Metric, metric_table
from saebench.results import Result, is_baseline, read_result, result_path, write_result

BOARD = Path(__file__).resolve().parents[1] / "leaderboard" / "results"
# baselines (floors) are not SAEs under test: the gate skips them (tests/test_significance.py)
ROWS = sorted(p.name for p in BOARD.iterdir() if p.is_dir() and not is_baseline(p.name)) if BOARD.is_dir() else []


def _worsened(res: Result, decl: dict[str, Metric]) -> tuple[Result, str] | None:
    """A copy of ``res`` with one directional headline metric moved to its bad side by 20 minimum
    effects (or 20% of its value), its per-unit samples shifted consistently so the paired interval
    sees the move; None when the evaluator declares no such metric with samples."""
    for m in decl.values():
        if not (m.headline and m.direction) or not isinstance(res.metrics.get(m.name), (int, float)):
            continue
        est = m.estimator
        if not isinstance(est, stats.Ratio) or est.unit not in res.samples:
            continue
        value = float(res.metrics[m.name])
        delta = max(20 * m.min_effect, 20 * m.min_rel_effect * abs(value), 0.2 * abs(value), 1e-3)
        sign = 1.0 if m.direction == "down" else -1.0
        col, coef = next(iter(est.num.items()))
        cols = res.samples[est.unit]["columns"]
        den_cols = est.den or {}
        n = len(cols[col])
        dens = [sum(c * float(cols[d][i] or 0.0) for d, c in den_cols.items()) if den_cols else 1.0 for i in range(n)]
        if not den_cols:  # a mean over units: every defined unit moves by delta
            dens = [1.0 if cols[col][i] is not None else 0.0 for i in range(n)]
        shift = sign * delta / (coef * est.scale)
        worse = res.model_copy(deep=True)
        wcols = worse.samples[est.unit]["columns"]
        wcols[col] = [None if v is None else float(v) + shift * d for v, d in zip(cols[col], dens, strict=True)]
        worse.metrics[m.name] = stats.estimate(est, stats.samples_from_json(worse.samples))
        return worse, m.name
    return None


@pytest.mark.skipif(not ROWS, reason="no committed board results")
@pytest.mark.parametrize("row", ROWS)
def test_each_board_row_passes_against_itself_and_fails_when_worse(row, tmp_path):
    evaluators = sorted(p.stem for p in (BOARD / row).glob("*.json"))
    decl = metric_table(evaluators, [read_result(BOARD / row / f"{e}.json") for e in evaluators])
    copy = tmp_path / "copy"
    shutil.copytree(BOARD / row, copy / row)
    same = compare([copy], [BOARD / row])
    assert not same.failures, [(r.evaluator, r.metric, r.verdict) for r in same.failures]
    assert {r.evaluator for r in same.rows} == set(evaluators)
    assert all(r.verdict in ("same", "not run") for r in same.rows), {r.verdict for r in same.rows}
    worsened = 0
    for ev in evaluators:
        res = read_result(BOARD / row / f"{ev}.json")
        made = _worsened(res, decl.get(ev, {}))
        if made is None:
            continue
        worse, metric = made
        target = tmp_path / f"worse-{ev}"
        shutil.copytree(BOARD / row, target / row)
        write_result(worse, result_path(target, res.sae.name, ev))
        cmp = compare([target], [BOARD / row])
        failed = {(r.evaluator, r.metric) for r in cmp.failures}
        row_of = next(r for r in cmp.rows if (r.evaluator, r.metric) == (ev, metric))
        if row_of.basis.startswith("not judged"):  # no interval (< 8 units) and no minimum effect: by design
            continue
        assert (ev, metric) in failed, (
            ev,
            metric,
            [(r.metric, r.verdict, r.diff) for r in cmp.rows if r.evaluator == ev],
        )
        worsened += 1
    assert worsened >= min(2, len(evaluators))  # core and at least one more evaluator can be worsened
