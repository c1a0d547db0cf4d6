"""Export to SAEBench's output layout: SAEBench files only from SAEBench-named results, SAEBench's
fields only with SAEBench's numbers (null where ours differ or are not computed, never a number),
validated by SAEBench's own output classes and graphing code when installed."""

from __future__ import annotations

import json
import random
import statistics

import pytest
from conftest import HOOK, SMALL, write_native

from saebench import evaluate
from saebench.cli import main

EVAL_CONFIG = {"probing": {"tasks": ["agnews_sports", "glue_cola"], "max_train": 8, "max_test": 8, "max_tokens": 16}}
NULL_CORE = {"explained_variance", "explained_variance_legacy", "mse", "relative_reconstruction_bias"}
COSINES = {"average_max_encoder_cosine_sim", "average_max_decoder_cosine_sim"}


def _fill_nulls(doc: dict) -> dict:
    """A copy with null metrics replaced by 0 (SAEBench's core class requires floats): to check the rest."""
    out = json.loads(json.dumps(doc))
    for group in out["eval_result_metrics"].values():
        for k, v in group.items():
            if v is None:
                group[k] = 0.0
    return out


def test_core_export_fills_only_saebench_equal_fields(model, tmp_path, cache_env, capsys):
    folder, _ = write_native(tmp_path / "sae", arch="topk", d_sae=64)
    out = tmp_path / "res"
    evaluate(str(folder), model=model, hook=HOOK, evals=["core", "probing", "splitting"], eval_config=EVAL_CONFIG,
             out=out, progress=False, **SMALL)  # fmt: skip
    assert main(["export", "--format", "saebench", str(out), str(tmp_path / "sb")]) == 0
    printed = capsys.readouterr().out
    assert "wrote 1 SAEBench file(s)" in printed and "sae/probing: Gao et al.'s 61 tasks" in printed
    assert not (tmp_path / "sb" / "sparse_probing").exists()  # our probing is not SAEBench's sparse probing
    core = json.loads((tmp_path / "sb" / "core" / "saebench_sae_eval_results.json").read_text())
    ours = json.loads((out / "sae" / "core.json").read_text())["metrics"]
    geometry = json.loads((out / "sae" / "splitting.json").read_text())["metrics"]
    em = core["eval_result_metrics"]
    flat = {k: v for group in em.values() for k, v in group.items()}
    assert {k for k, v in flat.items() if v is None} == NULL_CORE  # never -1, never our definition
    assert core["eval_result_unstructured"]["not_computed"] == sorted(NULL_CORE, key=list(flat).index)
    assert em["model_performance_preservation"]["ce_loss_score"] == ours["ce_loss_score"]
    assert em["sparsity"]["l0"] == ours["l0"] and core["sae_cfg_dict"]["architecture"] == "topk"
    assert em["misc_metrics"]["average_max_decoder_cosine_sim"] == geometry["average_max_decoder_cosine_sim"]
    assert core["sae_lens_release_id"] is None and core["sae_lens_id"] == "sae"
    assert "no SAEBench commit" in core["sae_bench_commit_hash"]

    pytest.importorskip("sae_bench", reason="sae-bench not installed: bash setup.sh --crosscheck")
    from pydantic import TypeAdapter
    from sae_bench.evals.core.eval_output import CoreEvalOutput
    from sae_bench.sae_bench_utils import graphing_utils

    TypeAdapter(CoreEvalOutput).validate_python(_fill_nulls(core))  # the structure is SAEBench's
    (entry,) = graphing_utils.get_core_results([str(tmp_path / "sb" / "core" / "saebench_sae_eval_results.json")])
    assert entry  # its graphing code reads the file as JSON, nulls and all


# -- SAEBench-mode results built directly (the runner's own finish_metrics makes the intervals) ----------


def _write(tmp_path, ev, output, name="sae", cfg=None, d_sae=64):
    """A result file of evaluator ``ev`` for ``output`` as the runner writes it; returns the Result."""
    from saebench.results import Result, SAERecord, result_path, write_result
    from saebench.runner import finish_metrics

    metrics, uncertainty, _ = finish_metrics(ev, output)
    config = {"model": "smollm2-135m", "hook": HOOK, "seed": 0, "dtype": "float32", "batch_size": 4,
              "evaluator_config": (cfg or ev.Config()).model_dump()}  # fmt: skip
    sae = SAERecord(name=name, source="sae_lens:gemma-scope-2b-pt-res/layer_6/width_16k" if name == "gs" else "native",
                    architecture="topk", d_in=576, d_sae=d_sae, fingerprint=f"fp-{name}")  # fmt: skip
    r = Result(evaluator=ev.name, run_key=f"k-{name}-{ev.name}", sae=sae, config=config, metrics=metrics,
               uncertainty=uncertainty, details=output.details,
               samples={k: v.to_dict() for k, v in output.samples.items()},
               created_at="2025-01-02T03:04:05+00:00")  # fmt: skip
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


SB_NAMING = {"names": "saebench", "mode": "saebench", "data": "saebench", "why": "SAEBench's"}


def _absorption_output(n_scored: int, names: str = "saebench"):
    from saebench.evaluators.absorption import SB_UNIT, VARIANT_UNIT
    from saebench.evaluators.base import EvalOutput
    from saebench.stats import Samples

    rng = random.Random(n_scored)
    letters, ids, frac, full, split = [], [], [], [], []
    for c, letter in enumerate("abcdefghijklmnopqrstuvwxyz"):
        row = {"letter": letter, "probe_f1": 0.8 if c < n_scored else 0.3, "main_latents": [c, c + 1][: 1 + c % 2],
               "num_split_features": 1 + c % 2}  # fmt: skip
        if c < n_scored:
            fr = [round(rng.random() * (c % 3 == 0), 6) for _ in range(2 + c % 3)]
            fu = [int(v > 0.5) for v in fr]
            row.update({"scored": True, "n_probe_true_positives": len(fr), "n_full_absorption": sum(fu),
                        "mean_absorption_fraction": sum(fr) / len(fr), "full_absorption_rate": sum(fu) / len(fu),
                        "absorbed": []})  # fmt: skip
            ids.append(f"{letter}@h")
            frac.append(fr)
            full.append(fu)
            split.append(row["num_split_features"])
        letters.append(row)
    unit = SB_UNIT if names == "saebench" else VARIANT_UNIT
    cols = {"absorption_fraction": frac, "full_absorption": full, "num_split_features": split}
    naming = SB_NAMING if names == "saebench" else {**SB_NAMING, "names": "variant", "why": "vocab_size=300"}
    details = {"letters": letters, "naming": naming, "contribution_rule": {"rule": "a_i * cos(d_i, p)"}}
    return EvalOutput({"probe_f1": 0.5}, details, samples={unit: Samples(unit, ids, cols)} if n_scored >= 20 else {})


def test_export_absorption_only_from_saebench_named_results(tmp_path, capsys):
    from saebench.evaluators.absorption import AbsorptionConfig, AbsorptionEvaluator

    ev, cfg = AbsorptionEvaluator(), AbsorptionConfig(mode="saebench")
    ours = _write(tmp_path, ev, _absorption_output(22), cfg=cfg).metrics
    _write(tmp_path, ev, _absorption_output(4), name="weak", cfg=cfg)  # SAEBench stops: no file
    small = AbsorptionConfig(mode="saebench", vocab_size=300)
    _write(tmp_path, ev, _absorption_output(22, "variant"), name="small", cfg=small)
    _write(tmp_path, ev, _absorption_output(22, "variant"), name="ours")  # the variant
    doc = _export(tmp_path, "absorption")
    printed = capsys.readouterr().out
    assert "weak/absorption: too few letters" in printed and "small/absorption: carries our names" in printed
    assert "ours/absorption: carries our names" in printed and "wrote 1 SAEBench file(s)" in printed
    assert not (tmp_path / "sb" / "absorption" / "saebench_ours_eval_results.json").exists()
    assert doc["eval_type_id"] == "absorption_first_letter"
    mean = doc["eval_result_metrics"]["mean"]
    for k in ("mean_absorption_fraction_score", "mean_full_absorption_score", "mean_num_split_features"):
        assert mean[k] == ours[k] is not None
    rows = doc["eval_result_details"]
    assert [r["first_letter"] for r in rows] == list("abcdefghijklmnopqrstuv")
    assert mean["std_dev_absorption_fraction_score"] == statistics.stdev([r["mean_absorption_fraction"] for r in rows])
    assert doc["eval_config"]["k_sparse_probe_num_epochs"] == 50 and doc["eval_config"]["min_feats_for_eval"] == 20
    assert doc["eval_result_unstructured"]["uncertainty"]["mean_absorption_fraction_score"]["unit"] == "first_letter"

    pytest.importorskip("sae_bench", reason="sae-bench not installed: bash setup.sh --crosscheck")
    from sae_bench.evals.absorption.eval_output import AbsorptionEvalOutput

    _validated(AbsorptionEvalOutput, doc)


def _scr_output(names: str = "saebench"):
    from saebench.evaluators.base import EvalOutput
    from saebench.evaluators.scr import SB_UNIT, VARIANT_UNIT, variant_name
    from saebench.stats import Samples

    rows, columns = [], {}
    for p, pair in enumerate(["professor_nurse", "architect_journalist", "Books_CDs_and_Vinyl"]):
        scores = {}
        for n in (2, 5, 10, 20, 50):  # 100 and 500 exceed the SAE's 64 latents: undefined
            scores[f"scr_dir1_threshold_{n}"] = 0.01 * n + 0.1 * p
            scores[f"scr_dir2_threshold_{n}"] = -0.02 * n
            scores[f"scr_metric_threshold_{n}"] = scores[f"scr_dir1_threshold_{n}"]
        if names != "saebench":
            scores = {variant_name(k): v for k, v in scores.items()}
        for k, v in scores.items():
            columns.setdefault(k, []).append(v)
        ds = "LabHC/bias_in_bios_class_set1"
        rows.append({"run": f"{ds}_scr_{pair}", "dataset": ds, "clean_accuracy": {"professor / nurse": 0.9},
                     "scr_metric_direction": "dir1", **scores})  # fmt: skip
    unit = SB_UNIT if names == "saebench" else VARIANT_UNIT
    naming = SB_NAMING if names == "saebench" else {**SB_NAMING, "names": "variant", "why": "mode=variant"}
    samples = {unit: Samples(unit, [f"{r['run']}@h" for r in rows], columns)}
    return EvalOutput({"n_pairs_scored": 3, "d_sae": 64}, {"runs": rows, "naming": naming}, samples=samples)


def test_export_scr_only_from_saebench_named_results(tmp_path, monkeypatch, capsys):
    from saebench.evaluators.scr import ScrConfig, ScrEvaluator

    ours = _write(tmp_path, ScrEvaluator(), _scr_output(), cfg=ScrConfig(mode="saebench")).metrics
    _write(tmp_path, ScrEvaluator(), _scr_output("variant"), name="variant")
    doc = _export(tmp_path, "scr")
    assert "variant/scr: carries our names, not SAEBench's (mode=variant)" in capsys.readouterr().out
    m = doc["eval_result_metrics"]["scr_metrics"]
    for n in (2, 5, 10, 20, 50):
        for k in (f"scr_metric_threshold_{n}", f"scr_dir1_threshold_{n}", f"scr_dir2_threshold_{n}"):
            assert m[k] == ours[k] and m[k] is not None
    assert m["scr_metric_threshold_100"] is None and m["scr_dir1_threshold_500"] is None  # SAEBench's default
    assert doc["eval_result_details"][0]["dataset_name"] == "LabHC/bias_in_bios_class_set1_scr_professor_nurse_results"
    assert doc["eval_result_details"][1]["scr_metric_threshold_20"] == pytest.approx(0.3)
    cfg = doc["eval_config"]
    assert cfg["perform_scr"] is True and cfg["train_set_size"] == 4000 and cfg["probe_epochs"] == 20
    assert cfg["column1_vals_lookup"]["LabHC/bias_in_bios_class_set1"][0] == ["professor", "nurse"]
    assert doc["eval_result_unstructured"]["uncertainty"]["scr_metric_threshold_20"]["unit"] == "scr_run"

    pytest.importorskip("sae_bench", reason="sae-bench not installed: bash setup.sh --crosscheck")
    from sae_bench.evals.scr_and_tpp.eval_output import ScrEvalOutput
    from sae_bench.sae_bench_utils import graphing_utils

    _validated(ScrEvalOutput, doc)
    monkeypatch.chdir(tmp_path)  # SAEBench picks the eval from the path: keep the test's name out of it
    (entry,) = graphing_utils.get_eval_results(["sb/scr/saebench_sae_eval_results.json"]).values()
    assert entry["scr_metric_threshold_20"] == ours["scr_metric_threshold_20"]


def _tpp_output():
    from saebench.evaluators.base import EvalOutput
    from saebench.evaluators.tpp import SB_UNIT
    from saebench.stats import Samples

    rows, ids, columns = [], [], {}
    for d, (ds, classes) in enumerate({"LabHC/bias_in_bios_class_set1": "01269",
                                       "canrager/amazon_reviews_mcauley_1and5": "12356"}.items()):  # fmt: skip
        per_class = {}
        for i, c in enumerate(classes):
            per_class[c] = {}
            for n in (2, 5, 10, 20, 50):
                intended, unintended = 0.01 * n + 0.05 * i, 0.001 * n + 0.01 * d
                per_class[c].update({f"tpp_threshold_{n}_total_metric": intended - unintended,
                                     f"tpp_threshold_{n}_intended_diff_only": intended,
                                     f"tpp_threshold_{n}_unintended_diff_only": unintended})  # fmt: skip
        ids.append(f"{ds}_tpp@h")
        for k in per_class[classes[0]]:
            columns.setdefault(k, []).append([per_class[c][k] for c in classes])
        rows.append({"run": f"{ds}_tpp", "dataset": ds, "clean_accuracy": {c: 0.9 for c in classes},
                     "per_class": per_class})  # fmt: skip
    details = {"runs": rows, "naming": SB_NAMING}
    return EvalOutput({"n_classes_scored": 10, "d_sae": 64}, details, samples={SB_UNIT: Samples(SB_UNIT, ids, columns)})


def test_export_tpp_as_saebench_tpp(tmp_path, monkeypatch):
    from saebench.evaluators.tpp import TppConfig, TppEvaluator

    ours = _write(tmp_path, TppEvaluator(), _tpp_output(), cfg=TppConfig(mode="saebench")).metrics
    doc = _export(tmp_path, "tpp")
    m = doc["eval_result_metrics"]["tpp_metrics"]
    for n in (2, 5, 10, 20, 50):
        for s in ("total_metric", "intended_diff_only", "unintended_diff_only"):
            assert m[f"tpp_threshold_{n}_{s}"] == ours[f"tpp_threshold_{n}_{s}"] is not None
    assert m["tpp_threshold_100_total_metric"] is None and m["tpp_threshold_500_intended_diff_only"] is None
    bib, amz = doc["eval_result_details"]
    assert bib["dataset_name"] == "LabHC/bias_in_bios_class_set1_tpp_results"
    assert bib["tpp_threshold_20_intended_diff_only"] == pytest.approx(0.2 + 0.05 * 2)  # mean over its 5 classes
    assert m["tpp_threshold_20_total_metric"] == pytest.approx(  # SAEBench's mean over datasets of dataset means
        (bib["tpp_threshold_20_total_metric"] + amz["tpp_threshold_20_total_metric"]) / 2
    )
    un = doc["eval_result_unstructured"]
    assert set(un["LabHC/bias_in_bios_class_set1"]) == set("01269")  # SAEBench's per_dataset_class_results
    assert un["uncertainty"]["tpp_threshold_20_total_metric"]["unit"] == "tpp_dataset"

    pytest.importorskip("sae_bench", reason="sae-bench not installed: bash setup.sh --crosscheck")
    from sae_bench.evals.scr_and_tpp.eval_output import TppEvalOutput
    from sae_bench.sae_bench_utils import graphing_utils

    _validated(TppEvalOutput, doc)
    monkeypatch.chdir(tmp_path)
    (entry,) = graphing_utils.get_eval_results(["sb/tpp/saebench_sae_eval_results.json"]).values()
    assert entry["tpp_threshold_20_total_metric"] == ours["tpp_threshold_20_total_metric"]


def test_export_sparse_probing_and_sae_lens_ids(tmp_path):
    from saebench.evaluators.base import EvalOutput
    from saebench.evaluators.sparse_probing import SB_UNIT, SparseProbingEvaluator
    from saebench.stats import Samples

    keys = ["llm_test_accuracy", "llm_top_1_test_accuracy", "sae_test_accuracy", "sae_top_1_test_accuracy"]
    rows, cols = [], {k: [] for k in keys}
    for d, ds in enumerate(["fancyzhx/ag_news", "Helsinki-NLP/europarl"]):
        row = {"dataset_name": ds}
        for j, k in enumerate(keys):
            row[k] = {c: 0.5 + 0.01 * (i + j + d) for i, c in enumerate("abcd")}
            cols[k].append(list(row[k].values()))
        rows.append(row)
    out = EvalOutput({"n_datasets": 2, "d_sae": 64}, {"datasets": rows, "naming": SB_NAMING},
                     samples={SB_UNIT: Samples(SB_UNIT, ["a@h", "e@h"], cols)})  # fmt: skip
    ours = _write(tmp_path, SparseProbingEvaluator(), out, name="gs").metrics
    doc = _export(tmp_path, "sparse_probing", name="gs")
    assert doc["eval_result_metrics"]["sae"]["sae_top_1_test_accuracy"] == ours["sae_top_1_test_accuracy"]
    assert doc["eval_result_metrics"]["sae"]["sae_top_5_test_accuracy"] is None  # not computed: null
    assert doc["eval_result_details"][0]["llm_test_accuracy"] == pytest.approx(0.515)
    assert (doc["sae_lens_release_id"], doc["sae_lens_id"]) == ("gemma-scope-2b-pt-res", "layer_6/width_16k")

    pytest.importorskip("sae_bench", reason="sae-bench not installed: bash setup.sh --crosscheck")
    from sae_bench.evals.sparse_probing.eval_output import SparseProbingEvalOutput

    _validated(SparseProbingEvalOutput, doc)


def test_old_results_load_and_are_not_exported_under_saebench_names(tmp_path, capsys):
    """A result written before mode=saebench existed (SAEBench names on our variant's numbers) still
    loads; the export skips it with the reason instead of writing its numbers under SAEBench's names."""
    from saebench.evaluators.base import EvalOutput
    from saebench.evaluators.scr import ScrEvaluator
    from saebench.results import load_results
    from saebench.stats import Samples

    cols = {"scr_metric_threshold_20": [0.1, 0.2]}
    old = EvalOutput({"n_pairs_scored": 2}, {"pairs": [{"pair": "a"}, {"pair": "b"}]},
                     samples={"class_pair": Samples("class_pair", ["a@h", "b@h"], cols)})  # fmt: skip
    _write(tmp_path, ScrEvaluator(), old, name="old")
    (r,) = load_results([tmp_path / "res"])
    assert r.evaluator == "scr" and r.samples["class_pair"]["columns"] == cols
    assert main(["export", "--format", "saebench", str(tmp_path / "res"), str(tmp_path / "sb")]) == 0
    printed = capsys.readouterr().out
    assert "old/scr: carries our names" in printed and "before mode=saebench existed" in printed
    assert "wrote 0 SAEBench file(s)" in printed
