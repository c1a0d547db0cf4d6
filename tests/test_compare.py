"""The CI regression gate: pure JSON fixtures, no model."""

from __future__ import annotations

from pathlib import Path

import pytest

from saebench.cli import main
from saebench.compare import DEFAULT_REL, compare, compare_metric, parse_tolerances
from saebench.errors import SaebenchError
from saebench.evaluators import metric_table
from saebench.results import Result, SAERecord, result_path, write_result

METRICS = {
    "l0": 32.0,
    "fvu": 0.2,
    "mse": 0.01,
    "cossim": 0.9,
    "delta_ce": 0.3,
    "kl": 0.25,
    "ce_loss_score": 0.8,
    "dead_frac": 0.0,
    "dense_frac": 0.01,
}


def _write(root, name="sae-a", evaluator="core", **metrics):
    m = {**METRICS, **metrics}
    m = {k: v for k, v in m.items() if v is not ...}
    r = Result(
        evaluator=evaluator,
        run_key="k",
        sae=SAERecord(name=name, source="x", architecture="topk", d_in=4, d_sae=8, fingerprint="f"),
        config={
            "model": "m",
            "hook": "blocks.6.hook_resid_post",
            "profile": "quick",
            "tokens": 8192,
            "ctx_len": 128,
            "seed": 0,
            "corpus": "c",
        },
        metrics=m,
        details={"density_histogram": {"counts": [1, 2]}},
    )
    write_result(r, result_path(root, name, evaluator))
    return r


def test_identical_results_compare_exactly_equal(tmp_path, capsys):
    _write(tmp_path / "base")
    _write(tmp_path / "new")
    cmp = compare([tmp_path / "new"], [tmp_path / "base"])
    assert cmp.rows and all(r.verdict == "same" and r.diff in (0.0, None) for r in cmp.rows)
    assert not cmp.failures
    assert "density_histogram" not in {r.metric for r in cmp.rows}
    assert main(["compare", str(tmp_path / "new"), "--baseline", str(tmp_path / "base")]) == 0
    out = capsys.readouterr().out
    assert "OK:" in out and "| fvu ↓" in out


def test_regression_fails_naming_the_metric(tmp_path, capsys):
    _write(tmp_path / "base")
    _write(tmp_path / "new", fvu=0.2 * 1.05, cossim=0.95, l0=40.0)
    cmp = compare([tmp_path / "new"], [tmp_path / "base"])
    verdicts = {r.metric: r.verdict for r in cmp.rows}
    assert verdicts["fvu"] == "WORSE" and verdicts["cossim"] == "better" and verdicts["l0"] == "changed"
    assert [r.metric for r in cmp.failures] == ["fvu"]
    assert main(["compare", str(tmp_path / "new"), "--baseline", str(tmp_path / "base")]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("FAIL: 1 metric") and "fvu of sae-a/core" in last and "+5%" in last


def test_tolerance_override_and_noise(tmp_path):
    _write(tmp_path / "base")
    _write(tmp_path / "noise", fvu=0.2 * (1 + 1e-6), delta_ce=0.3 * (1 + DEFAULT_REL / 2))
    assert not compare([tmp_path / "noise"], [tmp_path / "base"]).failures  # CPU-noise sized changes pass
    _write(tmp_path / "new", fvu=0.2 * 1.05)
    assert not compare([tmp_path / "new"], [tmp_path / "base"], {"fvu": 0.1}).failures
    assert compare([tmp_path / "new"], [tmp_path / "base"], {"*": 0.01}).failures
    assert main(["compare", str(tmp_path / "new"), "--baseline", str(tmp_path / "base"), "--tolerance", "fvu=6%"]) == 0


def test_direction_of_zero_baseline_and_undefined():
    assert compare_metric("down", 0.0, 1e-9, DEFAULT_REL)[2] == "ok"  # absolute floor
    assert compare_metric("down", 0.0, 0.01, DEFAULT_REL)[2] == "WORSE"
    assert compare_metric("up", 0.8, None, DEFAULT_REL)[2] == "became undefined"
    assert compare_metric("up", None, None, DEFAULT_REL)[2] == "same"
    assert compare_metric("up", None, 0.5, DEFAULT_REL)[2] == "baseline undefined"
    assert compare_metric("", 1.0, 2.0, DEFAULT_REL)[2] == "changed"


def test_directions_come_from_the_evaluators_declarations():
    core = metric_table(["core"])["core"]
    assert core["fvu"].direction == "down" and core["ce_loss_score"].direction == "up" and core["l0"].direction == ""


def test_baseline_missing_a_metric_is_reported_not_failed(tmp_path, capsys):
    _write(tmp_path / "base", kl=...)
    _write(tmp_path / "new")
    cmp = compare([tmp_path / "new"], [tmp_path / "base"])
    assert {r.metric: r.verdict for r in cmp.rows}["kl"] == "new metric" and not cmp.failures
    assert main(["compare", str(tmp_path / "new"), "--baseline", str(tmp_path / "base")]) == 0
    assert "baseline lacks 1 metric(s) the new run has: sae-a/core/kl" in capsys.readouterr().out


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


def test_matching_by_sae_name_and_evaluator(tmp_path, capsys):
    _write(tmp_path / "base", name="a")
    _write(tmp_path / "base", name="b", fvu=0.1)
    _write(tmp_path / "new", name="b", fvu=0.1)
    _write(tmp_path / "new", name="c")
    cmp = compare([tmp_path / "new"], [tmp_path / "base"])
    assert {r.sae for r in cmp.rows} == {"b"} and not cmp.failures
    assert cmp.unmatched_new == ["c/core"] and cmp.unmatched_baseline == ["a/core"]
    _write(tmp_path / "other", name="zzz")
    with pytest.raises(SaebenchError, match="no new result matches a baseline"):
        compare([tmp_path / "other"], [tmp_path / "base"])
    assert main(["compare", str(tmp_path / "other"), "--baseline", str(tmp_path / "base")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_config_differences_are_reported(tmp_path, capsys):
    _write(tmp_path / "base")
    r = _write(tmp_path / "new")
    r.config["tokens"] = 4096
    write_result(r, result_path(tmp_path / "new", "sae-a", "core"))
    assert main(["compare", str(tmp_path / "new"), "--baseline", str(tmp_path / "base")]) == 0
    assert "configs differ: sae-a/core: tokens 8192 (baseline) vs 4096 (new)" in capsys.readouterr().out


def test_bad_tolerances_and_paths(tmp_path):
    assert parse_tolerances(["fvu=1%", "kl=0.02", "*=0"]) == {"fvu": 0.01, "kl": 0.02, "*": 0.0}
    for bad in ("fvu", "fvu=x", "fvu=-1", "=0.1"):
        with pytest.raises(SaebenchError, match="--tolerance"):
            parse_tolerances([bad])
    _write(tmp_path / "base")
    with pytest.raises(SaebenchError, match="no result has: fvuu"):
        compare([tmp_path / "base"], [tmp_path / "base"], {"fvuu": 0.1})
    with pytest.raises(SaebenchError, match="does not exist"):
        compare([tmp_path / "nope"], [tmp_path / "base"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SaebenchError, match="baseline"):
        compare([tmp_path / "base"], [tmp_path / "empty"])


def test_against_a_named_baseline_sae(tmp_path):
    _write(tmp_path / "base", name="topk-2304-k32", fvu=0.2)
    _write(tmp_path / "new", name="my-arch", fvu=0.19)
    cmp = compare([tmp_path / "new"], [tmp_path / "base"], against="topk-2304-k32")
    assert {r.metric: r.verdict for r in cmp.rows}["fvu"] == "better" and {r.sae for r in cmp.rows} == {"my-arch"}
    _write(tmp_path / "worse", name="my-arch", fvu=0.3)
    assert (
        main(["compare", str(tmp_path / "worse"), "--baseline", str(tmp_path / "base"), "--against", "topk-2304-k32"])
        == 1
    )
    with pytest.raises(SaebenchError, match="no baseline SAE of that name"):
        compare([tmp_path / "new"], [tmp_path / "base"], against="nope")
