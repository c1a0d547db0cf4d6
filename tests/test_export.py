"""Export to SAEBench's output layout, validated by SAEBench's own output classes when installed."""

from __future__ import annotations

import json

import pytest
from conftest import HOOK, SMALL, write_native

from saebench import evaluate
from saebench.cli import main

EVAL_CONFIG = {"probing": {"tasks": ["agnews_sports", "glue_cola"], "max_train": 8, "max_test": 8, "max_tokens": 16}}


def test_export_validates_with_saebench_output_classes(model, tmp_path, cache_env, capsys):
    folder, _ = write_native(tmp_path / "sae", arch="topk", d_sae=64)
    out = tmp_path / "res"
    evaluate(str(folder), model=model, hook=HOOK, evals=["core", "probing"], eval_config=EVAL_CONFIG, out=out,
             progress=False, **SMALL)  # fmt: skip
    assert main(["export", "--format", "saebench", str(out), str(tmp_path / "sb")]) == 0
    assert "wrote 2 SAEBench file(s)" in capsys.readouterr().out
    core = json.loads((tmp_path / "sb" / "core" / "saebench_sae_eval_results.json").read_text())
    ours = json.loads((out / "sae" / "core.json").read_text())["metrics"]
    em = core["eval_result_metrics"]
    assert em["model_performance_preservation"]["ce_loss_score"] == ours["ce_loss_score"]
    assert em["model_behavior_preservation"]["kl_div_score"] == ours["kl_div_score"]
    assert em["sparsity"]["l0"] == ours["l0"] and core["sae_cfg_dict"]["architecture"] == "topk"
    assert "explained_variance" in core["eval_result_unstructured"]["definitions"]

    sb = pytest.importorskip("sae_bench", reason="sae-bench not installed: bash setup.sh --crosscheck")
    assert sb is not None
    from pydantic import TypeAdapter
    from sae_bench.evals.core.eval_output import CoreEvalOutput
    from sae_bench.evals.sparse_probing.eval_output import SparseProbingEvalOutput
    from sae_bench.sae_bench_utils import graphing_utils

    TypeAdapter(CoreEvalOutput).validate_python(core)
    probing = json.loads((tmp_path / "sb" / "sparse_probing" / "saebench_sae_eval_results.json").read_text())
    TypeAdapter(SparseProbingEvalOutput).validate_python(probing)
    found = graphing_utils.get_core_results([str(tmp_path / "sb" / "core" / "saebench_sae_eval_results.json")])
    (entry,) = found.values()
    assert entry["l0"] == ours["l0"] and entry["ce_loss_score"] == ours["ce_loss_score"]
