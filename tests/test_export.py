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


# -- absorption, scr, tpp: results built directly (the runner's own finish_metrics makes the intervals) ----------


def _write(tmp_path, ev, output, name="sae", d_sae=64):
    """A result file of evaluator ``ev`` for ``output`` as the runner writes it; returns the Result."""
    from saebench.results import Result, SAERecord, result_path, write_result
    from saebench.runner import finish_metrics

    metrics, uncertainty, _ = finish_metrics(ev, output)
    config = {
        "model": "smollm2-135m",
        "hook": HOOK,
        "seed": 0,
        "dtype": "float32",
        "batch_size": 4,
        "evaluator_config": ev.Config().model_dump(),
    }
    sae = SAERecord(name=name, source="native", architecture="topk", d_in=576, d_sae=d_sae, fingerprint=f"fp-{name}")
    r = Result(
        evaluator=ev.name,
        run_key=f"k-{name}-{ev.name}",
        sae=sae,
        config=config,
        metrics=metrics,
        uncertainty=uncertainty,
        details=output.details,
        samples={k: v.to_dict() for k, v in output.samples.items()},
        created_at="2025-01-02T03:04:05+00:00",
    )
    write_result(r, result_path(tmp_path / "res", name, ev.name))
    return r


def _export(tmp_path, folder, name="sae"):
    assert main(["export", "--format", "saebench", str(tmp_path / "res"), str(tmp_path / "sb")]) == 0
    return json.loads((tmp_path / "sb" / folder / f"saebench_{name}_eval_results.json").read_text())


def _validated(cls, doc):
    """Validate ``doc`` with SAEBench's output class and check nothing was dropped or defaulted on the way
    (its dataclasses ignore unknown keys): config, metrics and details read back as written."""
    import dataclasses

    from pydantic import TypeAdapter

    back = dataclasses.asdict(TypeAdapter(cls).validate_python(doc))
    for k in ("eval_type_id", "eval_config", "eval_result_metrics", "eval_result_details"):
        assert json.loads(json.dumps(back[k])) == doc[k], k


def _absorption_output(n_scored):
    import random

    from saebench.evaluators.base import EvalOutput
    from saebench.stats import Samples

    rng = random.Random(n_scored)
    letters, ids, frac, full, split, f1 = [], [], [], [], [], []
    for c, letter in enumerate("abcdefghijklmnopqrstuvwxyz"):
        row = {
            "letter": letter,
            "probe_f1": 0.8 if c < n_scored else 0.3,
            "n_train": 9,
            "n_test": 3,
            "scored": False,
            "main_latents": [c, c + 1][: 1 + c % 2],
            "num_split_features": 1 + c % 2,
            "main_f1": 0.7,
        }
        if c < n_scored:
            fr = [round(rng.random() * (c % 3 == 0), 6) for _ in range(2 + c % 3)]
            fu = [int(v > 0.5) for v in fr]
            row.update(
                {
                    "scored": True,
                    "n_probe_true_positives": len(fr),
                    "mean_absorption_fraction": sum(fr) / len(fr),
                    "full_absorption_rate": sum(fu) / len(fu),
                    "n_full_absorption": sum(fu),
                    "n_partial_absorption": sum(0 < v <= 0.5 for v in fr),
                    "absorbed": [],
                }
            )
            ids.append(f"{letter}@h{c}")
            frac.append(fr)
            full.append(fu)
            split.append(row["num_split_features"])
            f1.append(row["main_f1"])
        letters.append(row)
    metrics = {"main_latents_f1": 0.7, "probe_f1": 0.5, "n_letters_scored": n_scored}
    samples = (
        {
            "letter": Samples(
                "letter",
                ids,
                {"absorption_fraction": frac, "full_absorption": full, "num_split_features": split, "main_f1": f1},
            )
        }
        if n_scored >= 10
        else {}
    )
    return EvalOutput(metrics, {"letters": letters, "decoder_source": "decode"}, samples=samples)


def test_export_absorption_as_saebench_absorption_first_letter(tmp_path):
    import statistics

    from saebench.evaluators.absorption import AbsorptionEvaluator

    ours = _write(tmp_path, AbsorptionEvaluator(), _absorption_output(12)).metrics
    _write(tmp_path, AbsorptionEvaluator(), _absorption_output(4), name="weak")  # fewer than min_letters
    doc = _export(tmp_path, "absorption")
    assert doc["eval_type_id"] == "absorption_first_letter"
    mean = doc["eval_result_metrics"]["mean"]
    for k in ("mean_absorption_fraction_score", "mean_full_absorption_score", "mean_num_split_features"):
        assert mean[k] == ours[k]
    rows = doc["eval_result_details"]
    assert [r["first_letter"] for r in rows] == list("abcdefghijkl")
    # SAEBench's std-dev: statistics.stdev over the scored letters' per-letter values (the letter is our unit too)
    assert mean["std_dev_absorption_fraction_score"] == statistics.stdev([r["mean_absorption_fraction"] for r in rows])
    assert mean["std_dev_full_absorption_score"] == statistics.stdev([r["full_absorption_rate"] for r in rows])
    assert mean["std_dev_num_split_features"] == statistics.stdev([r["num_split_features"] for r in rows])
    assert statistics.mean(r["mean_absorption_fraction"] for r in rows) == pytest.approx(
        ours["mean_absorption_fraction_score"]
    )
    un = doc["eval_result_unstructured"]
    assert un["uncertainty"]["mean_absorption_fraction_score"]["unit"] == "letter"
    assert {"probes", "contribution", "prompts", "std_dev_*"} <= set(un["definitions"])
    assert un["not_computed"] == [] and "k_sparse_probe_num_epochs" in un["not_run"]
    assert doc["eval_config"]["k_sparse_probe_num_epochs"] == -1 and doc["eval_config"]["min_feats_for_eval"] == 10
    weak = json.loads((tmp_path / "sb" / "absorption" / "saebench_weak_eval_results.json").read_text())
    assert set(weak["eval_result_metrics"]["mean"].values()) == {-1.0}  # undefined scores: SAEBench's placeholder
    assert len(weak["eval_result_unstructured"]["not_computed"]) == 6

    pytest.importorskip("sae_bench", reason="sae-bench not installed: bash setup.sh --crosscheck")
    from sae_bench.evals.absorption.eval_output import AbsorptionEvalOutput

    _validated(AbsorptionEvalOutput, doc)
    _validated(AbsorptionEvalOutput, weak)


def _scr_output():
    from saebench.evaluators.base import EvalOutput
    from saebench.stats import Samples

    rows, columns = [], {}
    for p, pair in enumerate(["hist_fig_politician_gender", "reviews_yelp_movie", "reviews_amazon_yelp"]):
        scores = {}
        for n in (2, 5, 10, 20, 50):  # 100 and 500 exceed the SAE's 64 latents: undefined
            scores[f"scr_dir1_threshold_{n}"] = 0.01 * n + 0.1 * p
            scores[f"scr_dir2_threshold_{n}"] = -0.02 * n
            scores[f"scr_metric_threshold_{n}"] = scores[f"scr_dir1_threshold_{n}"]
        for k, v in scores.items():
            columns.setdefault(k, []).append(v)
        rows.append(
            {
                "pair": pair,
                "description": "d",
                "origin": "offline",
                "n_train_per_quadrant": 32,
                "n_test_per_quadrant": 24,
                "clean_accuracy": {"intended_on_intended": 0.9},
                "scr_metric_direction": "dir1",
                **scores,
            }
        )
    ids = [f"{r['pair']}@h" for r in rows]
    metrics = {"n_pairs_scored": 3, "n_pairs_skipped": 0, "d_sae": 64}
    return EvalOutput(
        metrics, {"pairs": rows, "skipped": {}}, samples={"class_pair": Samples("class_pair", ids, columns)}
    )


def test_export_scr_as_saebench_scr(tmp_path, monkeypatch):
    from saebench.evaluators.scr import ScrEvaluator

    ours = _write(tmp_path, ScrEvaluator(), _scr_output()).metrics
    doc = _export(tmp_path, "scr")
    m = doc["eval_result_metrics"]["scr_metrics"]
    for n in (2, 5, 10, 20, 50):
        for k in (f"scr_metric_threshold_{n}", f"scr_dir1_threshold_{n}", f"scr_dir2_threshold_{n}"):
            assert m[k] == ours[k] and m[k] is not None
    assert m["scr_metric_threshold_100"] is None and m["scr_dir1_threshold_500"] is None  # SAEBench's default
    assert [d["dataset_name"] for d in doc["eval_result_details"]][0] == "hist_fig_politician_gender"
    assert doc["eval_result_details"][1]["scr_metric_threshold_20"] == pytest.approx(0.3)
    cfg = doc["eval_config"]
    assert cfg["perform_scr"] is True and cfg["train_set_size"] == 4 * 32 and cfg["probe_epochs"] == -1
    assert cfg["column1_vals_lookup"]["reviews_yelp_movie"] == [["yelp", "movie"]]
    un = doc["eval_result_unstructured"]
    assert un["uncertainty"]["scr_metric_threshold_20"]["unit"] == "class_pair" and "std_dev" in un
    assert "scr_metric_threshold_500" in un["not_computed"] and "probes" in un["definitions"]

    pytest.importorskip("sae_bench", reason="sae-bench not installed: bash setup.sh --crosscheck")
    from sae_bench.evals.scr_and_tpp.eval_output import ScrEvalOutput
    from sae_bench.sae_bench_utils import graphing_utils

    _validated(ScrEvalOutput, doc)
    monkeypatch.chdir(tmp_path)  # SAEBench picks the eval from the path: keep the test's name out of it
    (entry,) = graphing_utils.get_eval_results(["sb/scr/saebench_sae_eval_results.json"]).values()
    assert entry["scr_metric_threshold_20"] == ours["scr_metric_threshold_20"]


def _tpp_output():
    from saebench.evaluators.base import EvalOutput
    from saebench.stats import Samples

    rows, ids, columns = [], [], {}
    for d, (ds, classes) in enumerate({"news_class": "wxyz", "twt_emotion": "abcd"}.items()):
        per_class = {}
        for i, c in enumerate(classes):
            per_class[c] = {}
            for n in (2, 5, 10, 20, 50):
                intended, unintended = 0.01 * n + 0.05 * i, 0.001 * n + 0.01 * d
                per_class[c].update(
                    {
                        f"tpp_threshold_{n}_total_metric": intended - unintended,
                        f"tpp_threshold_{n}_intended_diff_only": intended,
                        f"tpp_threshold_{n}_unintended_diff_only": unintended,
                    }
                )
            ids.append(f"{ds}/{c}@h")
            for k, v in per_class[c].items():
                columns.setdefault(k, []).append(v)
        rows.append(
            {
                "dataset": ds,
                "description": "d",
                "origin": "offline",
                "n_train_per_class": 48,
                "n_test_per_class": 32,
                "clean_accuracy": {c: 0.9 for c in classes},
                "per_class": per_class,
            }
        )
    metrics = {"n_classes_scored": 8, "n_datasets_skipped": 0, "d_sae": 64}
    return EvalOutput(metrics, {"datasets": rows, "skipped": {}}, samples={"class": Samples("class", ids, columns)})


def test_export_tpp_as_saebench_tpp(tmp_path, monkeypatch):
    from saebench.evaluators.tpp import TppEvaluator

    ours = _write(tmp_path, TppEvaluator(), _tpp_output()).metrics
    doc = _export(tmp_path, "tpp")
    m = doc["eval_result_metrics"]["tpp_metrics"]
    for n in (2, 5, 10, 20, 50):
        for s in ("total_metric", "intended_diff_only", "unintended_diff_only"):
            assert m[f"tpp_threshold_{n}_{s}"] == ours[f"tpp_threshold_{n}_{s}"] is not None
    assert m["tpp_threshold_100_total_metric"] is None and m["tpp_threshold_500_intended_diff_only"] is None
    news, twt = doc["eval_result_details"]
    assert news["dataset_name"] == "news_class" and twt["dataset_name"] == "twt_emotion"
    assert news["tpp_threshold_20_intended_diff_only"] == pytest.approx(0.2 + 0.05 * 1.5)  # mean over its 4 classes
    # equal class counts: the mean over classes is SAEBench's mean over datasets of per-dataset means
    assert m["tpp_threshold_20_total_metric"] == pytest.approx(
        (news["tpp_threshold_20_total_metric"] + twt["tpp_threshold_20_total_metric"]) / 2
    )
    cfg = doc["eval_config"]
    assert (
        cfg["perform_scr"] is False
        and cfg["train_set_size"] == 2 * 48
        and cfg["dataset_names"] == ["news_class", "twt_emotion"]
    )
    un = doc["eval_result_unstructured"]
    assert set(un["per_dataset_class_results"]["news_class"]) == set("wxyz") and "std_dev" in un
    assert un["uncertainty"]["tpp_threshold_20_total_metric"]["unit"] == "class"

    pytest.importorskip("sae_bench", reason="sae-bench not installed: bash setup.sh --crosscheck")
    from sae_bench.evals.scr_and_tpp.eval_output import TppEvalOutput
    from sae_bench.sae_bench_utils import graphing_utils

    _validated(TppEvalOutput, doc)
    monkeypatch.chdir(tmp_path)
    (entry,) = graphing_utils.get_eval_results(["sb/tpp/saebench_sae_eval_results.json"]).values()
    assert entry["tpp_threshold_20_total_metric"] == ours["tpp_threshold_20_total_metric"]
