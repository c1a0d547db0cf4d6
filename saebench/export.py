"""Export results in SAEBench's output JSON layout (``saebench export --format saebench DIR OUT``).

SAEBench 0.6.0 writes one ``{release}_{sae_id}_eval_results.json`` per (SAE, evaluation) into a
folder named after the evaluation (``core/``, ``sparse_probing/``, ``autointerp/``, ``absorption/``,
``scr/``, ``tpp/``); its graphing code finds files by that name and folder, and its output classes
(``CoreEvalOutput``, ``SparseProbingEvalOutput``, ``AutoInterpEvalOutput``, ``AbsorptionEvalOutput``,
``ScrEvalOutput``, ``TppEvalOutput``) validate them. We write the same layout: release
``saebench``, id the SAE's name, ``sae_cfg_dict`` with the architecture, widths, model and hook;
``eval_result_unstructured`` keeps our config, metrics and ``uncertainty`` (bootstrap se and 95%
interval per metric) beside the notes below.

Placeholders: where SAEBench's field is a required number we write -1 for a value we do not
compute (SAEBench's own value for NaN / not available), and -1 for config settings of a procedure
we do not run (Adam epochs, mini-batch sizes); where its field is ``float | None`` with default
None (every SCR and TPP threshold) we leave it null, since -1 is a possible score there. Each
file lists them (``not_computed``, ``not_run``).

What goes where, and what differs (also written into each file's ``eval_result_unstructured``):

- core: every metric SAEBench names is filled from our result under that name (they are equal
  on the same tokens: ``tests/test_crosscheck.py``), except three documented differences:
  ``explained_variance`` is the pooled 1 - FVU (SAEBench 0.6.0's formula subtracts (E‖x‖²/d)²),
  ``mse`` is per element (SAEBench divides by the batch's token count), and
  ``relative_reconstruction_bias`` is pooled (SAEBench averages per-batch ratios). Quantities we
  do not compute (``explained_variance_legacy``; the max encoder/decoder cosines unless a
  ``splitting`` result of the same SAE is exported alongside) are written as -1, SAEBench's own
  placeholder for a missing value;
- probing: our 1-D sparse probing on Gao et al.'s 61 tasks maps onto SAEBench's sparse-probing
  layout: ``llm_test_accuracy`` is the full-width residual probe, ``sae_top_{k}_test_accuracy``
  our top-k latent probes; per-task rows go into ``eval_result_details``. The task set is not
  SAEBench's 8 datasets: compare with SAEBench's sparse-probing numbers only with that in mind;
- autointerp: ``autointerp_score`` is our detection score and ``autointerp_std_dev`` its
  standard deviation over latents;
- absorption -> ``absorption_first_letter`` (folder ``absorption/``): ``mean_absorption_fraction_score``,
  ``mean_full_absorption_score`` and ``mean_num_split_features`` are ours under SAEBench's names (the
  same definitions; the documented differences of docs/absorption.md: deterministic probe solvers,
  the probe's own activations scored instead of re-prompted ones, contributions in model units,
  token-level prompts so ``prompt_token_pos`` is unused); the three ``std_dev_*`` are SAEBench's
  ``statistics.stdev`` over the scored letters of the per-letter values, filled because the letter
  is also our uncertainty's unit (-1 with fewer than two letters or no interval). Per-letter rows
  go into ``eval_result_details``; too few letters (SAEBench stops) gives -1 scores;
- scr / tpp: every ``scr_{dir1,metric,dir2}_threshold_N`` and ``tpp_threshold_N_*`` for SAEBench's
  N (2..500) is ours under the same name, on our data, probes and pooling (docs/scr_tpp.md); details
  are per attribute pair (SCR) and per dataset (TPP: the mean over its classes; the per-class values
  in ``per_dataset_class_results`` as SAEBench). SAEBench defines no standard deviation for SCR or
  TPP: our intervals (over pairs, over classes) are only under ``uncertainty``. ``train_set_size`` /
  ``test_set_size`` count texts per probe as SAEBench does (4x our per-quadrant size for SCR, 2x our
  per-class size for TPP).

Other evaluators have no SAEBench counterpart and are skipped with a note.
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

RELEASE = "saebench"
MISSING = -1.0  # SAEBench writes -1 where a value is NaN / not available


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else MISSING


def _header(r: Result, eval_type: str, config: dict[str, Any], metrics: dict[str, Any],
            details: list[dict[str, Any]], notes: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    created = datetime.fromisoformat(r.created_at) if r.created_at else datetime(1970, 1, 1)
    return {
        "eval_type_id": eval_type,
        "eval_config": config,
        "eval_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"saebench:{r.run_key}:{eval_type}")),
        "datetime_epoch_millis": int(created.timestamp() * 1000),
        "eval_result_metrics": metrics,
        "eval_result_details": details,
        "sae_bench_commit_hash": str(r.env.get("git_commit") or "unknown"),
        "sae_lens_id": r.sae.name,
        "sae_lens_release_id": RELEASE,
        "sae_lens_version": (r.env.get("packages") or {}).get("sae-lens"),
        "sae_cfg_dict": {"architecture": r.sae.architecture, "d_in": r.sae.d_in, "d_sae": r.sae.d_sae,
                         "model_name": r.config.get("model"), "hook_name": r.config.get("hook"),
                         "source": r.sae.source, "fingerprint": r.sae.fingerprint},
        "eval_result_unstructured": {"exported_by": "saebench", "saebench_config": r.config, **notes,
                                     "uncertainty": r.uncertainty},
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
    metrics = {
        "model_behavior_preservation": {k: _num(m.get(k)) for k in ("kl_div_score", "kl_div_with_ablation",
                                                                     "kl_div_with_sae")},
        "model_performance_preservation": {k: _num(m.get(k)) for k in ("ce_loss_score", "ce_loss_with_ablation",
                                                                       "ce_loss_with_sae", "ce_loss_without_sae")},
        "reconstruction_quality": {"explained_variance": _num(m.get("explained_variance")),
                                   "explained_variance_legacy": MISSING, "mse": _num(m.get("mse")),
                                   "cossim": _num(m.get("cossim"))},
        "shrinkage": {k: _num(m.get(k)) for k in ("l2_norm_in", "l2_norm_out", "l2_ratio",
                                                  "relative_reconstruction_bias")},
        "sparsity": {"l0": _num(m.get("l0")), "l1": _num(m.get("l1"))},
        "token_stats": {"total_tokens_eval_reconstruction": n_tok, "total_tokens_eval_sparsity_variance": n_tok},
        "misc_metrics": {
            **{k: _num(m.get(k)) for k in ("freq_over_1_percent", "freq_over_10_percent",
                                           "normalized_freq_over_1_percent", "normalized_freq_over_10_percent",
                                           "frac_alive")},
            "average_max_encoder_cosine_sim": _num(geometry.get("average_max_encoder_cosine_sim")),
            "average_max_decoder_cosine_sim": _num(geometry.get("average_max_decoder_cosine_sim")),
        },
    }  # fmt: skip
    notes = {
        "definitions": {
            "explained_variance": "pooled 1 - FVU (SAELens 6.54); SAEBench 0.6.0 subtracts (E||x||^2/d)^2",
            "mse": "per element; SAEBench 0.6.0 divides the per-token squared error by the batch's token count",
            "relative_reconstruction_bias": "pooled E||x_hat||^2 / E<x, x_hat>; SAEBench averages per-batch ratios",
            "special_positions": "positions holding the BOS id kept clean and excluded (ignore_tokens={BOS})",
        },
        "not_computed": ["explained_variance_legacy"] + ([] if geometry else ["average_max_encoder_cosine_sim",
                                                                              "average_max_decoder_cosine_sim"]),
        "saebench_metrics": m,
    }  # fmt: skip
    return _header(r, "core", config, metrics, [], notes)


def _probing(r: Result, extra: dict[str, Result]) -> dict[str, Any]:
    m, rows = r.metrics, r.details.get("tasks") or []
    ks = [1, 2, 5, 10, 20, 50, 100]
    ecfg = r.config.get("evaluator_config", {})
    config = {"random_seed": r.config.get("seed", 0), "dataset_names": [t["task"] for t in rows],
              "probe_train_set_size": ecfg.get("max_train") or 0, "probe_test_set_size": ecfg.get("max_test") or 0,
              "context_length": ecfg.get("max_tokens", 0), "sae_batch_size": r.config.get("batch_size", 1),
              "llm_batch_size": r.config.get("batch_size"), "llm_dtype": r.config.get("dtype", "float32"),
              "model_name": r.config.get("model"), "k_values": [k for k in ks if f"top_{k}_accuracy" in m]}  # fmt: skip
    metrics = {
        "llm": {"llm_test_accuracy": _num(m.get("baseline_resid_full_accuracy"))},
        "sae": {f"sae_top_{k}_test_accuracy": m.get(f"top_{k}_accuracy") for k in ks if f"top_{k}_accuracy" in m},
    }
    details = [{"dataset_name": t["task"], "llm_test_accuracy": _num(t.get("resid_full_accuracy")),
                **{f"sae_top_{k}_test_accuracy": t.get(f"top_{k}_accuracy") for k in ks if f"top_{k}_accuracy" in t}}
               for t in rows]  # fmt: skip
    notes = {"definitions": {"task_set": "Gao et al.'s 61 hypothesized-feature tasks (saebench.tasks), not SAEBench's",
                             "llm_test_accuracy": "full-width residual probe, L2 by cross-validation on train",
                             "sae_top_k_test_accuracy": "probe on the k latents with the largest class-mean gap"},
             "saebench_metrics": m}  # fmt: skip
    return _header(r, "sparse_probing", config, metrics, details, notes)


def _autointerp(r: Result, extra: dict[str, Result]) -> dict[str, Any] | str:
    m = r.metrics
    score = m.get("detection_accuracy")
    if not isinstance(score, float):  # a published name carries only that project's number
        return (
            "no detection_accuracy (SAEBench's autointerp_score is free-text detection: run with an endpoint and "
            "--set autointerp.scoring=text); offline log-probability scores have no SAEBench counterpart"
        )
    latents = [row for row in r.details.get("latents", []) if isinstance(row.get("detection"), dict)]
    vals = [row["detection"].get("accuracy") for row in latents if isinstance(row["detection"].get("accuracy"), float)]
    mean = sum(vals) / len(vals) if vals else score
    std = (sum((v - mean) ** 2 for v in vals) / max(1, len(vals) - 1)) ** 0.5 if len(vals) > 1 else MISSING
    config = {"model_name": r.config.get("model"), "n_latents": r.config.get("evaluator_config", {}).get("n_latents"),
              "llm_dtype": r.config.get("dtype", "float32")}  # fmt: skip
    metrics = {"autointerp": {"autointerp_score": float(score), "autointerp_std_dev": float(std)}}
    notes = {
        "definitions": {
            "autointerp_score": "mean free-text detection accuracy over latents (saebench detection_accuracy)"
        },
        "saebench_metrics": m,
    }
    return _header(r, "autointerp", config, metrics, [], notes)


def _opt(v: Any) -> float | None:
    """A number, or None: SAEBench's own value for a threshold it did not compute (SCR/TPP fields
    are ``float | None`` with default None; -1 would read as a real score there)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _std_over(r: Result, metric: str, unit: str, values: list[float]) -> float:
    """SAEBench's ``statistics.stdev`` of per-unit values, where our uncertainty of ``metric`` is
    over the same unit and the same units (its ``n``); MISSING otherwise."""
    u = r.uncertainty.get(metric) or {}
    if u.get("unit") != unit or u.get("n") != len(values) or len(values) < 2:
        return MISSING
    return float(statistics.stdev(values))


SB_N_VALUES = (2, 5, 10, 20, 50, 100, 500)  # the thresholds SAEBench 0.6.0's SCR/TPP classes have fields for
TPP_SUFFIXES = ("total_metric", "intended_diff_only", "unintended_diff_only")
NOT_RUN = -1  # config settings of a procedure we do not run (Adam epochs, mini-batches): SAEBench's -1


def _absorption(r: Result, extra: dict[str, Result]) -> dict[str, Any]:
    m, ecfg = r.metrics, r.config.get("evaluator_config", {})
    letters = r.details.get("letters") or []
    scored = [row for row in letters if row.get("scored")]
    config = {
        "model_name": r.config.get("model"), "random_seed": r.config.get("seed", 0),
        "f1_jump_threshold": ecfg.get("f1_jump", 0.03), "max_k_value": ecfg.get("max_k", 10),
        "prompt_template": ecfg.get("prompt_template", "{word} has the first letter:"), "prompt_token_pos": -6,
        "llm_batch_size": r.config.get("batch_size") or NOT_RUN, "llm_dtype": r.config.get("dtype", "float32"),
        "k_sparse_probe_l1_decay": ecfg.get("l1", 0.01), "k_sparse_probe_batch_size": NOT_RUN,
        "k_sparse_probe_num_epochs": NOT_RUN, "min_GT_probe_f1": ecfg.get("min_probe_f1", 0.6),
        "min_feats_for_eval": max(1, int(ecfg.get("min_letters", 20))), "eval_k_sparse_probe_batch_size": NOT_RUN,
        "precalc_k_sparse_probe_sae_acts": True,
    }  # fmt: skip
    per_letter = {
        "absorption_fraction_score": ("mean_absorption_fraction_score", "mean_absorption_fraction"),
        "full_absorption_score": ("mean_full_absorption_score", "full_absorption_rate"),
        "num_split_features": ("mean_num_split_features", "num_split_features"),
    }
    mean: dict[str, float] = {name: _num(m.get(name)) for name, _ in per_letter.values()}
    for suffix, (name, col) in per_letter.items():
        mean[f"std_dev_{suffix}"] = _std_over(r, name, "letter", [float(row[col]) for row in scored])
    details = [{"first_letter": row["letter"], "mean_absorption_fraction": float(row["mean_absorption_fraction"]),
                "full_absorption_rate": float(row["full_absorption_rate"]),
                "num_full_absorption": int(row["n_full_absorption"]),
                "num_probe_true_positives": int(row["n_probe_true_positives"]),
                "num_split_features": int(row["num_split_features"])} for row in scored]  # fmt: skip
    notes = {
        "definitions": {
            "mean_*_score": "SAEBench's: mean over scored letters (probe test F1 > min_GT_probe_f1) of the per-letter "
            "mean over the probe's true positives; scored on the activations the probe was judged on (SAEBench "
            "re-prompts them with fresh in-context examples)",
            "contribution": "a_i * (d_i . p) with d_i the decoder row in model units; SAEBench's a_i * cos(d_i, p) "
            "is equal for unit-norm decoders only",
            "probes": "letter probe by L-BFGS, L1 probe by FISTA (the same losses, deterministic) instead of 50 Adam "
            "epochs; latents tied at L1 weight 0 ranked in lasso entry order",
            "prompts": "built at the token level, the word's own token position recorded: prompt_token_pos is "
            "SAEBench's -6, not used here",
            "absorption_fraction": "0 for a probe projection P <= 0 (SAEBench divides by P)",
            "std_dev_*": "statistics.stdev over the scored letters of the per-letter values, as SAEBench; the letter "
            "is also the unit of our 'uncertainty' (bootstrap se and 95% interval of the mean)",
            "too_few_letters": "below min_feats_for_eval letters SAEBench stops; we write -1 for the scores",
            "docs": "docs/absorption.md, 'Deliberate differences from SAEBench 0.6.0'",
        },
        "not_computed": [k for k, v in mean.items() if v == MISSING],
        "not_run": {
            k: "our solvers are full-batch and deterministic (no Adam epochs or mini-batches)"
            for k in ("k_sparse_probe_batch_size", "k_sparse_probe_num_epochs", "eval_k_sparse_probe_batch_size")
        },
        "letters": [
            {k: row.get(k) for k in ("letter", "probe_f1", "scored", "main_latents", "main_f1", "n_partial_absorption")}
            for row in letters
        ],
        "saebench_metrics": m,
    }
    return _header(r, "absorption_first_letter", config, {"mean": mean}, details, notes)


def _scr_tpp_config(r: Result, scr: bool, names: list[str], per_probe: int) -> dict[str, Any]:
    """``ScrAndTppEvalConfig``: sizes per probe as SAEBench counts them (``per_probe`` x our
    per-quadrant / per-class sizes), the AdamW probe settings we do not run as NOT_RUN."""
    ecfg = r.config.get("evaluator_config", {})
    lookup: dict[str, list[tuple[str, str]]] = {}
    if scr:
        from saebench.tasks.scr_tpp import SCR_PAIRS

        lookup = {n: [(SCR_PAIRS[n].intended[1], SCR_PAIRS[n].intended[2])] for n in names if n in SCR_PAIRS}
    return {
        "random_seed": r.config.get("seed", 0), "dataset_names": names, "perform_scr": scr,
        "early_stopping_patience": NOT_RUN, "train_set_size": per_probe * int(ecfg.get("n_train", 0)),
        "test_set_size": per_probe * int(ecfg.get("n_test", 0)), "context_length": ecfg.get("max_tokens", 128),
        "probe_train_batch_size": NOT_RUN, "probe_test_batch_size": NOT_RUN, "probe_epochs": NOT_RUN,
        "probe_lr": float(NOT_RUN), "probe_l1_penalty": 0.0, "sae_batch_size": NOT_RUN,
        "llm_batch_size": r.config.get("batch_size") or NOT_RUN, "llm_dtype": r.config.get("dtype", "float32"),
        "lower_vram_usage": False, "model_name": r.config.get("model"),
        "n_values": list(ecfg.get("n_values", SB_N_VALUES)), "column1_vals_lookup": lookup,
    }  # fmt: skip


SCR_TPP_NOTES = {
    "data": "offline stand-ins from sae-probes unless use_hub (saebench_config.evaluator_config); a seeded sample",
    "probes": "L2 logistic regression, C by cross-validation on train only (deterministic); SAEBench trains "
    "with AdamW + L1 and keeps the epoch with the best test accuracy",
    "context_length": "texts keep their last max_tokens - 1 tokens (SAEBench: the first 128)",
    "padding": "BOS and padding never enter the mean pool (SAEBench adds their ablation term)",
    "train_set_size": "texts per probe as SAEBench counts them, from the requested sizes; the offline data can cap "
    "them (sizes used: saebench_details)",
    "not_run": "early_stopping_patience, probe_*_batch_size, probe_epochs, probe_lr, sae_batch_size: -1, settings "
    "of SAEBench's AdamW probe training and batching, which we do not run; probe_l1_penalty: 0 (ours is L2)",
    "thresholds": "null (SAEBench's field default) where not computed: a threshold above the SAE's width or not in "
    "n_values, and scr_metric where the biased probe does equally well on both attributes",
    "docs": "docs/scr_tpp.md, 'Deliberate differences from SAEBench'",
}


def _scr(r: Result, extra: dict[str, Result]) -> dict[str, Any] | str:
    m, rows = r.metrics, r.details.get("pairs") or []
    if not rows:
        return "no attribute pair scored"
    keys = [f"scr_{k}_threshold_{n}" for n in SB_N_VALUES for k in ("dir1", "metric", "dir2")]
    metrics = {"scr_metrics": {k: _opt(m.get(k)) for k in keys}}
    details = [{"dataset_name": row["pair"], **{k: _opt(row.get(k)) for k in keys}} for row in rows]
    notes = {
        "definitions": {
            "scr_*": "SAEBench's get_scr_plotting_dict per attribute pair, mean over pairs; our pairs, probes and "
            "pooling (below)",
            "dataset_name": "our attribute pair (saebench.tasks.scr_tpp), not SAEBench's dataset_scr_class1_class2",
            **SCR_TPP_NOTES,
        },
        "std_dev": "SAEBench 0.6.0's ScrMetrics has no standard deviation; our bootstrap se and 95% interval over "
        "attribute pairs (unit class_pair) are under 'uncertainty'",
        "not_computed": [k for k in keys if metrics["scr_metrics"][k] is None],
        "saebench_metrics": m,
        "saebench_details": [{k: v for k, v in row.items() if not k.startswith("scr_")} for row in rows],
    }
    return _header(r, "scr", _scr_tpp_config(r, True, [row["pair"] for row in rows], 4), metrics, details, notes)


def _tpp(r: Result, extra: dict[str, Result]) -> dict[str, Any] | str:
    m, rows = r.metrics, r.details.get("datasets") or []
    if not rows:
        return "no dataset scored"
    keys = [f"tpp_threshold_{n}_{s}" for n in SB_N_VALUES for s in TPP_SUFFIXES]
    metrics = {"tpp_metrics": {k: _opt(m.get(k)) for k in keys}}

    def dataset_mean(row: dict[str, Any], k: str) -> float | None:
        vals = [v[k] for v in row.get("per_class", {}).values() if _opt(v.get(k)) is not None]
        return sum(vals) / len(vals) if vals else None

    details = [{"dataset_name": row["dataset"], **{k: dataset_mean(row, k) for k in keys}} for row in rows]
    notes = {
        "definitions": {
            "tpp_*": "SAEBench's create_tpp_plotting_dict per class; our metric is the mean over classes, equal to "
            "SAEBench's mean over datasets of per-dataset means when every dataset has as many classes (four "
            "offline); eval_result_details holds the per-dataset means",
            **SCR_TPP_NOTES,
        },
        "std_dev": "SAEBench 0.6.0's TppMetrics has no standard deviation; our bootstrap se and 95% interval over "
        "classes (unit class) are under 'uncertainty'",
        "not_computed": [k for k in keys if metrics["tpp_metrics"][k] is None],
        "per_dataset_class_results": {row["dataset"]: row.get("per_class", {}) for row in rows},  # as SAEBench
        "saebench_metrics": m,
        "saebench_details": [{k: v for k, v in row.items() if k != "per_class"} for row in rows],
    }
    return _header(r, "tpp", _scr_tpp_config(r, False, [row["dataset"] for row in rows], 2), metrics, details, notes)


EXPORTERS = {
    "core": ("core", _core),
    "probing": ("sparse_probing", _probing),
    "autointerp": ("autointerp", _autointerp),
    "absorption": ("absorption", _absorption),
    "scr": ("scr", _scr),
    "tpp": ("tpp", _tpp),
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
                skipped.append(f"{name}/{ev}: no SAEBench counterpart")
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
