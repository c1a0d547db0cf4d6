"""Comparisons and the CI gate: pure JSON fixtures with per-context samples, no model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from saebench.cli import main
from saebench.compare import IncomparableError, compare, parse_min_effects
from saebench.errors import SaebenchError
from saebench.evaluators import metric_table
from saebench.results import Result, SAERecord, result_path, write_result

N = 64  # contexts


def _samples(seed=0, err_scale=1.0, ids_seed=None):
    rng = np.random.default_rng(seed)
    var = rng.uniform(90, 110, N)
    err = var * 0.2 * rng.uniform(0.8, 1.2, N) * err_scale
    ids = [f"{ids_seed if ids_seed is not None else 0}-{i}" for i in range(N)]
    return {"sequence": {"unit": "sequence", "ids": ids, "columns": {"sq_err": err.tolist(), "var": var.tolist()}}}


def _write(root, name="sae-a", evaluator="core", samples=None, config=None, **metrics):
    s = samples if samples is not None else _samples()
    cols = s["sequence"]["columns"]
    fvu = sum(cols["sq_err"]) / sum(cols["var"])
    m = {"l0": 32.0, "fvu": fvu, "explained_variance": 1 - fvu, "dead_frac": 0.0, "kl": 0.25, "n_tokens_loss": 100}
    m.update(metrics)
    m = {k: v for k, v in m.items() if v is not ...}
    cfg = {
        "model": "m",
        "hook": "blocks.6.hook_resid_post",
        "profile": "quick",
        "tokens": 8192,
        "n_tokens": 8192,
        "ctx_len": 128,
        "seed": 0,
        "corpus": "c",
        "evaluator_config": {},
    }
    cfg.update(config or {})
    r = Result(
        evaluator=evaluator,
        run_key="k",
        config=cfg,
        metrics=m,
        samples=s,
        sae=SAERecord(name=name, source="x", architecture="topk", d_in=4, d_sae=8, fingerprint="f"),
        details={"density_histogram": {"counts": [1, 2]}},
    )
    write_result(r, result_path(root, name, evaluator))
    return r


def _verdicts(cmp):
    return {r.metric: r.verdict for r in cmp.rows}


def test_identical_results_are_the_same_and_pass(tmp_path, capsys):
    _write(tmp_path / "base")
    _write(tmp_path / "new")
    cmp = compare([tmp_path / "new"], [tmp_path / "base"])
    assert cmp.rows and all(r.verdict == "same" for r in cmp.rows) and not cmp.failures
    assert "density_histogram" not in {r.metric for r in cmp.rows}  # details are never compared
    assert main(["compare", str(tmp_path / "new"), "--baseline", str(tmp_path / "base")]) == 0
    out = capsys.readouterr().out
    assert "OK:" in out and "| fvu ↓" in out


def test_a_real_regression_fails_naming_the_metric_and_its_interval(tmp_path, capsys):
    _write(tmp_path / "base")
    _write(tmp_path / "new", samples=_samples(err_scale=1.05))  # every context 5% worse: paired
    cmp = compare([tmp_path / "new"], [tmp_path / "base"])
    fvu = next(r for r in cmp.rows if r.metric == "fvu")
    assert fvu.verdict == "WORSE" and fvu.paired and fvu.low > 0 and fvu.diff == pytest.approx(0.01, rel=0.05)
    assert _verdicts(cmp)["explained_variance"] == "WORSE"  # the same samples, the other direction
    assert main(["compare", str(tmp_path / "new"), "--baseline", str(tmp_path / "base")]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("FAIL: 2 metric(s)") and "fvu of sae-a/core" in last and "[+" in last


def test_a_change_within_noise_or_below_the_minimum_effect_passes(tmp_path):
    _write(tmp_path / "base")
    # a different sample (other seed, other contexts): unpaired, the same truth -> within noise
    _write(tmp_path / "seed1", samples=_samples(seed=1, ids_seed=1), config={"seed": 1})
    cmp = compare([tmp_path / "seed1"], [tmp_path / "base"])
    assert _verdicts(cmp)["fvu"] == "within noise" and not cmp.failures
    assert any("different seeds" in n for n in cmp.notes)
    # a paired, clearly detected change smaller than the declared minimum effect (0.002 for fvu)
    _write(tmp_path / "tiny", samples=_samples(err_scale=1.005))
    assert _verdicts(compare([tmp_path / "tiny"], [tmp_path / "base"]))["fvu"] == "within noise"
    assert _verdicts(compare([tmp_path / "tiny"], [tmp_path / "base"], {"fvu": (0.0, False)}))["fvu"] == "WORSE"


def test_nan_missing_or_undefined_metrics_never_pass(tmp_path, capsys):
    _write(tmp_path / "base", kl=math.nan)
    _write(tmp_path / "new")
    assert _verdicts(compare([tmp_path / "new"], [tmp_path / "base"]))["kl"] == "undefined"
    assert main(["compare", str(tmp_path / "new"), "--baseline", str(tmp_path / "base")]) == 1
    assert "kl of sae-a/core" in capsys.readouterr().out
    _write(tmp_path / "base2")
    _write(tmp_path / "dropped", kl=...)
    assert _verdicts(compare([tmp_path / "dropped"], [tmp_path / "base2"]))["kl"] == "missing"
    _write(tmp_path / "inf", kl=math.inf)
    assert compare([tmp_path / "inf"], [tmp_path / "base2"]).failures
    assert not compare([tmp_path / "inf"], [tmp_path / "base2"], ignore=("kl",)).failures
    # a metric only the new run has is reported, not failed
    _write(tmp_path / "old", kl=...)
    assert _verdicts(compare([tmp_path / "base2"], [tmp_path / "old"]))["kl"] == "new metric"


def test_different_configurations_are_their_own_error_never_a_regression(tmp_path, capsys):
    _write(tmp_path / "base")
    _write(tmp_path / "new", config={"tokens": 4096, "n_tokens": 4096}, samples=_samples(err_scale=2.0))
    with pytest.raises(IncomparableError, match="n_tokens"):
        compare([tmp_path / "new"], [tmp_path / "base"])
    assert main(["compare", str(tmp_path / "new"), "--baseline", str(tmp_path / "base")]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: results were made with different configurations") and "n_tokens" in err


def test_a_versus_b(tmp_path, capsys):
    _write(tmp_path / "a", name="arch-a", samples=_samples(err_scale=0.9))
    _write(tmp_path / "b", name="arch-b")
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "arch-a better" in out and "A = arch-a vs B = arch-b: A better on" in out
    head = out.splitlines()[0]
    assert head.index("A: arch-a") < head.index("B: arch-b") < head.index("A − B")  # A's column first, both named
    row = next(line for line in out.splitlines() if "| fvu" in line)
    a_fvu, b_fvu = (float(c) for c in row.split("|")[3:5])
    assert a_fvu < b_fvu  # arch-a reconstructs better: its value sits under its name


def test_directions_come_from_the_evaluators_declarations():
    core = metric_table(["core"])["core"]
    assert core["fvu"].direction == "down" and core["ce_loss_score"].direction == "up" and core["l0"].direction == ""


def test_corrupt_and_foreign_files_are_skipped_with_a_warning(tmp_path, capsys):
    _write(tmp_path / "base")
    _write(tmp_path / "new")
    (tmp_path / "new" / "junk.json").write_text("{not json")
    (tmp_path / "base" / "package.json").write_text('{"name": "something else"}')
    with pytest.warns(UserWarning) as caught:
        cmp = compare([tmp_path / "new"], [tmp_path / "base"])
    assert {"junk.json", "package.json"} <= {Path(str(w.message).split()[1]).name for w in caught}
    assert not cmp.failures
    assert main(["compare", str(tmp_path / "new"), "--baseline", str(tmp_path / "base")]) == 0
    err = capsys.readouterr().err
    assert "junk.json" in err and "package.json" in err


def test_matching_by_sae_name_and_against_a_named_baseline(tmp_path, capsys):
    _write(tmp_path / "base", name="a")
    _write(tmp_path / "base", name="b")
    _write(tmp_path / "new", name="b")
    _write(tmp_path / "new", name="c")
    cmp = compare([tmp_path / "new"], [tmp_path / "base"])
    assert {r.sae for r in cmp.rows} == {"b"} and not cmp.failures
    assert cmp.unmatched_new == ["c/core"] and cmp.unmatched_baseline == ["a/core"]
    _write(tmp_path / "other", name="zzz")
    with pytest.raises(SaebenchError, match="no new result matches a baseline"):
        compare([tmp_path / "other"], [tmp_path / "base"])
    assert main(["compare", str(tmp_path / "other"), "--baseline", str(tmp_path / "base")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    _write(tmp_path / "worse", name="my-arch", samples=_samples(err_scale=1.2))
    assert main(["compare", str(tmp_path / "worse"), "--baseline", str(tmp_path / "base"), "--against", "a"]) == 1
    with pytest.raises(SaebenchError, match="no baseline SAE of that name"):
        compare([tmp_path / "new"], [tmp_path / "base"], against="nope")


def test_bad_minimum_effects_and_paths(tmp_path):
    assert parse_min_effects(["fvu=1%", "kl=0.02", "*=0"]) == {
        "fvu": (0.01, True),
        "kl": (0.02, False),
        "*": (0.0, False),
    }
    for bad in ("fvu", "fvu=x", "fvu=-1", "=0.1"):
        with pytest.raises(SaebenchError, match="--min-effect"):
            parse_min_effects([bad])
    _write(tmp_path / "base")
    with pytest.raises(SaebenchError, match="no result has: fvuu"):
        compare([tmp_path / "base"], [tmp_path / "base"], {"fvuu": (0.1, False)})
    with pytest.raises(SaebenchError, match="does not exist"):
        compare([tmp_path / "nope"], [tmp_path / "base"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SaebenchError, match="baseline"):
        compare([tmp_path / "base"], [tmp_path / "empty"])


def test_the_gate_controls_the_family_wise_error_over_many_metrics():
    """Many metrics at once: a 2.5-sigma move of one among 30 is noise, a 10-sigma move is not."""
    from saebench.compare import Row, _family_wise, family_z

    assert family_z(1) == pytest.approx(1.96, abs=1e-3) and family_z(30) == pytest.approx(3.14, abs=1e-2)
    rows = [Row("s", "core", f"m{i}", "down", 1.0, 1.0, 0.0, -0.2, 0.2, False, 0.0, "within noise", 0.1)
            for i in range(28)]  # fmt: skip
    rows.append(Row("s", "core", "fvu", "down", 1.0, 1.25, 0.25, 0.05, 0.45, False, 0.0, "WORSE", 0.1))
    rows.append(Row("s", "core", "mse", "down", 1.0, 2.0, 1.0, 0.8, 1.2, True, 0.0, "WORSE", 0.1))
    _family_wise(rows)
    assert rows[-2].verdict == "within noise" and rows[-1].verdict == "WORSE"


def test_a_damaged_result_is_named_whether_or_not_others_are_readable(tmp_path, capsys):
    """One digit of a number edited by hand: the checksum fails. Alone in its folder it is named in
    the error (not "no saebench results"); beside others it is named in a warning."""
    _write(tmp_path / "base")
    _write(tmp_path / "new")
    path = result_path(tmp_path / "new", "sae-a", "core")
    path.write_text(path.read_text().replace('"l0": 32.0', '"l0": 33.0'))
    for argv in (
        ["compare", str(tmp_path / "new"), "--baseline", str(tmp_path / "base")],
        ["leaderboard", str(tmp_path / "new"), "-o", str(tmp_path / "board.md"), "--no-plots"],
        ["export", "--format", "saebench", str(tmp_path / "new"), str(tmp_path / "exported")],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert (
            len(err) == 1
            and err[0].startswith("error: no readable saebench results")
            and "fails its checksum" in err[0]
        )
        assert str(path) in err[0]
    _write(tmp_path / "new", name="sae-b")
    assert main(["leaderboard", str(tmp_path / "new"), "-o", str(tmp_path / "board.md"), "--no-plots"]) == 0
    err = capsys.readouterr().err
    assert "warning: skipping" in err and str(path) in err and "fails its checksum" in err


def test_the_gate_fails_on_what_the_new_side_lacks(tmp_path, capsys):
    """A run that crashed before core (or whose core.json is missing) must not pass the gate."""
    _write(tmp_path / "base")
    _write(tmp_path / "base", evaluator="probing")
    _write(tmp_path / "new", evaluator="probing")
    cmp = compare([tmp_path / "new"], [tmp_path / "base"])
    assert [(r.evaluator, r.verdict) for r in cmp.failures] == [("core", "missing")]
    assert main(["compare", str(tmp_path / "new"), "--baseline", str(tmp_path / "base")]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "sae-a/core (the baseline has it, the new results do not" in out
    assert main(["compare", str(tmp_path / "new"), "--baseline", str(tmp_path / "base"), "--only-run"]) == 0
    assert "note: baseline sae-a/core has no new result" in capsys.readouterr().out
    # --against: the chosen baseline SAE's evaluators are expected from every new SAE
    assert main(["compare", str(tmp_path / "new"), "--baseline", str(tmp_path / "base"), "--against", "sae-a"]) == 1
    capsys.readouterr()
    # a metric the new result no longer reports fails too, descriptive ones included
    _write(tmp_path / "dropped", n_tokens_loss=...)
    assert _verdicts(compare([tmp_path / "dropped"], [tmp_path / "base"], only_run=True))["n_tokens_loss"] == "not run"
    assert _verdicts(compare([tmp_path / "dropped"], [tmp_path / "base"]))["n_tokens_loss"] == "missing"


def test_undefined_on_both_sides_and_identical_values_are_same(tmp_path):
    """An offline autointerp result has null free-text scores on both sides: not a regression. An
    identical density metric with a stored interval reads "same", not "within noise"."""
    for root in ("base", "new"):
        r = _write(tmp_path / root, kl=None, dead_frac=0.25)
        r.uncertainty = {"dead_frac": {"se": 0.02, "ci_low": 0.21, "ci_high": 0.29, "n": 64, "unit": "sequence"}}
        write_result(r, result_path(tmp_path / root, "sae-a", "core"))
    cmp = compare([tmp_path / "new"], [tmp_path / "base"])
    v = _verdicts(cmp)
    assert v["kl"] == "same" and v["dead_frac"] == "same" and not cmp.failures
    _write(tmp_path / "defined", dead_frac=0.25)
    assert _verdicts(compare([tmp_path / "base"], [tmp_path / "defined"]))["kl"] == "undefined"


def test_a_name_mismatch_points_to_against(tmp_path):
    _write(tmp_path / "base", name="zoo-member")
    _write(tmp_path / "new", name="my-arch")
    with pytest.raises(SaebenchError, match="--against BASELINE_SAE"):
        compare([tmp_path / "new"], [tmp_path / "base"])


def test_compare_help_prints_percent_once(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    out = capsys.readouterr().out
    assert "95% interval" in out and "%%" not in out
