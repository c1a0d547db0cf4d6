"""Export results in SAEBench's output JSON layout (``saebench export --format saebench DIR OUT``).

SAEBench 0.6.0 writes one ``{release}_{sae_id}_eval_results.json`` per (SAE, evaluation) into a
folder named after the evaluation (``core/``, ``sparse_probing/``, ``autointerp/``...); its graphing
code finds files by that name and folder, and its output classes (``CoreEvalOutput``,
``SparseProbingEvalOutput``, ``AutoInterpEvalOutput``...) validate them. We write the same layout:
release ``saebench``, id the SAE's name, ``sae_cfg_dict`` with the architecture, widths, model
and hook.

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
  standard deviation over latents.

Other evaluators have no SAEBench counterpart and are skipped with a note.
"""

from __future__ import annotations

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


def _autointerp(r: Result, extra: dict[str, Result]) -> dict[str, Any] | None:
    m = r.metrics
    score = next((m[k] for k in ("detection_accuracy", "detection_balanced_accuracy") if isinstance(m.get(k), float)),
                 None)  # fmt: skip
    if score is None:
        return None
    latents = [row for row in r.details.get("latents", []) if isinstance(row.get("detection"), dict)]
    vals = [row["detection"].get("accuracy") for row in latents if isinstance(row["detection"].get("accuracy"), float)]
    mean = sum(vals) / len(vals) if vals else score
    std = (sum((v - mean) ** 2 for v in vals) / max(1, len(vals) - 1)) ** 0.5 if len(vals) > 1 else MISSING
    config = {"model_name": r.config.get("model"), "n_latents": r.config.get("evaluator_config", {}).get("n_latents"),
              "llm_dtype": r.config.get("dtype", "float32")}  # fmt: skip
    metrics = {"autointerp": {"autointerp_score": float(score), "autointerp_std_dev": float(std)}}
    notes = {
        "definitions": {"autointerp_score": "our detection score (see saebench_metrics for the scorer used)"},
        "saebench_metrics": m,
    }
    return _header(r, "autointerp", config, metrics, [], notes)


EXPORTERS = {
    "core": ("core", _core),
    "probing": ("sparse_probing", _probing),
    "autointerp": ("autointerp", _autointerp),
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
            if doc is None:
                skipped.append(f"{name}/{ev}: no detection score to export")
                continue
            path = Path(out) / folder / f"{RELEASE}_{slug(name)}_eval_results.json"
            atomic_write_json(path, doc)
            written.append(path)
    return written, skipped
