"""Training-seed reliability (saebench/reliability.py) and the gate's --seed-variance."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from saebench.cli import main
from saebench.errors import SaebenchError
from saebench.reliability import config_and_seed, metric_reliability, reliability
from saebench.results import Result, SAERecord, result_path, write_result


def _core(name: str, fvu: float, delta_ce: float = 0.3, se: float = 0.001, tokens: int = 8192) -> Result:
    return Result(
        evaluator="core",
        run_key="k",
        sae=SAERecord(name=name, source="x", architecture="topk", d_in=4, d_sae=64, fingerprint=name),
        config={"model": "m", "hook": "h", "profile": "quick", "tokens": tokens, "ctx_len": 128, "seed": 0},
        metrics={"fvu": fvu, "delta_ce": delta_ce},
        uncertainty={"fvu": {"se": se, "df": 100.0}, "delta_ce": {"se": se, "df": 100.0}},
    )


def test_config_and_seed_follow_the_zoo_names():
    assert config_and_seed("relu-2304-l0_32") == ("relu-2304-l0_32", 0)
    assert config_and_seed("relu-2304-l0_32-s2") == ("relu-2304-l0_32", 2)
    assert config_and_seed("topk-2304-k16-s11") == ("topk-2304-k16", 11)


def test_one_way_anova_by_hand():
    """A: 1, 3; B: 5, 7. MSW = 2, MSB = 2·((2−4)² + (6−4)²) = 16, n = 2: between variance
    (16 − 2)/2 = 7, ICC(1) = (16 − 2)/(16 + 2) = 7/9, seed SD √2 on 2 df; τ = 1 (same order)."""
    r = metric_reliability(
        "core", "fvu", {"A": {0: (1.0, None), 1: (3.0, None)}, "B": {0: (5.0, None), 1: (7.0, None)}}
    )
    assert r.seed_sd == pytest.approx(math.sqrt(2)) and r.seed_df == 2
    assert r.between_sd == pytest.approx(math.sqrt(7)) and r.icc == pytest.approx(7 / 9)
    assert r.ratio == pytest.approx(3.5) and r.tau is None  # τ needs 3 configurations
    assert r.verdict == "separates only large differences"  # ICC 0.78, but no ranking stability to measure


def test_separated_configs_rank_and_noise_does_not():
    """Five configurations three seeds each: fvu far apart with small seed noise ranks them
    (ICC near 1, τ = 1); delta_ce that is pure seed noise cannot rank (ICC ≈ 0)."""
    rng = np.random.default_rng(0)
    results = []
    for c, level in enumerate([0.10, 0.14, 0.18, 0.22, 0.26]):
        for seed in range(3):
            name = f"cfg{c}" if seed == 0 else f"cfg{c}-s{seed}"
            results.append(_core(name, level + 0.002 * rng.standard_normal(), 0.5 + 0.1 * rng.standard_normal()))
    rows = {r.metric: r for r in reliability(results)}
    assert (
        rows["fvu"].icc > 0.99
        and rows["fvu"].tau == pytest.approx(1.0)
        and rows["fvu"].verdict == "ranks architectures"
    )
    assert rows["fvu"].n_configs == 5 and rows["fvu"].n_seeds == 3 and rows["fvu"].data_se == pytest.approx(0.001)
    assert rows["delta_ce"].icc < 0.5 and rows["delta_ce"].verdict == "cannot rank at this profile"


def test_refusals_name_the_runs(tmp_path, capsys):
    base = [_core("a", 0.1), _core("a-s1", 0.11), _core("b", 0.2), _core("b-s1", 0.21)]
    with pytest.raises(SaebenchError, match="fewer than 2 seeds: c;"):
        reliability([*base, _core("c", 0.3)])
    with pytest.raises(SaebenchError, match=r"different tokens or profiles \(.*b-s1.*\)"):
        reliability([*base[:3], _core("b-s1", 0.21, tokens=4096)])
    for r in base[:1]:
        write_result(r, result_path(tmp_path / "one", r.sae.name, r.evaluator))
    assert main(["reliability", str(tmp_path / "one"), "-o", str(tmp_path / "r.json")]) == 2
    assert "fewer than 2 seeds: a" in capsys.readouterr().err


def test_gate_with_seed_variance_judges_a_retrained_sae(tmp_path, capsys):
    """The same +0.01 FVU: beyond data noise (SE 0.001) for the same weights, within noise once the
    measured training-seed SD (0.02) enters, as it should for a retrained SAE; the default is unchanged."""
    seeds = [_core("a", 0.10), _core("a-s1", 0.13), _core("a-s2", 0.08), _core("b", 0.30), _core("b-s1", 0.33)]
    for r in seeds:
        write_result(r, result_path(tmp_path / "seeds", r.sae.name, r.evaluator))
    rel = tmp_path / "reliability.json"
    assert main(["reliability", str(tmp_path / "seeds"), "-o", str(rel)]) == 0
    sd = {(m["evaluator"], m["metric"]): m["seed_sd"] for m in json.loads(rel.read_text())["metrics"]}
    assert sd[("core", "fvu")] > 0.015
    for side, fvu in (("old", 0.20), ("new", 0.21)):
        write_result(_core("x", fvu), result_path(tmp_path / side, "x", "core"))
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "new"), "--baseline", str(tmp_path / "old")]) == 1
    assert "FAIL" in capsys.readouterr().out
    assert (
        main(["compare", str(tmp_path / "new"), "--baseline", str(tmp_path / "old"), "--seed-variance", str(rel)]) == 0
    )
    (tmp_path / "bad.json").write_text("{}")
    assert main(["compare", str(tmp_path / "new"), "--baseline", str(tmp_path / "old"), "--seed-variance",
                 str(tmp_path / "bad.json")]) == 2  # fmt: skip
    assert "cannot read the reliability file" in capsys.readouterr().err


def test_ranks_needs_a_firm_interval_not_only_a_high_point():
    """ICC 0.8 from three configurations and two seeds rests on almost nothing: its lower bound is far
    below 0.5, so the verdict is "separates only large differences", not "ranks"."""
    runs = {"a": {0: (0.0, None), 1: (0.5, None)}, "b": {0: (1.0, None), 1: (1.3, None)},
            "c": {0: (2.0, None), 1: (2.1, None)}}  # fmt: skip
    r = metric_reliability("core", "fvu", runs)
    assert r.icc > 0.75 and r.tau == pytest.approx(1.0) and r.icc_low < 0.5
    assert r.verdict == "separates only large differences"
