"""``--evals scr``: spurious-correlation removal (SAEBench; Marks et al. 2024's SHIFT).

For each attribute pair three linear probes read the mean-pooled hook activation: an
*intended*-attribute probe, a *spurious*-attribute probe and a *biased* probe trained on data where
the two attributes coincide. The SAE's latents with the largest node effect on one single-attribute
probe are zero-ablated (the SAE's error term kept) and the biased probe is re-scored on the other
attribute's data; dir1 / dir2 are the fraction of the biased probe's accuracy gap to the clean
single-attribute probe that the ablation closes, and the SCR metric is the direction that removes
what the biased probe learned (SAEBench's ``get_scr_plotting_dict``; formulas in
:mod:`saebench.probes.scr_tpp`).

Two modes (``--set scr.mode=...``), one shared ablation algorithm:

- ``variant`` (default): our pairs (offline stand-ins, or SAEBench's data with ``data=saebench``),
  our probes (L2, C by cross-validation), the last ``max_tokens - 1`` tokens; metrics under our
  names ``scr_top_N``, ``scr_dir1_top_N``, ``scr_dir2_top_N`` (unit ``class_pair``);
- ``saebench``: SAEBench 0.6.0's procedure end to end on its datasets
  (:mod:`saebench.evaluators.scr_tpp_saebench`). Only with SAEBench's data *and* every SAEBench
  setting at its default (seed and batch sizes aside) does the result carry SAEBench's names
  ``scr_metric_threshold_N``, ``scr_dir1_threshold_N``, ``scr_dir2_threshold_N`` (unit
  ``scr_run``: one per dataset and class pair); otherwise the same numbers carry our names.

``details.naming`` says which names a result carries and why; ``details.resolution`` how much one
test text moves the headline. ``docs/scr_tpp.md`` and ``docs/saebench_mode.md`` list the data and
every difference.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import field_validator

from saebench.errors import SaebenchError
from saebench.evaluators.base import EvalConfig, EvalContext, EvalOutput, Metric
from saebench.evaluators.scr_tpp_saebench import SaebenchFields
from saebench.pipeline import ActivationPipeline
from saebench.probes.ksparse import DEFAULT_CS
from saebench.stats import Samples, mean_of

N_VALUES = (2, 5, 10, 20, 50, 100, 500)  # SAEBench's n_values
HEADLINE_N = 20
PROBE_KEYS = ("spurious", "intended", "biased")
SB_UNIT, VARIANT_UNIT = "scr_run", "class_pair"
MIN_EFFECT = 0.02


def variant_name(key: str) -> str:
    """Our name of a SAEBench-named SCR quantity: ``scr_metric_threshold_N`` -> ``scr_top_N``,
    ``scr_dir1_threshold_N`` -> ``scr_dir1_top_N``."""
    return key.replace("_metric_threshold_", "_top_").replace("_threshold_", "_top_")


class ScrConfig(SaebenchFields):
    """Settings of ``--evals scr``: the variant's (profiles set its pairs and sizes) and, inherited,
    the mode, the data and SAEBench's own settings for ``mode=saebench``."""

    pairs: list[str] | None = None  # variant: names or globs; None = every offline pair (hub pairs with data=saebench)
    n_train: int = 32  # variant: texts per quadrant (attribute combination) for probe training / node effects
    n_test: int = 24  # variant: texts per quadrant for the accuracies
    max_tokens: int = 64  # variant: per example, incl. BOS; longer texts keep their end
    n_values: list[int] = list(N_VALUES)  # numbers of latents ablated
    ablation: Literal["auto", "exact"] = "auto"  # auto: linear shortcut where the decoder is affine
    probe_cs: list[float] = list(DEFAULT_CS)  # variant: inverse L2 strengths tried by CV (sae-probes' grid)
    token_chunk: int = 1024
    column1_vals_lookup: dict[str, list[tuple[str, str]]] | None = None  # saebench: None = SAEBench's pairs

    @field_validator("pairs", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        return [p.strip() for p in v.split(",") if p.strip()] if isinstance(v, str) else v

    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": {"n_train": 32, "n_test": 48},  # the three review pairs: one text moves < 0.02 (docs/scr_tpp.md)
        "standard": {"n_train": 250, "n_test": 100, "max_tokens": 128},
        "paper": {"n_train": 1000, "n_test": 250, "max_tokens": 128},
    }


def _declare() -> tuple[Metric, ...]:
    out = []
    for n in N_VALUES:
        head = n == HEADLINE_N
        for sb in (False, True):  # ours first: the board's summary shows an evaluator's first headline
            unit = SB_UNIT if sb else VARIANT_UNIT
            where = (
                "SAEBench's procedure and data, mean over its runs (dataset x class pair)"
                if sb
                else ("our probes and data (variant), mean over attribute pairs")
            )
            name = f"scr_metric_threshold_{n}" if sb else f"scr_top_{n}"
            title = (f"SCR top-{n} (SAEBench)" if sb else f"SCR top-{n}") if head else ""
            out.append(
                Metric(
                    name,
                    f"SCR: share of the biased probe's accuracy gap closed by ablating {n} latents, in the direction "
                    f"that removes the attribute it learned; {where}",
                    "up",
                    head,
                    "",
                    title,
                    MIN_EFFECT,
                    mean_of(unit, f"scr_metric_threshold_{n}" if sb else name),
                )
            )
            for k, what in (("dir1", "spurious"), ("dir2", "intended")):
                key = f"scr_{k}_threshold_{n}"
                out.append(
                    Metric(
                        key if sb else variant_name(key),
                        f"SCR {k}: ablate the {what} probe's top {n} latents, re-score the biased probe on the other "
                        f"data; {where}",
                        "up",
                        False,
                        "",
                        "",
                        MIN_EFFECT,
                        mean_of(unit, key if sb else variant_name(key)),
                    )
                )
    out += [
        Metric("n_pairs_scored", "attribute pairs (SAEBench: dataset x class pair runs) scored"),
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
    from saebench.evaluators.scr_tpp_saebench import check_mode

    if cfg.n_train < 2 or cfg.n_test < 1 or cfg.max_tokens < 2 or not cfg.n_values or min(cfg.n_values) < 1:
        raise SaebenchError("scr: n_train >= 2, n_test >= 1, max_tokens >= 2 and n_values >= 1 are required; fix --set")
    if not cfg.probe_cs or min(cfg.probe_cs) <= 0:
        raise SaebenchError("scr: probe_cs must be positive inverse L2 strengths; fix --set scr.probe_cs")
    check_mode(cfg, "scr")


def _prepare(pipe: ActivationPipeline, cfg: ScrConfig, seed: int) -> Prepared:
    from saebench.pipeline.tasks import task_activations
    from saebench.tasks import TaskUnavailable
    from saebench.tasks.scr_tpp import OFFLINE_SCR, SCR_PAIRS, load_scr, select_names

    _check(cfg)
    t0 = time.perf_counter()
    default = [n for n, p in SCR_PAIRS.items() if p.hub] if cfg.data == "saebench" else OFFLINE_SCR
    names = select_names(SCR_PAIRS, cfg.pairs, default)
    loaded, skipped, notes = {}, {}, []
    for name in names:
        try:
            loaded[name] = load_scr(SCR_PAIRS[name], cfg.n_train, cfg.n_test, seed, cfg.data == "saebench",
                                    cfg.data_dir, cfg.use_hub)  # fmt: skip
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
        "n_texts_scored": {
            "intended": len(sum(pp.data.sets["test"]["intended"], [])),
            "spurious": len(sum(pp.data.sets["test"]["spurious"], [])),
        },  # fmt: skip
        **{variant_name(k): v for k, v in scores.items()},
    }
    return {variant_name(k): v for k, v in scores.items()}, row


def _headline_steps(rows: list[dict[str, Any]], n_units: int) -> list[float | None]:
    """Per scored unit, how much one test text moves the headline (mean over ``n_units``)."""
    from saebench.evaluators.scr_tpp_saebench import text_step

    steps = []
    for r in rows:
        c, direction = r["clean_accuracy"], r["scr_metric_direction"]
        if direction is None:
            steps.append(None)
            continue
        data = "intended" if direction == "dir1" else "spurious"
        gap = c[f"{data}_on_{data}"] - c[f"biased_on_{data}"]
        steps.append(text_step(r["n_texts_scored"][data], gap, n_units))
    return steps


def _run_saebench(ctx: EvalContext, cfg: ScrConfig) -> EvalOutput:
    """``mode=saebench``: SAEBench's procedure end to end (:mod:`saebench.evaluators.scr_tpp_saebench`)."""
    from saebench.evaluators import scr_tpp_saebench as sb_mode
    from saebench.tasks.saebench_data import SCR_PAIRS

    proc = sb_mode.procedure(cfg, ctx.seed, True)
    prep = sb_mode.prepare(ctx.pipeline, proc)
    lookup = cfg.column1_vals_lookup
    own = [] if lookup is None or proc.column1_vals_lookup == SCR_PAIRS else [f"column1_vals_lookup={lookup!r}"]
    names = sb_mode.naming(cfg, own)
    sb = names["names"] == "saebench"
    t0 = time.perf_counter()
    keys = [f"scr_{k}_threshold_{n}" for n in cfg.n_values for k in ("dir1", "dir2", "metric")]
    out_name = {k: k if sb else variant_name(k) for k in keys}
    ids, rows, columns = [], [], {out_name[k]: [] for k in keys}
    steps: list[float | None] = []
    for run in prep.runs:
        out = sb_mode.score_run(run, ctx.sae, ctx.sae_name, proc, ctx.model.device, cfg.ablation)
        scores = sb_mode.scr_result(run, out["ablated"])
        ids.append(run.sample_id)
        for k in keys:
            columns[out_name[k]].append(scores.get(k))
        c, biased = run.clean, sb_mode.BIASED
        on = {d: c[f"{biased} probe on {d} data"] for d in (sb_mode.INTENDED, sb_mode.SPURIOUS)}
        d1, d2 = on[sb_mode.INTENDED], on[sb_mode.SPURIOUS]
        direction = "dir1" if d1 < d2 else "dir2" if d1 > d2 else None
        data = sb_mode.INTENDED if direction == "dir1" else sb_mode.SPURIOUS
        n_texts = 2 * run.n_texts[data]  # the biased probe is scored on the data's key and its paired key
        steps.append(sb_mode.text_step(n_texts, c[data] - on[data], len(prep.runs)) if direction else None)
        rows.append({
            "run": run.name, "dataset": run.dataset, "clean_accuracy": dict(c), "scr_metric_direction": direction,
            "probe_best_epoch": run.epochs, "n_texts_scored": n_texts,
            "ablated_biased_accuracy": {k: {str(n): a for n, a in v.items()} for k, v in out["ablated"].items()},
            f"top_{HEADLINE_N}_latents": out["latents"], "ablation_path": out["path"],
            "ablation_path_reason": out["path_reason"], **{out_name[k]: scores.get(k) for k in keys},
        })  # fmt: skip
    head = out_name[f"scr_metric_threshold_{HEADLINE_N}"] if HEADLINE_N in cfg.n_values else None
    unit = SB_UNIT if sb else VARIANT_UNIT
    details = {
        "runs": rows,
        "naming": names,
        "resolution": {head: sb_mode.resolution_entry(head, "text", steps, MIN_EFFECT, f"over {len(rows)} runs")}
        if head
        else {},
        "n_values": list(cfg.n_values),
        "pooling": "SAEBench's: mean over the unmasked tokens of BOS + a text's first context_length - 1 tokens",
        "context_length": cfg.context_length,
        "ablation_path": sorted({r["ablation_path"] for r in rows}),
        "model_forward_batches": prep.forward_batches,
    }
    if not sb:
        ctx.notes.append(f"scr: our names, not SAEBench's: {names['why']}")
    metrics: dict[str, Any] = {"n_pairs_scored": len(rows), "n_pairs_skipped": 0, "d_sae": int(ctx.sae.d_sae)}
    timing = {**{f"scr_{k}": v for k, v in prep.timing.items()}, "scr_sae_s": time.perf_counter() - t0}
    return EvalOutput(metrics, details, samples={unit: Samples(unit, ids, columns)}, timing=timing)


class ScrEvaluator:
    """``--evals scr``: SAEBench's spurious-correlation removal (see module doc)."""

    name = "scr"
    #: refused for a transcoder (reads one hook, writes another) before the model loads (runner)
    transcoder_refusal = (
        "it ablates latents' decoder contributions at the hook it re-probes, which assumes the SAE"
        " writes the hook it reads"
    )
    needs: frozenset[str] = frozenset()
    Config = ScrConfig
    metrics = METRICS

    def preflight(self, cfg: EvalConfig) -> None:
        assert isinstance(cfg, ScrConfig)
        _check(cfg)

    def prepare(self, pipe: ActivationPipeline, cfg: EvalConfig, seed: int) -> None:
        """Sample the pairs, compute activations and probes once for every SAE at this hook."""
        assert isinstance(cfg, ScrConfig)
        if cfg.mode == "saebench":
            from saebench.evaluators.scr_tpp_saebench import prepare, procedure

            _check(cfg)
            prepare(pipe, procedure(cfg, seed, True))
        else:
            prepare_pairs(pipe, cfg, seed)

    def run(self, ctx: EvalContext, cfg: EvalConfig) -> EvalOutput:
        assert isinstance(cfg, ScrConfig)
        if cfg.mode == "saebench":
            return _run_saebench(ctx, cfg)
        from saebench.evaluators.scr_tpp_saebench import naming, resolution_entry

        prep = prepare_pairs(ctx.pipeline, cfg, ctx.seed)
        ctx.notes.extend(prep.notes)
        t0 = time.perf_counter()
        keys = [variant_name(f"scr_{k}_threshold_{n}") for n in cfg.n_values for k in ("dir1", "dir2", "metric")]
        rows, ids, columns = [], [], {k: [] for k in keys}
        for pp in prep.pairs.values():
            scores, row = score_pair(pp, ctx, cfg)
            rows.append(row)
            ids.append(pp.sample_id)
            for k in keys:
                columns[k].append(scores.get(k))
        too_big = [n for n in cfg.n_values if n > int(ctx.sae.d_sae)]
        if too_big:
            ctx.notes.append(f"scr: n_values {too_big} exceed the SAE's {int(ctx.sae.d_sae)} latents; left undefined")
        if not rows:
            ctx.notes.append("scr: no attribute pair could be scored; see 'skipped' for the reasons")
        metrics: dict[str, Any] = {
            "n_pairs_scored": len(rows), "n_pairs_skipped": len(prep.skipped), "d_sae": int(ctx.sae.d_sae)
        }  # fmt: skip
        head = f"scr_top_{HEADLINE_N}"
        steps = _headline_steps(rows, len(rows))
        details = {
            "pairs": rows,
            "skipped": prep.skipped,
            "naming": naming(cfg),
            "resolution": {head: resolution_entry(head, "text", steps, MIN_EFFECT, f"over {len(rows)} pairs")},
            "n_values": list(cfg.n_values),
            "pooling": "mean over each example's tokens (BOS excluded), texts left-truncated to max_tokens",
            "max_tokens": cfg.max_tokens,
            "ablation_path": sorted({r["ablation_path"] for r in rows}),
            "model_forward_batches": prep.forward_batches,
        }
        samples = {VARIANT_UNIT: Samples(VARIANT_UNIT, ids, columns)} if rows else {}
        timing = {**prep.timing, "scr_sae_s": time.perf_counter() - t0}
        return EvalOutput(metrics, details, samples=samples, timing=timing)
