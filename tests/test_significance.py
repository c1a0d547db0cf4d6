"""Significance marks on the board, baseline rows, reliability verdicts beside the columns, and the
gate skipping baselines (issue 20; saebench/significance.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from saebench import stats
from saebench.cli import main
from saebench.evaluators.base import Metric
from saebench.leaderboard import render
from saebench.reliability import MetricReliability, metric_reliability
from saebench.results import Result, SAERecord, result_path, write_result
from saebench.significance import marks, resolved_pairs

TOY = Metric("score", "a toy score", "up", True, "", "score", 0.0, stats.mean_of("task", "x"))
N_UNITS = 40


def _toy(name: str, values: np.ndarray, arch: str = "topk") -> Result:
    """A result of the toy evaluator whose per-task samples are ``values`` (same task ids for every SAE)."""
    ids = [f"t{i}" for i in range(len(values))]
    est = stats.interval(TOY.estimator, {"task": stats.Samples("task", ids, {"x": [float(v) for v in values]})})
    return Result(
        evaluator="toy",
        run_key="k",
        sae=SAERecord(name=name, source="x", architecture=arch, d_in=4, d_sae=64, fingerprint=name),
        config={"model": "m", "hook": "h", "profile": "quick", "tokens": 10, "ctx_len": 8, "seed": 0, "corpus": "c"},
        metrics={"score": float(np.mean(values))},
        uncertainty={"score": {"se": est.se, "df": est.df, "ci_low": est.low, "ci_high": est.high}},
        samples={"task": {"unit": "task", "ids": ids, "columns": {"x": [float(v) for v in values]}}},
        declarations={"score": TOY.to_dict()},
    )


def _board() -> list[Result]:
    """Paired units with a large shared task effect: 'best' beats 'worse' by far more than the noise
    of the *difference*, 'twin' differs from 'best' by less than that noise; the baseline scores
    highest of all but is a floor row."""
    rng = np.random.default_rng(0)
    task = rng.normal(0, 1.0, N_UNITS)  # the tasks' own difficulty: shared by every SAE (paired units)
    return [
        _toy("best", 0.80 + task + rng.normal(0, 0.01, N_UNITS)),
        _toy("twin", 0.799 + task + rng.normal(0, 0.01, N_UNITS)),
        _toy("worse", 0.70 + task + rng.normal(0, 0.01, N_UNITS), arch="relu"),
        _toy("baseline-pca-topk-1152-k32", 5.0 + task + rng.normal(0, 0.01, N_UNITS)),
    ]


def _rows(results: list[Result]) -> dict:
    return {r.sae.name: {"architecture": r.sae.architecture, "d_sae": 64, "results": {"toy": r}} for r in results}


def test_marks_are_paired_holm_controlled_and_never_a_baseline():
    rows = _rows(_board())
    mk = marks(rows, "toy", TOY)
    assert mk.best == "best"  # the baseline's higher score does not count
    assert mk.tied == frozenset({"twin"}) and mk.compared == 2
    # unpaired, the shared task effect (SD 1) hides a 0.1 difference: the pairing is what resolves it
    unpaired = [row["results"]["toy"].model_copy(update={"samples": {}}) for row in rows.values()]
    mk_unpaired = marks(_rows(unpaired), "toy", TOY)
    assert mk_unpaired.best == "best" and mk_unpaired.tied == frozenset({"twin", "worse"})
    assert resolved_pairs(rows, "toy", TOY) == (2, 3)  # best-worse, twin-worse; best-twin is noise


def test_a_metric_without_direction_or_rows_has_no_marks():
    rows = _rows(_board())
    assert marks(rows, "toy", Metric("score", "descriptive", "", True)).best is None
    assert marks(rows, "other", TOY).best is None and resolved_pairs(rows, "other", TOY) == (0, 0)


def test_board_bolds_the_tied_stars_the_best_and_sets_baselines_apart():
    text = render(_board())
    board, resolution_table = text.split("### What each column can tell apart")
    body = [ln for ln in board.splitlines() if ln.startswith("| ") and not ln.startswith("| SAE")]
    names = [ln.split("|")[1].strip() for ln in body]
    assert names == ["best", "twin", "worse", "*baseline-pca-topk-1152-k32*"]  # floors last, in italics
    row = {ln.split("|")[1].strip(): ln for ln in body}
    assert "** ★" in row["best"] and "**" in row["twin"] and "★" not in row["twin"]
    assert "**" not in row["worse"] and "**" not in row["*baseline-pca-topk-1152-k32*"]
    resolution = [ln for ln in resolution_table.splitlines() if "2 of 3" in ln]
    assert resolution and "1 of 2" in resolution[0] and "not measured" in resolution[0]


def _reliability_file(path, verdict_icc: float) -> None:
    runs = {"a": {0: (0.1, None), 1: (0.1 + verdict_icc, None)}, "b": {0: (0.5, None), 1: (0.52, None)},
            "c": {0: (0.9, None), 1: (0.91, None)}}  # fmt: skip
    row = metric_reliability("toy", "score", runs)
    payload = {"schema": "saebench-reliability/1", "metrics": [row.__dict__]}
    path.write_text(json.dumps(payload))


def test_reliability_verdict_beside_the_column_and_its_own_section(tmp_path, capsys):
    for r in _board():
        write_result(r, result_path(tmp_path / "res", r.sae.name, r.evaluator))
    _reliability_file(tmp_path / "rel.json", 0.01)
    out = tmp_path / "LB.md"
    assert main(["leaderboard", str(tmp_path / "res"), "-o", str(out), "--no-plots", "--reliability",
                 str(tmp_path / "rel.json")]) == 0  # fmt: skip
    text = out.read_text()
    assert "| score ↑ ● " in text  # separated configurations, small seed noise, τ = 1: ranks
    assert "## Training-seed reliability" in text and "ranks architectures" in text
    missing = str(tmp_path / "nope.json")
    assert main(["leaderboard", str(tmp_path / "res"), "-o", str(out), "--reliability", missing]) == 2
    assert "cannot read the reliability file" in capsys.readouterr().err


def test_icc_interval_matches_shrout_and_fleiss():
    """Shrout & Fleiss (1979) 6 targets × 4 judges: ICC(1,1) = 0.17, 95% interval [−0.13, 0.72]
    (as R's psych::ICC reports it). Targets are configurations, judges seeds."""
    data = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]
    runs = {f"c{i}": {s: (float(v), None) for s, v in enumerate(row)} for i, row in enumerate(data)}
    r = metric_reliability("x", "y", runs)
    assert r.icc == pytest.approx(0.166, abs=0.001)
    assert r.icc_low == pytest.approx(-0.13, abs=0.005) and r.icc_high == pytest.approx(0.72, abs=0.005)
    assert isinstance(r, MetricReliability) and r.tau_min is not None and r.tau_min <= r.tau


def test_gate_skips_baselines_with_a_note(tmp_path, capsys):
    board = _board()
    for r in board:
        write_result(r, result_path(tmp_path / "new", r.sae.name, r.evaluator))
        write_result(r, result_path(tmp_path / "old", r.sae.name, r.evaluator))
    assert main(["compare", str(tmp_path / "new"), "--baseline", str(tmp_path / "old")]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 baseline(s)" in out and "baseline-pca-topk-1152-k32" in out
    assert "| baseline-pca" not in out  # no row compares a floor
    only = tmp_path / "only"
    write_result(board[3], result_path(only, board[3].sae.name, "toy"))
    assert main(["compare", str(only), "--baseline", str(tmp_path / "old")]) == 2
    assert "every new result is a baseline" in capsys.readouterr().err


def test_web_board_carries_the_same_marks_and_leaves_baselines_out_of_comparisons(tmp_path):
    from pathlib import Path

    from saebench.web.model import Site

    board = _board()
    site = Site([(Path(f"{r.sae.name}.json"), r) for r in board], [], "t")
    table = site.board()["sections"][0]["tables"][0]
    cells = {r["sae"]: r["cells"][0] for r in table["rows"]}
    assert cells["best"]["b"] == 2 and cells["twin"]["b"] == 1 and "b" not in cells["worse"]
    assert [r["sae"] for r in table["rows"] if r["baseline"]] == ["baseline-pca-topk-1152-k32"]
    assert "b" not in cells["baseline-pca-topk-1152-k32"]
    pairs = site.comparisons(site.keys[0])
    assert len(pairs) == 3 and all("baseline" not in p["a"] + p["b"] for p in pairs)
