"""One name, one number: every metric the suite can emit under a name SAEBench 0.6.0 also uses is
listed here with the proof that the number is SAEBench's (or, for three core metrics, the documented
definition it differs by). A new evaluator or metric that takes a SAEBench name fails this test until
it is classified."""

from __future__ import annotations

import dataclasses
import importlib

import pytest
import torch

SAEBENCH_OUTPUTS = ("core", "sparse_probing", "absorption", "scr_and_tpp", "autointerp", "unlearning", "ravel",
                    "sparse_probing_sae_probes", "meta_structure")  # fmt: skip
SAEBENCH_MODE = {  # evaluator -> the module whose SB_UNIT only its SAEBench path (SAEBench's settings) fills
    "scr": "saebench.evaluators.scr",
    "tpp": "saebench.evaluators.tpp",
    "absorption": "saebench.evaluators.absorption",
    "sparse_probing": "saebench.evaluators.sparse_probing",
}


def saebench_metric_names() -> set[str]:
    """Every field of every ``*Metrics`` class in SAEBench's eval outputs."""
    names = set()
    for m in SAEBENCH_OUTPUTS:
        mod = importlib.import_module(f"sae_bench.evals.{m}.eval_output")
        for n, obj in vars(mod).items():
            if isinstance(obj, type) and dataclasses.is_dataclass(obj) and n.endswith("Metrics"):
                names |= {f.name for f in dataclasses.fields(obj)}
    return names


def emitted_saebench_names() -> dict[tuple[str, str], object]:
    """``{(evaluator, metric): Metric}`` for every declared metric with a SAEBench name."""
    from saebench.evaluators import available, metric_table

    sb = saebench_metric_names()
    table = metric_table(sorted(available()))
    return {(ev, n): m for ev, t in table.items() for n, m in t.items() if n in sb}


def test_every_saebench_named_metric_comes_from_a_saebench_path():
    pytest.importorskip("sae_bench", reason="sae-bench not installed: bash setup.sh --crosscheck")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from crosscheck_saebench import SHARED

    from saebench.export import CORE_DIFFERENT, CORE_EQUAL

    emitted = emitted_saebench_names()
    proven: dict[tuple[str, str], str] = {}
    for (ev, name), metric in emitted.items():
        if ev in SAEBENCH_MODE:
            mod = importlib.import_module(SAEBENCH_MODE[ev])
            # filled only from samples of the SAEBench unit, which run() writes only when naming says
            # "saebench"; the variant's metrics never use that unit
            assert metric.estimator is not None and metric.estimator.unit == mod.SB_UNIT, (ev, name)
            proven[(ev, name)] = "mode=saebench end to end (tests/test_saebench_mode.py, test_absorption.py)"
        elif ev == "core" and name in SHARED:
            proven[(ev, name)] = "equals SAEBench's run_evals (tests/test_crosscheck.py)"
        elif ev == "core" and name in CORE_DIFFERENT:
            proven[(ev, name)] = "SAELens's definition under a name SAEBench shares: the export leaves it null"
        elif ev == "splitting" and name.startswith("average_max_"):
            proven[(ev, name)] = "equals SAEBench's calculate_max_cosine_sim (below)"
        elif ev == "meta_structure":
            proven[(ev, name)] = "equals SAEBench's meta_structure run_eval_single_sae (test_crosscheck_meta_mdl.py)"
        elif ev == "ravel":
            proven[(ev, name)] = (
                "SAEBench's RAVEL procedure (on our city data): equals its generate_batched, train_mdbm and "
                "generate_batched_interventions on the same prompts and pairs (test_ravel.py)"
            )
    unproven = sorted(set(emitted) - set(proven))
    assert not unproven, f"SAEBench-named metrics without a SAEBench path: {unproven}"
    assert {n for (ev, n) in emitted if ev == "core"} <= set(CORE_EQUAL) | set(CORE_DIFFERENT)
    assert set(CORE_EQUAL) == set(SHARED)  # the export fills exactly the fields the crosscheck proves
    for ev, mod in SAEBENCH_MODE.items():  # and no variant metric of these evaluators takes a SAEBench name
        unit = importlib.import_module(mod).SB_UNIT
        sb_named = {n for (e, n) in emitted if e == ev}
        for m in importlib.import_module(mod).METRICS:
            if m.estimator is not None and m.estimator.unit == unit:
                assert m.name in sb_named, (ev, m.name)  # the SAEBench unit carries SAEBench names only
            else:
                assert m.name not in sb_named, (ev, m.name)


def test_saebench_names_need_saebench_settings():
    """Each SAEBench-mode evaluator gives SAEBench's names at SAEBench's settings and ours otherwise."""
    from saebench.evaluators import absorption_saebench, scr_tpp_saebench, sparse_probing
    from saebench.evaluators.absorption import AbsorptionConfig
    from saebench.evaluators.scr import ScrConfig
    from saebench.evaluators.tpp import TppConfig

    assert scr_tpp_saebench.naming(ScrConfig(mode="saebench"))["names"] == "saebench"
    assert scr_tpp_saebench.naming(TppConfig(mode="saebench", test_set_size=10))["names"] == "variant"
    assert scr_tpp_saebench.naming(TppConfig())["names"] == "variant"
    assert absorption_saebench.naming(AbsorptionConfig(mode="saebench"))["names"] == "saebench"
    assert absorption_saebench.naming(AbsorptionConfig(mode="saebench", vocab_size=500))["names"] == "variant"
    assert absorption_saebench.naming(AbsorptionConfig())["names"] == "variant"
    assert sparse_probing.naming(sparse_probing.SparseProbingConfig())["names"] == "saebench"
    assert sparse_probing.naming(sparse_probing.SparseProbingConfig(k_values=[1]))["names"] == "variant"


def test_splitting_cosines_equal_saebench_calculate_max_cosine_sim():
    """``splitting``'s ``average_max_*_cosine_sim`` (SAEBench names) are SAEBench's numbers."""
    pytest.importorskip("sae_bench", reason="sae-bench not installed: bash setup.sh --crosscheck")
    from sae_bench.evals.core.main import calculate_max_cosine_sim

    from saebench.loading import load_sae
    from saebench.probes.geometry import decoder_directions, encoder_directions, max_cos, unit_rows

    sae = load_sae("reference").sae
    ours_dec = max_cos(unit_rows(decoder_directions(sae)[0]))[0].mean()
    ours_enc = max_cos(unit_rows(encoder_directions(sae)))[0].mean()
    with torch.no_grad():
        theirs_dec = calculate_max_cosine_sim(sae.W_dec.T).mean()
        theirs_enc = calculate_max_cosine_sim(sae.W_enc).mean()
    assert float(ours_dec) == pytest.approx(float(theirs_dec), abs=1e-5)
    assert float(ours_enc) == pytest.approx(float(theirs_enc), abs=1e-5)
