"""``--evals sae_probes``: k-sparse SAE probes against residual baselines (Kantamneni et al. 2025).

Kantamneni, Engels, Rajamanoharan, Tegmark, Nanda 2025, "Are Sparse Autoencoders Useful? A Case
Study in Sparse Probing" ask whether probing on SAE latents beats probing on the residual stream
where probes usually struggle. On the 113 binary datasets of their ``sae-probes`` package
(:mod:`saebench.tasks.sae_probes`), at the **last token** of each text:

- baseline: L2 logistic regression on the full residual vector;
- SAE probe: the same regression on the k latents with the largest normalized class-mean
  difference on train (:mod:`saebench.probes.ksparse`: their selection, C grid and CV);
- score: test ROC AUC; ``gap = AUC_SAE(k) - AUC_baseline`` per setting.

Regimes (their four, plus the ordinary setting as reference): ``scarcity`` (few training
examples), ``imbalance`` (skewed positive fraction), ``label_noise`` (a fraction of training
labels flipped), ``covariate_shift`` (trained in distribution, tested on the shipped OOD files:
eight datasets), and ``normal``. ``auc_gap_<regime>`` is the mean over datasets of the dataset's
mean gap over the regime's points at ``k = headline_k`` (16, one of their two k for the regimes);
intervals bootstrap over datasets (unit ``dataset``, id ``tag@hash-of-its-sample``). A positive
gap means the SAE probe beats the residual probe. Baselines, samples and activations do not
depend on the SAE: computed once per hook in ``prepare`` (baselines cached on disk beside the
activations); an SAE costs one encode of each text's last token and its probes.
``pooling="mean"`` (not the paper's) probes the mean over each text's tokens instead.
``docs/sae_probes.md`` lists the profiles and every difference from the paper.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import field_validator

from saebench.errors import SaebenchError
from saebench.evaluators.base import EvalConfig, EvalContext, EvalOutput, Metric, mean_defined
from saebench.pipeline import ActivationPipeline
from saebench.probes.ksparse import DEFAULT_CS
from saebench.stats import Samples, mean_of

REGIMES = ("normal", "scarcity", "imbalance", "label_noise", "covariate_shift")
HEADLINE_K = 16
# sae-probes' grids (utils_data.get_training_sizes / get_class_imbalance / get_corrupt_frac)
PAPER_TRAIN_SIZES = [int(n) for n in np.unique(np.round(np.logspace(1, 10, num=20, base=2)).astype(int))]
PAPER_FRACS = [round(float(f), 4) for f in np.linspace(0.05, 0.95, 19)]
PAPER_NOISE = [round(float(f), 4) for f in np.linspace(0, 0.5, 11)]
_TITLES = {
    "normal": "normal",
    "scarcity": "scarce data",
    "imbalance": "class imbalance",
    "label_noise": "label noise",
    "covariate_shift": "covariate shift",
}


class SaeProbesConfig(EvalConfig):
    """Settings of ``--evals sae_probes``; profiles set the datasets and sizes (see docs/sae_probes.md)."""

    datasets: list[str] | None = None  # tags or globs (5_hist_fig_ismale, hist_fig_*); None = all 113
    n_train: int = 96  # normal / label-noise / covariate-shift training size (paper: min(size - 100, 1024))
    n_test: int = 64  # balanced in-distribution test set (paper: the rest of the dataset)
    scarcity_sizes: list[int] = [4, 16, 64]
    imbalance_fracs: list[float] = [0.1, 0.9]
    n_imbalance: int = 48  # training size of the imbalance regime
    noise_fracs: list[float] = [0.1, 0.3]
    ood_max: int = 100  # OOD test texts per dataset (the files hold ~300)
    ks: list[int] = [1, 16]  # k of the SAE probes in the normal regime
    regime_ks: list[int] = [16]  # k in the other regimes (paper: 16 and 128)
    headline_k: int = HEADLINE_K
    max_tokens: int = 32  # per text, incl. BOS; longer texts keep their end (the last token is probed)
    pooling: Literal["last", "mean"] = "last"  # the paper probes the last token; mean: over the text's tokens
    probe_cs: list[float] = list(DEFAULT_CS)
    max_iter: int = 100  # Newton iterations per fit
    encode_chunk: int = 1024

    @field_validator("datasets", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        return [p.strip() for p in v.split(",") if p.strip()] if isinstance(v, str) else v

    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": {"datasets": ["5_hist_fig_ismale", "6_hist_fig_isamerican", "7_hist_fig_ispolitician",
                               "66_living-room", "67_social-security", "73_control-group", "87_glue_cola",
                               "90_glue_qnli"]},
        "standard": {"n_train": 256, "n_test": 256, "scarcity_sizes": [2, 4, 8, 16, 32, 64, 128, 256],
                     "imbalance_fracs": [0.05, 0.1, 0.2, 0.8, 0.9, 0.95], "n_imbalance": 256,
                     "noise_fracs": [0.1, 0.2, 0.3, 0.4], "ood_max": 300, "ks": [1, 2, 4, 8, 16, 32, 64, 128],
                     "regime_ks": [16, 128], "max_tokens": 128},
        "paper": {"n_train": 1024, "n_test": 1024, "scarcity_sizes": PAPER_TRAIN_SIZES,
                  "imbalance_fracs": PAPER_FRACS, "n_imbalance": 1024, "noise_fracs": PAPER_NOISE, "ood_max": 300,
                  "ks": [1, 2, 4, 8, 16, 32, 64, 128, 256, 512], "regime_ks": [16, 128], "max_tokens": 1024},
    }  # fmt: skip


def _declare() -> tuple[Metric, ...]:
    out = []
    for r in REGIMES:
        head = r != "normal"
        out.append(
            Metric(
                f"auc_gap_{r}",
                f"{_TITLES[r]}: test AUC of the k-sparse SAE probe (k = headline_k, {HEADLINE_K} by default) minus "
                "the residual probe's; mean over datasets of each dataset's mean over the regime's points",
                "up",
                head,
                "AUC",
                f"AUC gap {_TITLES[r]}" if head else "",
                0.01,
                mean_of("dataset", f"gap_{r}"),
            )
        )
        out.append(
            Metric(
                f"sae_auc_{r}",
                f"{_TITLES[r]}: test AUC of the k-sparse SAE probe (k = headline_k), mean over datasets",
                "up",
                False,
                "AUC",
                "",
                0.01,
                mean_of("dataset", f"sae_{r}"),
            )
        )
        out.append(
            Metric(
                f"baseline_auc_{r}",
                f"{_TITLES[r]}: test AUC of the residual-stream probe (mean over datasets)",
                "",
                False,
                "AUC",
                "",
                0.0,
                mean_of("dataset", f"base_{r}"),
            )
        )
    out += [
        Metric(
            "sae_auc_normal_k1",
            "normal: test AUC of the 1-sparse SAE probe (the single best latent), mean over datasets",
            "up",
            False,
            "AUC",
            "",
            0.01,
            mean_of("dataset", "sae_normal_k1"),
        ),
        Metric("n_datasets_scored", "datasets scored"),
        Metric("n_datasets_skipped", "datasets whose data is unavailable"),
        Metric("d_sae", "latents of the SAE"),
    ]
    return tuple(out)


METRICS = _declare()


@dataclass
class PreparedDataset:
    sample: Any  # saebench.tasks.sae_probes.Sample
    x: torch.Tensor  # [n_texts, d_in] pooled hook activations (last token, or mean over tokens)
    baseline: list[dict[str, Any]]  # per setting: AUC, accuracy, C
    content: str
    tokens: Any = None  # TaskActs (every token) when pooling is "mean"


@dataclass
class Prepared:
    datasets: dict[str, PreparedDataset]
    skipped: dict[str, str]
    notes: list[str]
    forward_batches: int
    timing: dict[str, float]


def _check(cfg: SaeProbesConfig) -> None:
    problems = []
    if cfg.n_train < 4 or cfg.n_test < 4 or cfg.max_tokens < 2:
        problems.append("n_train and n_test >= 4, max_tokens >= 2")
    if any(n < 2 for n in cfg.scarcity_sizes) or cfg.n_imbalance < 2:
        problems.append("scarcity_sizes and n_imbalance >= 2")
    if any(not 0 < f < 1 for f in cfg.imbalance_fracs) or any(not 0 <= f <= 0.5 for f in cfg.noise_fracs):
        problems.append("imbalance_fracs in (0, 1), noise_fracs in [0, 0.5]")
    if not cfg.ks or min(cfg.ks + cfg.regime_ks) < 1:
        problems.append("ks and regime_ks >= 1")
    if cfg.headline_k not in cfg.ks or cfg.headline_k not in cfg.regime_ks:
        problems.append(f"headline_k ({cfg.headline_k}) in ks and regime_ks")
    if not cfg.probe_cs or min(cfg.probe_cs) <= 0:
        problems.append("probe_cs > 0")
    if problems:
        raise SaebenchError(f"sae_probes: need {'; '.join(problems)}; fix the --set values")


def prepare_datasets(pipe: ActivationPipeline, cfg: SaeProbesConfig, seed: int) -> Prepared:
    """Sample every dataset, its last-token activations and residual baselines, once per pipeline."""
    key = "sae_probes:" + json.dumps([cfg.model_dump(), seed], sort_keys=True, default=str)
    return pipe.shared(key, lambda: _prepare(pipe, cfg, seed))


def _prepare(pipe: ActivationPipeline, cfg: SaeProbesConfig, seed: int) -> Prepared:
    from saebench.pipeline.last_tokens import last_token_activations
    from saebench.pipeline.tasks import task_activations
    from saebench.probes.sparse_probing import pool
    from saebench.tasks import TaskUnavailable
    from saebench.tasks.sae_probes import binary_datasets, sample, select

    _check(cfg)
    t0 = time.perf_counter()
    tags = select(cfg.datasets, binary_datasets())
    samples, skipped, notes = {}, {}, []
    for tag in tags:
        try:
            samples[tag] = sample(
                tag,
                cfg.n_train,
                cfg.n_test,
                cfg.scarcity_sizes,
                cfg.imbalance_fracs,
                cfg.n_imbalance,
                cfg.noise_fracs,
                cfg.ood_max,
                seed,
            )
        except TaskUnavailable as exc:
            skipped[tag] = str(exc)
            notes.append(f"sae_probes: skipped {tag}: {exc}")
    for s in samples.values():
        notes.extend(s.notes)
    t_data = time.perf_counter() - t0
    before = pipe.counters.task_forward_batches
    t0 = time.perf_counter()
    texts = {f"sae_probes-{t}": s.texts for t, s in samples.items()}
    if cfg.pooling == "last":
        acts, tokens = last_token_activations(pipe, texts, cfg.max_tokens), {}
    else:
        tokens = task_activations(pipe, texts, cfg.max_tokens)
        acts = {k: pool(ta.acts, ta.lengths, "mean") for k, ta in tokens.items()}
    t_acts = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = {}
    for tag, s in samples.items():
        x = acts[f"sae_probes-{tag}"].float()
        base = _baselines(pipe, s, x, cfg, seed)
        out[tag] = PreparedDataset(s, x, base, s.content_hash(), tokens.get(f"sae_probes-{tag}"))
    timing = {"sae_probes_data_s": t_data, "sae_probes_activations_s": t_acts, "baselines_s": time.perf_counter() - t0}
    return Prepared(out, skipped, notes, pipe.counters.task_forward_batches - before, timing)


_BASE_COLS = ("auc", "accuracy", "C", "val_auc")


def _baselines(pipe: ActivationPipeline, s: Any, x: torch.Tensor, cfg: SaeProbesConfig, seed: int) -> list[dict]:
    """Residual-probe results per setting of one dataset sample, cached on disk (they depend on the
    model, hook, texts, settings, C grid and seed, never on the SAE)."""
    from saebench.probes.ksparse import fit_cv

    def compute() -> dict[str, torch.Tensor]:
        rows = []
        for st in s.settings:
            f = fit_cv(x[st.train], torch.tensor(st.y_train), x[st.test], torch.tensor(st.y_test),
                       tuple(cfg.probe_cs), seed, cfg.max_iter)  # fmt: skip
            rows.append([f.test_auc, f.test_accuracy, f.c, f.val_auc])
        vals = torch.tensor([[float("nan") if v is None else float(v) for v in r] for r in rows], dtype=torch.float64)
        return {c: vals[:, j].contiguous() for j, c in enumerate(_BASE_COLS)}

    parts = json.dumps([s.content_hash(), cfg.max_tokens, cfg.pooling, list(cfg.probe_cs), cfg.max_iter, seed])
    key = pipe.cache_key("sae_probes_baseline", parts)
    found, _ = pipe.cached_tensors(
        "sae_probes_baseline", key, compute, valid=lambda t: t["auc"].numel() == len(s.settings), label=s.tag
    )
    return [
        {c: (None if math.isnan(float(found[c][i])) else float(found[c][i])) for c in _BASE_COLS}
        for i in range(len(s.settings))
    ]


def score_dataset(pd_: PreparedDataset, z: torch.Tensor, cfg: SaeProbesConfig, seed: int) -> list[dict[str, Any]]:
    """Per setting: the residual baseline and the k-sparse SAE probes on latents ``z [n_texts, d_sae]``."""
    from saebench.probes.ksparse import fit_cv, rank_latents

    rows = []
    for st, base in zip(pd_.sample.settings, pd_.baseline, strict=True):
        ytr, yte = torch.tensor(st.y_train), torch.tensor(st.y_test)
        ztr, zte = z[st.train], z[st.test]
        order = rank_latents(ztr, ytr)
        ks = cfg.ks if st.regime == "normal" else cfg.regime_ks
        sae: dict[str, Any] = {}
        for k in ks:
            top = order[: min(k, z.shape[1])]
            f = fit_cv(ztr[:, top], ytr, zte[:, top], yte, tuple(cfg.probe_cs), seed, cfg.max_iter)
            sae[str(k)] = {
                "auc": f.test_auc,
                "accuracy": f.test_accuracy,
                "C": f.c,
                "latents": [int(i) for i in top[:8]],
            }
        rows.append(
            {
                "regime": st.regime,
                "point": st.point,
                "n_train": len(st.train),
                "n_test": len(st.test),
                "baseline": base,
                "sae": sae,
            }
        )
    return rows


def dataset_columns(rows: list[dict[str, Any]], k: int) -> dict[str, float | None]:
    """One dataset's sample columns: per regime the mean over its points of the k-sparse SAE AUC,
    the baseline AUC and their difference (None where the regime has no scored point)."""
    out: dict[str, float | None] = {}
    for r in REGIMES:
        pts = [row for row in rows if row["regime"] == r]
        sae = [row["sae"].get(str(k), {}).get("auc") for row in pts]
        base = [row["baseline"]["auc"] for row in pts]
        pairs = [(s, b) for s, b in zip(sae, base, strict=True) if s is not None and b is not None]
        out[f"sae_{r}"] = mean_defined(s for s, _ in pairs)
        out[f"base_{r}"] = mean_defined(b for _, b in pairs)
        out[f"gap_{r}"] = mean_defined(s - b for s, b in pairs)
    out["sae_normal_k1"] = mean_defined(row["sae"].get("1", {}).get("auc") for row in rows if row["regime"] == "normal")
    return out


class SaeProbesEvaluator:
    """``--evals sae_probes``: Kantamneni et al.'s sparse-probing regimes (see module doc)."""

    name = "sae_probes"
    needs: frozenset[str] = frozenset()
    Config = SaeProbesConfig
    metrics = METRICS

    def preflight(self, cfg: EvalConfig) -> None:
        assert isinstance(cfg, SaeProbesConfig)
        _check(cfg)

    def prepare(self, pipe: ActivationPipeline, cfg: EvalConfig, seed: int) -> None:
        """Samples, last-token activations and residual baselines, once for every SAE at this hook."""
        assert isinstance(cfg, SaeProbesConfig)
        prepare_datasets(pipe, cfg, seed)

    def run(self, ctx: EvalContext, cfg: EvalConfig) -> EvalOutput:
        assert isinstance(cfg, SaeProbesConfig)
        from saebench.probes.sparse_probing import encoder, pool

        prep = prepare_datasets(ctx.pipeline, cfg, ctx.seed)
        ctx.notes.extend(prep.notes)
        enc = encoder(ctx.sae, ctx.sae_name)
        t_enc = t_fit = 0.0
        details_rows, ids, columns = [], [], {}
        for tag, pd_ in prep.datasets.items():
            t0 = time.perf_counter()
            if pd_.tokens is not None:  # mean pooling: every token encoded, latents averaged per text
                z = pool(pd_.tokens.acts, pd_.tokens.lengths, "mean", enc, cfg.encode_chunk, ctx.model.device)
            else:
                z = torch.cat(
                    [enc(pd_.x[s : s + cfg.encode_chunk].to(ctx.model.device)).float().cpu()
                     for s in range(0, pd_.x.shape[0], cfg.encode_chunk)]
                )  # fmt: skip
            t_enc += time.perf_counter() - t0
            t0 = time.perf_counter()
            rows = score_dataset(pd_, z, cfg, ctx.seed)
            t_fit += time.perf_counter() - t0
            cols = dataset_columns(rows, cfg.headline_k)
            ids.append(f"{tag}@{pd_.content}")
            for k, v in cols.items():
                columns.setdefault(k, []).append(v)
            details_rows.append({"dataset": tag, "label_values": pd_.sample.label_values, "settings": rows, **cols})
        if not ids:
            ctx.notes.append("sae_probes: no dataset could be scored; see 'skipped' for the reasons")
        metrics: dict[str, Any] = {
            "n_datasets_scored": len(ids),
            "n_datasets_skipped": len(prep.skipped),
            "d_sae": int(ctx.sae.d_sae),
        }
        details = {
            "datasets": details_rows,
            "skipped": prep.skipped,
            "headline_k": cfg.headline_k,
            "pooling": ("last token" if cfg.pooling == "last" else "mean over tokens (BOS excluded)")
            + " (texts left-truncated to max_tokens, BOS prepended)",
            "max_tokens": cfg.max_tokens,
            "model_forward_batches": prep.forward_batches,
        }
        samples = {"dataset": Samples("dataset", ids, columns)} if ids else {}
        timing = {**prep.timing, "sae_encode_s": t_enc, "sae_probe_fit_s": t_fit}
        return EvalOutput(metrics, details, samples=samples, timing=timing)
