"""``--evals scr``: spurious-correlation removal (SAEBench; Marks et al. 2024's SHIFT).

For each attribute pair (``saebench.tasks.scr_tpp``: review domain x sentiment and historical
figures' occupation x gender offline; Bias in Bios and Amazon reviews from the hub) three linear
probes read the mean-pooled hook activation: an *intended*-attribute probe, a *spurious*-attribute
probe and a *biased* probe trained on data where the two attributes coincide. The SAE's latents
with the largest node effect on one single-attribute probe are zero-ablated (the SAE's error term
kept) and the biased probe is re-scored on the other attribute's data; ``scr_dir1`` / ``scr_dir2``
are the fraction of the biased probe's accuracy gap to the clean single-attribute probe that the
ablation closes, and ``scr_metric`` is the direction that removes what the biased probe learned
(SAEBench's ``get_scr_plotting_dict``; formulas in :mod:`saebench.probes.scr_tpp`).

Reported under SAEBench's names (``scr_metric_threshold_N``, ``scr_dir1_threshold_N``,
``scr_dir2_threshold_N`` for N ablated latents), each the mean over attribute pairs as in
SAEBench; intervals bootstrap over pairs (unit ``class_pair``, id ``pair@hash-of-its-sample``).
The probes, the texts and their activations are SAE-independent: computed once per hook
(``prepare``) and shared by every SAE; an SAE costs one encode of the examples' tokens.
``docs/scr_tpp.md`` lists the data and every deliberate difference from SAEBench.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import field_validator

from saebench.errors import SaebenchError
from saebench.evaluators.base import EvalConfig, EvalContext, EvalOutput, Metric, mean_defined
from saebench.pipeline import ActivationPipeline
from saebench.probes.ksparse import DEFAULT_CS
from saebench.stats import Samples, mean_of

N_VALUES = (2, 5, 10, 20, 50, 100, 500)  # SAEBench's n_values
HEADLINE_N = 20
PROBE_KEYS = ("spurious", "intended", "biased")


class ScrConfig(EvalConfig):
    """Settings of ``--evals scr``; profiles set the pairs and sizes."""

    pairs: list[str] | None = None  # names or globs; None = every offline pair (the hub pairs with use_hub)
    n_train: int = 32  # texts per quadrant (attribute combination) for probe training / node effects
    n_test: int = 24  # texts per quadrant for the accuracies
    max_tokens: int = 64  # per example, incl. BOS; longer texts keep their end
    n_values: list[int] = list(N_VALUES)  # numbers of latents ablated
    ablation: Literal["auto", "exact"] = "auto"  # auto: linear shortcut where the decoder is affine
    probe_cs: list[float] = list(DEFAULT_CS)  # inverse L2 strengths tried by CV (sae-probes' grid)
    token_chunk: int = 1024
    use_hub: bool = False  # SAEBench's hub datasets (network)
    hub_paths: dict[str, str] = {}  # hub dataset -> local folder for datasets.load_dataset

    @field_validator("pairs", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        return [p.strip() for p in v.split(",") if p.strip()] if isinstance(v, str) else v

    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": {"pairs": ["hist_fig_politician_gender", "reviews_yelp_movie"], "n_train": 32, "n_test": 24},
        "standard": {"n_train": 250, "n_test": 100, "max_tokens": 128},
        "paper": {"n_train": 1000, "n_test": 250, "max_tokens": 128},
    }


def _declare() -> tuple[Metric, ...]:
    out = []
    for n in N_VALUES:
        head = n == HEADLINE_N
        out.append(
            Metric(
                f"scr_metric_threshold_{n}",
                f"SCR (SAEBench): share of the biased probe's accuracy gap closed by ablating {n} latents, in the "
                "direction that removes the attribute it learned; mean over attribute pairs",
                "up",
                head,
                "",
                f"SCR top-{n}" if head else "",
                0.02,
                mean_of("class_pair", f"scr_metric_threshold_{n}"),
            )
        )
        for k, what in (("dir1", "spurious"), ("dir2", "intended")):
            out.append(
                Metric(
                    f"scr_{k}_threshold_{n}",
                    f"SCR {k}: ablate the {what} probe's top {n} latents, re-score the biased probe on the other data",
                    "up",
                    False,
                    "",
                    "",
                    0.02,
                    mean_of("class_pair", f"scr_{k}_threshold_{n}"),
                )
            )
    out += [
        Metric("n_pairs_scored", "attribute pairs scored"),
        Metric("n_pairs_skipped", "attribute pairs whose data is unavailable"),
        Metric("d_sae", "latents of the SAE"),
    ]
    return tuple(out)


METRICS = _declare()


@dataclass
class PreparedPair:
    """One pair's SAE-independent inputs: sampled texts, activations, pooled residuals, probes."""

    data: Any  # saebench.tasks.scr_tpp.ScrData
    acts: Any  # TaskActs
    xbar: torch.Tensor  # [n_texts, d_in] mean-pooled hook activations
    probes: dict[str, Any]  # key -> LinearProbe
    clean: dict[str, float]  # SAEBench's llm_clean_accs, in our keys
    sample_id: str


@dataclass
class Prepared:
    pairs: dict[str, PreparedPair]
    skipped: dict[str, str]
    notes: list[str]
    forward_batches: int
    timing: dict[str, float]


def prepare_pairs(pipe: ActivationPipeline, cfg: ScrConfig, seed: int) -> Prepared:
    """Sample every pair, compute its activations and probes once per pipeline (memoised)."""
    key = "scr:" + json.dumps([cfg.model_dump(), seed], sort_keys=True, default=str)
    return pipe.shared(key, lambda: _prepare(pipe, cfg, seed))


def _check(cfg: ScrConfig) -> None:
    if cfg.n_train < 2 or cfg.n_test < 1 or cfg.max_tokens < 2 or not cfg.n_values or min(cfg.n_values) < 1:
        raise SaebenchError("scr: n_train >= 2, n_test >= 1, max_tokens >= 2 and n_values >= 1 are required; fix --set")
    if not cfg.probe_cs or min(cfg.probe_cs) <= 0:
        raise SaebenchError("scr: probe_cs must be positive inverse L2 strengths; fix --set scr.probe_cs")


def _prepare(pipe: ActivationPipeline, cfg: ScrConfig, seed: int) -> Prepared:
    from saebench.pipeline.tasks import task_activations
    from saebench.tasks import TaskUnavailable
    from saebench.tasks.scr_tpp import OFFLINE_SCR, SCR_PAIRS, load_scr, select_names

    _check(cfg)
    t0 = time.perf_counter()
    default = [n for n, p in SCR_PAIRS.items() if p.hub] if cfg.use_hub else OFFLINE_SCR
    names = select_names(SCR_PAIRS, cfg.pairs, default)
    loaded, skipped, notes = {}, {}, []
    for name in names:
        try:
            loaded[name] = load_scr(SCR_PAIRS[name], cfg.n_train, cfg.n_test, seed, cfg.use_hub, cfg.hub_paths)
        except TaskUnavailable as exc:
            skipped[name] = str(exc)
            notes.append(f"scr: skipped {name}: {exc}")
    for d in loaded.values():
        notes.extend(d.notes)
    t_data = time.perf_counter() - t0
    before = pipe.counters.task_forward_batches
    t0 = time.perf_counter()
    acts = task_activations(pipe, {f"scr-{n}": d.texts for n, d in loaded.items()}, cfg.max_tokens)
    t_acts = time.perf_counter() - t0
    t0 = time.perf_counter()
    pairs = {name: prepare_pair(d, acts[f"scr-{name}"], seed, cfg) for name, d in loaded.items()}
    timing = {"scr_data_s": t_data, "scr_activations_s": t_acts, "scr_probes_s": time.perf_counter() - t0}
    return Prepared(pairs, skipped, notes, pipe.counters.task_forward_batches - before, timing)


def prepare_pair(d: Any, ta: Any, seed: int, cfg: ScrConfig) -> PreparedPair:
    """Probes and clean accuracies of one sampled pair (``ScrData``) on its activations (``TaskActs``)."""
    from saebench.probes.scr_tpp import accuracy, fit_probe
    from saebench.probes.sparse_probing import pool

    xbar = pool(ta.acts, ta.lengths, "mean")
    probes = {}
    for k in PROBE_KEYS:
        pos, neg = d.sets["train"][k]
        y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))])
        probes[k] = fit_probe(xbar[pos + neg], y, seed, tuple(cfg.probe_cs))

    def acc(probe: str, data: str) -> float:
        pos, neg = d.sets["test"][data]
        y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))])
        return accuracy(probes[probe].logits(xbar[pos + neg]), y)

    clean = {f"{p}_on_{q}": acc(p, q) for p in PROBE_KEYS for q in PROBE_KEYS}
    return PreparedPair(d, ta, xbar, probes, clean, f"{d.pair.name}@{d.content_hash()}")


def score_pair(pp: PreparedPair, ctx: EvalContext, cfg: ScrConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """SCR scores of one SAE on one prepared pair, and the pair's detail row."""
    from saebench.probes.scr_tpp import SaeAblation, accuracy, scr_scores, top_n_mask
    from saebench.probes.sparse_probing import encoder

    enc = encoder(ctx.sae, ctx.sae_name)
    w = torch.stack([pp.probes[k].w for k in PROBE_KEYS], 1)
    b = torch.tensor([pp.probes[k].b for k in PROBE_KEYS], dtype=torch.float64)
    abl = SaeAblation(
        ctx.sae, enc, pp.acts.acts, pp.acts.lengths, pp.xbar, w, b, cfg.ablation, cfg.token_chunk, ctx.model.device
    )
    d_sae = abl.zbar.shape[1]
    ns = [n for n in cfg.n_values if n <= d_sae]
    biased = PROBE_KEYS.index("biased")
    ablated: dict[str, dict[int, float]] = {}
    chosen: dict[str, list[int]] = {}
    # dir1: the spurious probe's latents, biased probe on intended data; dir2: the converse
    for direction, ablate, data in (("dir1", "spurious", "intended"), ("dir2", "intended", "spurious")):
        pos, neg = pp.data.sets["train"][ablate]
        eff = abl.effects(pos, neg, PROBE_KEYS.index(ablate), scr=True)
        masks = torch.stack([top_n_mask(eff, n) for n in ns]) if ns else torch.zeros(0, d_sae, dtype=torch.bool)
        tpos, tneg = pp.data.sets["test"][data]
        y = torch.cat([torch.ones(len(tpos)), torch.zeros(len(tneg))])
        logits = abl.ablated_logits(tpos + tneg, masks)[:, :, biased] if ns else torch.zeros(0)
        ablated[direction] = {n: accuracy(logits[j], y) for j, n in enumerate(ns)}
        top = torch.argsort(eff, descending=True, stable=True)[: min(HEADLINE_N, int((eff != 0).sum()))]
        chosen[direction] = [int(i) for i in top]
    c = pp.clean
    scores = scr_scores(
        {
            "intended": c["intended_on_intended"],
            "spurious": c["spurious_on_spurious"],
            "biased_on_intended": c["biased_on_intended"],
            "biased_on_spurious": c["biased_on_spurious"],
        },
        ablated,
    )
    d1, d2 = c["biased_on_intended"], c["biased_on_spurious"]
    row = {
        "pair": pp.data.pair.name,
        "description": pp.data.pair.description,
        "origin": pp.data.origin,
        "n_train_per_quadrant": pp.data.n_train,
        "n_test_per_quadrant": pp.data.n_test,
        "clean_accuracy": dict(c),
        "probe_C": {k: pp.probes[k].c for k in PROBE_KEYS},
        "scr_metric_direction": "dir1" if d1 < d2 else "dir2" if d1 > d2 else None,
        "ablated_biased_accuracy": {k: {str(n): v for n, v in a.items()} for k, a in ablated.items()},
        f"top_{HEADLINE_N}_latents": chosen,
        "ablation_path": abl.path,
        "ablation_path_reason": abl.reason,
        "effects_direction_from": abl.dots_from,
        **scores,
    }
    return scores, row


class ScrEvaluator:
    """``--evals scr``: SAEBench's spurious-correlation removal (see module doc)."""

    name = "scr"
    needs: frozenset[str] = frozenset()
    Config = ScrConfig
    metrics = METRICS

    def preflight(self, cfg: EvalConfig) -> None:
        assert isinstance(cfg, ScrConfig)
        _check(cfg)

    def prepare(self, pipe: ActivationPipeline, cfg: EvalConfig, seed: int) -> None:
        """Sample the pairs, compute activations and probes once for every SAE at this hook."""
        assert isinstance(cfg, ScrConfig)
        prepare_pairs(pipe, cfg, seed)

    def run(self, ctx: EvalContext, cfg: EvalConfig) -> EvalOutput:
        assert isinstance(cfg, ScrConfig)
        prep = prepare_pairs(ctx.pipeline, cfg, ctx.seed)
        ctx.notes.extend(prep.notes)
        t0 = time.perf_counter()
        rows, ids, columns = [], [], {}
        for pp in prep.pairs.values():
            scores, row = score_pair(pp, ctx, cfg)
            rows.append(row)
            ids.append(pp.sample_id)
            for k, v in scores.items():
                columns.setdefault(k, []).append(v)
        too_big = [n for n in cfg.n_values if n > int(ctx.sae.d_sae)]
        if too_big:
            ctx.notes.append(f"scr: n_values {too_big} exceed the SAE's {int(ctx.sae.d_sae)} latents; left undefined")
        if not rows:
            ctx.notes.append("scr: no attribute pair could be scored; see 'skipped' for the reasons")
        declared = {m.name for m in METRICS}
        metrics: dict[str, Any] = {k: mean_defined(v) for k, v in columns.items() if k not in declared}
        metrics.update({"n_pairs_scored": len(rows), "n_pairs_skipped": len(prep.skipped), "d_sae": int(ctx.sae.d_sae)})
        paths = sorted({r["ablation_path"] for r in rows})
        details = {
            "pairs": rows,
            "skipped": prep.skipped,
            "n_values": list(cfg.n_values),
            "pooling": "mean over each example's tokens (BOS excluded), texts left-truncated to max_tokens",
            "max_tokens": cfg.max_tokens,
            "ablation_path": paths,
            "model_forward_batches": prep.forward_batches,
        }
        samples = {"class_pair": Samples("class_pair", ids, columns)} if rows else {}
        timing = {**prep.timing, "scr_sae_s": time.perf_counter() - t0}
        return EvalOutput(metrics, details, samples=samples, timing=timing)
