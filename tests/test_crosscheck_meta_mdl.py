"""``meta_structure`` and ``mdl`` equal SAEBench 0.6.0's own code on the same SAE, inputs and seed.

Both evaluations ship in the ``sae-bench`` wheel (``sae_bench.evals.meta_structure``, ``.mdl``); the
harness that hands them our inputs is ``benchmarks/meta_mdl.py`` (its docstring lists the two shims
SAEBench's MDL module needs to run offline on a CPU; neither changes its arithmetic).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import HOOK, SMALL

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

pytest.importorskip("sae_bench", reason="sae-bench not installed: bash setup.sh --crosscheck")


@pytest.mark.parametrize("autocast", [False, True])
def test_meta_structure_equals_saebench_run_eval_single_sae(autocast):
    """Same seed, same decoder: the same initialisation, batches and updates, so the same number
    (float32 sums in SAEBench, float64 in ours: ~1e-7)."""
    from meta_mdl import ours_meta_structure, saebench_meta_structure

    g = torch.Generator().manual_seed(1)
    w_dec = torch.randn(96, 16, generator=g)
    settings = {"train_steps": 150, "train_batch_size": 64, "autocast": autocast}
    theirs = saebench_meta_structure(w_dec, 42, **settings)
    ours = ours_meta_structure(w_dec, 42, **settings)
    assert 0.05 < theirs[0] < 0.95  # a partial fit: a real comparison, not two saturated values
    assert ours[0] == pytest.approx(theirs[0], abs=1e-6)
    assert ours[1] == pytest.approx(theirs[1], rel=1e-5)
    other = ours_meta_structure(w_dec, 7, **settings)  # the seed matters: the agreement is not luck
    assert abs(other[0] - theirs[0]) > 1e-4


def _mdl_sae(d_sae: int = 48):
    """A TopK SAE whose first half of latents reaches codes above SAEBench's floor of 100 (so the
    histogram range differs per latent) and whose second half stays below it."""
    from saebench.sae import NativeSAE, SAEConfig

    sae = NativeSAE(SAEConfig(architecture="topk", d_in=576, d_sae=d_sae, k=8, hook_name=HOOK,
                              model_name="smollm2-135m"))  # fmt: skip
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        sae.W_enc[:, : d_sae // 2] *= 60.0
    return sae.eval()


def test_mdl_equals_saebench_run_eval_single_sae(model, cache_env):
    """SAEBench's whole ``run_eval_single_sae`` (max, bins, TopK, quantised MSE check, DL) on the kept
    activations of our token set equals our evaluator's numbers, setting by setting."""
    pytest.importorskip("loguru", reason="SAEBench's mdl module imports loguru: bash setup.sh --crosscheck")
    from meta_mdl import kept_chunks, mdl_context, saebench_mdl

    from saebench.evaluators.mdl import MdlConfig, MdlEvaluator, dl_name, mse_name, thr_name

    sae = _mdl_sae()
    ctx = mdl_context(sae, model, SMALL["tokens"], SMALL["ctx_len"], SMALL["batch_size"])
    settings = {"num_bins_values": [4, 16, 32], "k_values": [4, 8]}
    out = MdlEvaluator().run(ctx, MdlConfig(**settings))
    rows, _ = saebench_mdl(sae, kept_chunks(ctx), **settings)
    assert out.details["hist_max"]["latents_above_floor"] > 0  # the per-latent range is exercised
    assert len(rows) == 6
    for r in rows:
        nb, k = r["num_bins"], r["k"]
        assert out.metrics[dl_name(nb)] == pytest.approx(r["description_length"], rel=1e-5), (nb, k)
        assert out.metrics[mse_name(nb, k)] == pytest.approx(r["mse_loss"], rel=1e-5), (nb, k)
        assert out.metrics[thr_name(nb, k)] == r["within_threshold"]
    # a threshold between the settings' losses splits them the same way on both sides
    mid = sorted(r["mse_loss"] for r in rows)[2] * 1.000001
    out2 = MdlEvaluator().run(ctx, MdlConfig(**settings, mse_epsilon_threshold=mid))
    rows2, _ = saebench_mdl(sae, kept_chunks(ctx), **settings, mse_epsilon_threshold=mid)
    assert [out2.metrics[thr_name(r["num_bins"], r["k"])] for r in rows2] == [r["within_threshold"] for r in rows2]
    assert sum(r["within_threshold"] for r in rows2) == 3


def test_export_writes_saebench_layouts(tmp_path, capsys):
    """``saebench export --format saebench`` writes meta_structure through SAEBench's own output class
    and mdl in the plain layout its ``run_eval`` writes (its config dataclass reads the config back)."""
    import dataclasses
    import json

    from pydantic import TypeAdapter
    from sae_bench.evals.mdl.eval_config import MDLEvalConfig
    from sae_bench.evals.meta_structure.eval_output import MetaStructureEvalOutput

    from saebench.cli import main
    from saebench.evaluators.base import EvalContext, EvalOutput
    from saebench.evaluators.mdl import MdlConfig, MdlEvaluator
    from saebench.evaluators.meta_structure import MetaStructureConfig, MetaStructureEvaluator
    from saebench.results import Result, SAERecord, result_path, write_result
    from saebench.runner import finish_metrics

    def write(ev, cfg, output: EvalOutput, timing: dict) -> Result:
        metrics, uncertainty, _ = finish_metrics(ev, output)
        r = Result(evaluator=ev.name, run_key=f"k-{ev.name}", config={"model": "smollm2-135m", "hook": HOOK, "seed": 0,
                   "ctx_len": 32, "batch_size": 4, "corpus": "pile", "evaluator_config": cfg.model_dump()},
                   sae=SAERecord(name="sae", source="native", architecture="topk", d_in=16, d_sae=96, fingerprint="fp"),
                   metrics=metrics, uncertainty=uncertainty, details=output.details, timing=timing,
                   created_at="2025-01-02T03:04:05+00:00")  # fmt: skip
        write_result(r, result_path(tmp_path / "res", "sae", ev.name))
        return r

    class Dec:
        d_sae, d_in = 96, 16
        W_dec = torch.randn(96, 16, generator=torch.Generator().manual_seed(1))

    cfg = MetaStructureConfig(train_steps=20, train_batch_size=64, autocast=False)
    ms = MetaStructureEvaluator().run(EvalContext(None, Dec(), "sae", "fp", 0, "quick"), cfg)  # type: ignore[arg-type]
    r_ms = write(MetaStructureEvaluator(), cfg, ms, ms.timing)
    rows = [{"num_bins": 4, "bins": [], "k": 8, "description_length": 12.5, "within_threshold": False,
             "mse_loss": 0.3}]  # fmt: skip
    mdl_out = EvalOutput({"description_length_bins4": 12.5}, {"eval_results": rows})
    write(MdlEvaluator(), MdlConfig(num_bins_values=[4], k_values=[8]), mdl_out, {})
    assert main(["export", "--format", "saebench", str(tmp_path / "res"), str(tmp_path / "sb")]) == 0
    doc = json.loads((tmp_path / "sb" / "meta_structure" / "saebench_sae_eval_results.json").read_text())
    back = dataclasses.asdict(TypeAdapter(MetaStructureEvalOutput).validate_python(doc))
    for k in ("eval_type_id", "eval_config", "eval_result_metrics"):
        assert json.loads(json.dumps(back[k])) == doc[k], k  # nothing dropped or defaulted on the way
    got = doc["eval_result_metrics"]["meta_structure"]
    assert got["decoder_fraction_variance_explained"] == r_ms.metrics["decoder_fraction_variance_explained"]
    assert got["train_time_seconds"] == r_ms.timing["meta_sae_train_s"] and doc["eval_config"]["random_seed"] == 42
    mdl = json.loads((tmp_path / "sb" / "mdl" / "saebench_sae_eval_results.json").read_text())
    assert {"eval_instance_id", "sae_lens_release", "sae_lens_id", "eval_type_id", "sae_lens_version",
            "sae_bench_version", "date_time", "eval_config", "eval_results", "eval_artifacts",
            "sae_cfg_dict"} <= set(mdl)  # fmt: skip
    assert mdl["eval_type_id"] == "mdl" and mdl["eval_results"] == rows
    sb_cfg = MDLEvalConfig(**mdl["eval_config"])  # SAEBench's own config class takes every field
    assert sb_cfg.num_bins_values == [4] and sb_cfg.k_values == [8] and sb_cfg.mse_epsilon_threshold == 0.01
