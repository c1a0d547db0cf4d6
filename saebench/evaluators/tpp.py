"""``--evals tpp``: targeted probe perturbation (SAEBench).

For each multi-class dataset a one-vs-rest linear probe per class reads the mean-pooled hook
activation. Ablating the N latents with the largest node effect on class c's probe should lower that
probe's accuracy and leave the other classes' probes alone:

    intended_c   = A_c - A_c | ablate(c, N)
    unintended_c = mean_{c' ≠ c} (A_c' - A_c' | ablate(c, N))
    tpp_c        = intended_c - unintended_c

(SAEBench's ``create_tpp_plotting_dict``; node effects, selection and ablation in
:mod:`saebench.probes.scr_tpp`, shared with ``scr``). Two modes (``--set tpp.mode=...``):

- ``variant`` (default): news topics, tweet emotions and IT tickets offline (or SAEBench's data
  with ``data=saebench``), our probes, negatives drawn once per class; our names ``tpp_top_N``,
  ``tpp_top_N_intended``, ``tpp_top_N_unintended``: the mean over classes (unit ``class``);
- ``saebench``: SAEBench 0.6.0's procedure end to end (:mod:`saebench.evaluators.scr_tpp_saebench`;
  negatives redrawn per evaluation as SAEBench does). With SAEBench's data and settings the result
  carries SAEBench's names ``tpp_threshold_N_total_metric``, ``..._intended_diff_only``,
  ``..._unintended_diff_only``: the mean over datasets of per-dataset class means (unit
  ``tpp_dataset``, two-level bootstrap over datasets and classes); otherwise our names.
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
from saebench.stats import MeanOfMeans, Samples, mean_of

N_VALUES = (2, 5, 10, 20, 50, 100, 500)  # SAEBench's n_values
HEADLINE_N = 20
SUFFIXES = ("total_metric", "intended_diff_only", "unintended_diff_only")
SB_UNIT, VARIANT_UNIT = "tpp_dataset", "class"
MIN_EFFECT = 0.01


def variant_name(key: str) -> str:
    """Our name of a SAEBench-named TPP quantity: ``tpp_threshold_N_total_metric`` -> ``tpp_top_N``,
    ``..._intended_diff_only`` -> ``tpp_top_N_intended``, ``..._unintended_diff_only`` -> ``..._unintended``."""
    out = key.replace("tpp_threshold_", "tpp_top_").replace("_total_metric", "")
    return out.replace("_unintended_diff_only", "_unintended").replace("_intended_diff_only", "_intended")


class TppConfig(SaebenchFields):
    """Settings of ``--evals tpp``: the variant's (profiles set its datasets and sizes) and,
    inherited, the mode, the data and SAEBench's own settings for ``mode=saebench``."""

    datasets: list[str] | None = None  # variant: names or globs; None = every offline dataset (SAEBench's: hub)
    n_train: int = 48  # variant: texts per class for probe training / node effects
    n_test: int = 32  # variant: texts per class for the accuracies
    max_tokens: int = 64  # variant: per example, incl. BOS; longer texts keep their end
    n_values: list[int] = list(N_VALUES)
    ablation: Literal["auto", "exact"] = "auto"
    probe_cs: list[float] = list(DEFAULT_CS)
    token_chunk: int = 1024

    @field_validator("datasets", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        return [p.strip() for p in v.split(",") if p.strip()] if isinstance(v, str) else v

    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": {"datasets": ["news_class"], "n_train": 48, "n_test": 32},
        "standard": {"n_train": 500, "n_test": 125, "max_tokens": 128},
        "paper": {"n_train": 2000, "n_test": 500, "max_tokens": 128},
    }


def _declare() -> tuple[Metric, ...]:
    out = []
    for n in N_VALUES:
        head = n == HEADLINE_N
        for suffix, meaning, direction, is_head in (
            ("total_metric", f"TPP: intended minus mean unintended accuracy drop, top {n} latents", "up", head),
            ("intended_diff_only", f"accuracy drop of the targeted class's probe, top {n} latents", "up", False),
            (
                "unintended_diff_only",
                f"mean accuracy drop of the other classes' probes, top {n} latents",
                "down",
                False,
            ),
        ):
            key = f"tpp_threshold_{n}_{suffix}"
            title = "TPP top-20"
            # ours first: the board's summary shows an evaluator's first headline
            out.append(
                Metric(
                    variant_name(key),
                    meaning + "; our probes and data (variant), mean over classes",
                    direction,
                    is_head,
                    "",
                    title if is_head else "",
                    MIN_EFFECT,
                    mean_of(VARIANT_UNIT, variant_name(key)),
                )
            )
            out.append(
                Metric(
                    key,
                    meaning + "; SAEBench's procedure and data, mean over datasets of per-dataset class means",
                    direction,
                    is_head,
                    "",
                    title + " (SAEBench)" if is_head else "",
                    MIN_EFFECT,
                    MeanOfMeans(SB_UNIT, key),
                )
            )
    out += [
        Metric("n_classes_scored", "classes scored (over all datasets)"),
        Metric("n_datasets_skipped", "datasets whose data is unavailable"),
        Metric("d_sae", "latents of the SAE"),
    ]
    return tuple(out)


METRICS = _declare()


@dataclass
class PreparedDataset:
    data: Any  # saebench.tasks.scr_tpp.TppData
    acts: Any  # TaskActs
    xbar: torch.Tensor
    probes: dict[str, Any]  # class -> LinearProbe
    clean: dict[str, float]  # class -> probe accuracy on its own test data
    content: str


@dataclass
class Prepared:
    datasets: dict[str, PreparedDataset]
    skipped: dict[str, str]
    notes: list[str]
    forward_batches: int
    timing: dict[str, float]


def _check(cfg: TppConfig) -> None:
    from saebench.evaluators.scr_tpp_saebench import check_mode

    if cfg.n_train < 2 or cfg.n_test < 1 or cfg.max_tokens < 2 or not cfg.n_values or min(cfg.n_values) < 1:
        raise SaebenchError("tpp: n_train >= 2, n_test >= 1, max_tokens >= 2 and n_values >= 1 are required; fix --set")
    if not cfg.probe_cs or min(cfg.probe_cs) <= 0:
        raise SaebenchError("tpp: probe_cs must be positive inverse L2 strengths; fix --set tpp.probe_cs")
    check_mode(cfg, "tpp")


def prepare_datasets(pipe: ActivationPipeline, cfg: TppConfig, seed: int) -> Prepared:
    """Sample every dataset, compute its activations and class probes once per pipeline (memoised)."""
    key = "tpp:" + json.dumps([cfg.model_dump(), seed], sort_keys=True, default=str)
    return pipe.shared(key, lambda: _prepare(pipe, cfg, seed))


def _prepare(pipe: ActivationPipeline, cfg: TppConfig, seed: int) -> Prepared:
    from saebench.pipeline.tasks import task_activations
    from saebench.tasks import TaskUnavailable
    from saebench.tasks.scr_tpp import OFFLINE_TPP, TPP_DATASETS, load_tpp, select_names

    _check(cfg)
    t0 = time.perf_counter()
    default = [n for n, d in TPP_DATASETS.items() if d.hub] if cfg.data == "saebench" else OFFLINE_TPP
    names = select_names(TPP_DATASETS, cfg.datasets, default)
    loaded, skipped, notes = {}, {}, []
    for name in names:
        try:
            loaded[name] = load_tpp(TPP_DATASETS[name], cfg.n_train, cfg.n_test, seed, cfg.data == "saebench",
                                    cfg.data_dir, cfg.use_hub)  # fmt: skip
        except TaskUnavailable as exc:
            skipped[name] = str(exc)
            notes.append(f"tpp: skipped {name}: {exc}")
    for d in loaded.values():
        notes.extend(d.notes)
    counts = {len(d.dataset.classes) for d in loaded.values()}
    if len(counts) > 1:
        notes.append(
            "tpp: datasets have different class counts; the mean over classes then weights datasets by class count "
            "(SAEBench averages per dataset first)"
        )
    t_data = time.perf_counter() - t0
    before = pipe.counters.task_forward_batches
    t0 = time.perf_counter()
    acts = task_activations(pipe, {f"tpp-{n}": d.texts for n, d in loaded.items()}, cfg.max_tokens)
    t_acts = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = {name: prepare_dataset(d, acts[f"tpp-{name}"], seed, cfg) for name, d in loaded.items()}
    timing = {"tpp_data_s": t_data, "tpp_activations_s": t_acts, "tpp_probes_s": time.perf_counter() - t0}
    return Prepared(out, skipped, notes, pipe.counters.task_forward_batches - before, timing)


def prepare_dataset(d: Any, ta: Any, seed: int, cfg: TppConfig) -> PreparedDataset:
    """Class probes and their clean accuracies for one sampled dataset (``TppData``) and its ``TaskActs``."""
    from saebench.probes.scr_tpp import accuracy, fit_probe
    from saebench.probes.sparse_probing import pool

    xbar = pool(ta.acts, ta.lengths, "mean")
    probes, clean = {}, {}
    for c in d.dataset.classes:
        pos, neg = d.sets["train"][c]
        y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))])
        probes[c] = fit_probe(xbar[pos + neg], y, seed, tuple(cfg.probe_cs))
        tpos, tneg = d.sets["test"][c]
        yt = torch.cat([torch.ones(len(tpos)), torch.zeros(len(tneg))])
        clean[c] = accuracy(probes[c].logits(xbar[tpos + tneg]), yt)
    return PreparedDataset(d, ta, xbar, probes, clean, d.content_hash())


def score_dataset(pd_: PreparedDataset, ctx: EvalContext, cfg: TppConfig) -> tuple[dict[str, dict[str, float]], dict]:
    """Per-class TPP scores of one SAE on one prepared dataset, and its detail row."""
    from saebench.probes.scr_tpp import SaeAblation, accuracy, top_n_mask, tpp_scores
    from saebench.probes.sparse_probing import encoder

    classes = list(pd_.data.dataset.classes)
    enc = encoder(ctx.sae, ctx.sae_name)
    w = torch.stack([pd_.probes[c].w for c in classes], 1)
    b = torch.tensor([pd_.probes[c].b for c in classes], dtype=torch.float64)
    abl = SaeAblation(
        ctx.sae, enc, pd_.acts.acts, pd_.acts.lengths, pd_.xbar, w, b, cfg.ablation, cfg.token_chunk, ctx.model.device
    )
    d_sae = abl.zbar.shape[1]
    ns = [n for n in cfg.n_values if n <= d_sae]
    # every class's test examples, once: ablated logits of every probe on the union
    test_ids = sorted({i for c in classes for i in pd_.data.sets["test"][c][0] + pd_.data.sets["test"][c][1]})
    where = {i: j for j, i in enumerate(test_ids)}
    ablated: dict[str, dict[int, dict[str, float]]] = {}
    top: dict[str, list[int]] = {}
    for ci, c in enumerate(classes):
        pos, neg = pd_.data.sets["train"][c]
        eff = abl.effects(pos, neg, ci, scr=False)
        top[c] = [int(i) for i in torch.argsort(eff, descending=True, stable=True)[: min(HEADLINE_N, d_sae)]]
        if not ns:
            continue
        masks = torch.stack([top_n_mask(eff, n) for n in ns])
        logits = abl.ablated_logits(test_ids, masks)  # [M, n_test_union, P]
        ablated[c] = {}
        for j, n in enumerate(ns):
            accs = {}
            for oi, o in enumerate(classes):
                tpos, tneg = pd_.data.sets["test"][o]
                rows = torch.as_tensor([where[i] for i in tpos + tneg])
                y = torch.cat([torch.ones(len(tpos)), torch.zeros(len(tneg))])
                accs[o] = accuracy(logits[j, rows, oi], y)
            ablated[c][n] = accs
    per_class = tpp_scores(pd_.clean, ablated) if ns else {c: {} for c in classes}
    row = {
        "dataset": pd_.data.dataset.name,
        "description": pd_.data.dataset.description,
        "origin": pd_.data.origin,
        "n_train_per_class": pd_.data.n_train,
        "n_test_per_class": pd_.data.n_test,
        "clean_accuracy": dict(pd_.clean),
        "probe_C": {c: pd_.probes[c].c for c in classes},
        "ablated_accuracy": {c: {str(n): a for n, a in by_n.items()} for c, by_n in ablated.items()},
        f"top_{HEADLINE_N}_latents": top,
        "per_class": {c: {variant_name(k): v for k, v in sc.items()} for c, sc in per_class.items()},
        "n_texts_scored": {c: len(sum(pd_.data.sets["test"][c], [])) for c in classes},
        "ablation_path": abl.path,
        "ablation_path_reason": abl.reason,
        "effects_direction_from": abl.dots_from,
    }
    return per_class, row


def _run_saebench(ctx: EvalContext, cfg: TppConfig) -> EvalOutput:
    """``mode=saebench``: SAEBench's procedure end to end (:mod:`saebench.evaluators.scr_tpp_saebench`)."""
    from saebench.evaluators import scr_tpp_saebench as sb_mode

    proc = sb_mode.procedure(cfg, ctx.seed, False)
    prep = sb_mode.prepare(ctx.pipeline, proc)
    names = sb_mode.naming(cfg)
    sb = names["names"] == "saebench"
    t0 = time.perf_counter()
    keys = [f"tpp_threshold_{n}_{s}" for n in cfg.n_values for s in SUFFIXES]
    out_name = {k: k if sb else variant_name(k) for k in keys}
    rows, ids, columns, steps = [], [], {out_name[k]: [] for k in keys}, []
    for run in prep.runs:
        out = sb_mode.score_run(run, ctx.sae, ctx.sae_name, proc, ctx.model.device, cfg.ablation)
        per_class = sb_mode.tpp_result(run, out["ablated"])
        if sb:  # SAEBench's aggregation: per dataset the mean over classes, then the mean over datasets
            ids.append(run.sample_id)
            for k in keys:
                columns[k].append([per_class[c].get(k) for c in run.chosen])
        else:
            for c in run.chosen:
                ids.append(f"{run.sample_id}/{c}")
                for k in keys:
                    columns[out_name[k]].append(per_class[c].get(k))
        n_texts = {c: 2 * run.n_texts[c] for c in run.chosen}
        n_all = sum(len(r.chosen) for r in prep.runs)  # our names: the mean over every class
        steps += [1.0 / (n_texts[c] * (len(run.chosen) * len(prep.runs) if sb else n_all)) for c in run.chosen]
        rows.append({
            "run": run.name, "dataset": run.dataset, "clean_accuracy": {c: run.clean[c] for c in run.chosen},
            "probe_best_epoch": run.epochs, "n_texts_scored": n_texts,
            "ablated_accuracy": {c: {str(n): a for n, a in v.items()} for c, v in out["ablated"].items()},
            f"top_{HEADLINE_N}_latents": out["latents"], "ablation_path": out["path"],
            "ablation_path_reason": out["path_reason"],
            "per_class": {c: {out_name[k]: v for k, v in sc.items()} for c, sc in per_class.items()},
        })  # fmt: skip
    head = out_name.get(f"tpp_threshold_{HEADLINE_N}_total_metric")
    unit = SB_UNIT if sb else VARIANT_UNIT
    details = {
        "runs": rows,
        "naming": names,
        "resolution": {head: sb_mode.resolution_entry(head, "text", steps, MIN_EFFECT, f"over {len(ids)} units")}
        if head
        else {},
        "n_values": list(cfg.n_values),
        "pooling": "SAEBench's: mean over the unmasked tokens of BOS + a text's first context_length - 1 tokens",
        "negatives": "redrawn at every accuracy evaluation, as SAEBench does",
        "context_length": cfg.context_length,
        "ablation_path": sorted({r["ablation_path"] for r in rows}),
        "model_forward_batches": prep.forward_batches,
    }
    if not sb:
        ctx.notes.append(f"tpp: our names, not SAEBench's: {names['why']}")
    n_cls = sum(len(r.chosen) for r in prep.runs)
    metrics: dict[str, Any] = {"n_classes_scored": n_cls, "n_datasets_skipped": 0, "d_sae": int(ctx.sae.d_sae)}
    timing = {**{f"tpp_{k}": v for k, v in prep.timing.items()}, "tpp_sae_s": time.perf_counter() - t0}
    return EvalOutput(metrics, details, samples={unit: Samples(unit, ids, columns)}, timing=timing)


class TppEvaluator:
    """``--evals tpp``: SAEBench's targeted probe perturbation (see module doc)."""

    name = "tpp"
    #: refused for a transcoder (reads one hook, writes another) before the model loads (runner)
    transcoder_refusal = (
        "it ablates latents' decoder contributions at the hook it re-probes, which assumes the SAE"
        " writes the hook it reads"
    )
    needs: frozenset[str] = frozenset()
    Config = TppConfig
    metrics = METRICS

    def preflight(self, cfg: EvalConfig) -> None:
        assert isinstance(cfg, TppConfig)
        _check(cfg)

    def prepare(self, pipe: ActivationPipeline, cfg: EvalConfig, seed: int) -> None:
        """Sample the datasets, compute activations and class probes once for every SAE at this hook."""
        assert isinstance(cfg, TppConfig)
        if cfg.mode == "saebench":
            from saebench.evaluators.scr_tpp_saebench import prepare, procedure

            _check(cfg)
            prepare(pipe, procedure(cfg, seed, False))
        else:
            prepare_datasets(pipe, cfg, seed)

    def run(self, ctx: EvalContext, cfg: EvalConfig) -> EvalOutput:
        assert isinstance(cfg, TppConfig)
        if cfg.mode == "saebench":
            return _run_saebench(ctx, cfg)
        from saebench.evaluators.scr_tpp_saebench import naming, resolution_entry

        prep = prepare_datasets(ctx.pipeline, cfg, ctx.seed)
        ctx.notes.extend(prep.notes)
        t0 = time.perf_counter()
        keys = [variant_name(f"tpp_threshold_{n}_{s}") for n in cfg.n_values for s in SUFFIXES]
        rows, ids, columns = [], [], {k: [] for k in keys}
        for pd_ in prep.datasets.values():
            per_class, row = score_dataset(pd_, ctx, cfg)
            rows.append(row)
            for c, scores in per_class.items():
                ids.append(f"{pd_.data.dataset.name}/{c}@{pd_.content}")
                for k in keys:
                    columns[k].append({variant_name(a): v for a, v in scores.items()}.get(k))
        too_big = [n for n in cfg.n_values if n > int(ctx.sae.d_sae)]
        if too_big:
            ctx.notes.append(f"tpp: n_values {too_big} exceed the SAE's {int(ctx.sae.d_sae)} latents; left undefined")
        if not rows:
            ctx.notes.append("tpp: no dataset could be scored; see 'skipped' for the reasons")
        metrics: dict[str, Any] = {
            "n_classes_scored": len(ids), "n_datasets_skipped": len(prep.skipped), "d_sae": int(ctx.sae.d_sae)
        }  # fmt: skip
        head = variant_name(f"tpp_threshold_{HEADLINE_N}_total_metric")
        steps = [1.0 / (n * max(1, len(ids))) for r in rows for n in r["n_texts_scored"].values()]
        details = {
            "datasets": rows,
            "skipped": prep.skipped,
            "naming": naming(cfg),
            "resolution": {head: resolution_entry(head, "text", steps, MIN_EFFECT, f"over {len(ids)} classes")},
            "n_values": list(cfg.n_values),
            "pooling": "mean over each example's tokens (BOS excluded), texts left-truncated to max_tokens",
            "max_tokens": cfg.max_tokens,
            "ablation_path": sorted({r["ablation_path"] for r in rows}),
            "model_forward_batches": prep.forward_batches,
        }
        samples = {VARIANT_UNIT: Samples(VARIANT_UNIT, ids, columns)} if ids else {}
        timing = {**prep.timing, "tpp_sae_s": time.perf_counter() - t0}
        return EvalOutput(metrics, details, samples=samples, timing=timing)
