"""``--evals tpp``: targeted probe perturbation (SAEBench).

For each multi-class dataset (``saebench.tasks.scr_tpp``: news topics, tweet emotions and IT
tickets offline; Bias in Bios professions and Amazon categories from the hub) a one-vs-rest
linear probe per class reads the mean-pooled hook activation. Ablating the N latents with the
largest node effect on class c's probe should lower that probe's accuracy and leave the other
classes' probes alone:

    intended_c   = A_c - A_c | ablate(c, N)
    unintended_c = mean_{c' ≠ c} (A_c' - A_c' | ablate(c, N))
    tpp_c        = intended_c - unintended_c

(SAEBench's ``create_tpp_plotting_dict``; node effects, selection and ablation in
:mod:`saebench.probes.scr_tpp`). Reported under SAEBench's names
(``tpp_threshold_N_total_metric``, ``..._intended_diff_only``, ``..._unintended_diff_only``): the
mean over classes, which equals SAEBench's mean over datasets of per-dataset means because every
dataset contributes the same number of classes (four offline); intervals bootstrap over classes
(unit ``class``, id ``dataset/class@hash-of-the-dataset's-sample``).
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


class TppConfig(EvalConfig):
    """Settings of ``--evals tpp``; profiles set the datasets and sizes."""

    datasets: list[str] | None = None  # names or globs; None = every offline dataset (the hub ones with use_hub)
    n_train: int = 48  # texts per class for probe training / node effects
    n_test: int = 32  # texts per class for the accuracies
    max_tokens: int = 64  # per example, incl. BOS; longer texts keep their end
    n_values: list[int] = list(N_VALUES)
    ablation: Literal["auto", "exact"] = "auto"
    probe_cs: list[float] = list(DEFAULT_CS)
    token_chunk: int = 1024
    use_hub: bool = False
    hub_paths: dict[str, str] = {}

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
            (
                "total_metric",
                f"TPP (SAEBench): intended minus mean unintended accuracy drop, top {n} latents",
                "up",
                head,
            ),
            ("intended_diff_only", f"accuracy drop of the targeted class's probe, top {n} latents", "up", False),
            (
                "unintended_diff_only",
                f"mean accuracy drop of the other classes' probes, top {n} latents",
                "down",
                False,
            ),
        ):
            name = f"tpp_threshold_{n}_{suffix}"
            out.append(
                Metric(
                    name,
                    meaning + "; mean over classes",
                    direction,
                    is_head,
                    "",
                    f"TPP top-{n}" if is_head else "",
                    0.01,
                    mean_of("class", name),
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
    if cfg.n_train < 2 or cfg.n_test < 1 or cfg.max_tokens < 2 or not cfg.n_values or min(cfg.n_values) < 1:
        raise SaebenchError("tpp: n_train >= 2, n_test >= 1, max_tokens >= 2 and n_values >= 1 are required; fix --set")
    if not cfg.probe_cs or min(cfg.probe_cs) <= 0:
        raise SaebenchError("tpp: probe_cs must be positive inverse L2 strengths; fix --set tpp.probe_cs")


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
    default = [n for n, d in TPP_DATASETS.items() if d.hub] if cfg.use_hub else OFFLINE_TPP
    names = select_names(TPP_DATASETS, cfg.datasets, default)
    loaded, skipped, notes = {}, {}, []
    for name in names:
        try:
            loaded[name] = load_tpp(TPP_DATASETS[name], cfg.n_train, cfg.n_test, seed, cfg.use_hub, cfg.hub_paths)
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
        "per_class": per_class,
        "ablation_path": abl.path,
        "ablation_path_reason": abl.reason,
        "effects_direction_from": abl.dots_from,
    }
    return per_class, row


class TppEvaluator:
    """``--evals tpp``: SAEBench's targeted probe perturbation (see module doc)."""

    name = "tpp"
    needs: frozenset[str] = frozenset()
    Config = TppConfig
    metrics = METRICS

    def preflight(self, cfg: EvalConfig) -> None:
        assert isinstance(cfg, TppConfig)
        _check(cfg)

    def prepare(self, pipe: ActivationPipeline, cfg: EvalConfig, seed: int) -> None:
        """Sample the datasets, compute activations and class probes once for every SAE at this hook."""
        assert isinstance(cfg, TppConfig)
        prepare_datasets(pipe, cfg, seed)

    def run(self, ctx: EvalContext, cfg: EvalConfig) -> EvalOutput:
        assert isinstance(cfg, TppConfig)
        prep = prepare_datasets(ctx.pipeline, cfg, ctx.seed)
        ctx.notes.extend(prep.notes)
        t0 = time.perf_counter()
        ns = [n for n in cfg.n_values if n <= int(ctx.sae.d_sae)]
        keys = [
            f"tpp_threshold_{n}_{s}" for n in ns for s in ("total_metric", "intended_diff_only", "unintended_diff_only")
        ]
        rows, ids, columns = [], [], {k: [] for k in keys}
        for pd_ in prep.datasets.values():
            per_class, row = score_dataset(pd_, ctx, cfg)
            rows.append(row)
            for c, scores in per_class.items():
                ids.append(f"{pd_.data.dataset.name}/{c}@{pd_.content}")
                for k in keys:
                    columns[k].append(scores.get(k))
        too_big = [n for n in cfg.n_values if n > int(ctx.sae.d_sae)]
        if too_big:
            ctx.notes.append(f"tpp: n_values {too_big} exceed the SAE's {int(ctx.sae.d_sae)} latents; left undefined")
        if not rows:
            ctx.notes.append("tpp: no dataset could be scored; see 'skipped' for the reasons")
        declared = {m.name for m in METRICS}
        metrics: dict[str, Any] = {k: mean_defined(v) for k, v in columns.items() if k not in declared}
        metrics.update(
            {"n_classes_scored": len(ids), "n_datasets_skipped": len(prep.skipped), "d_sae": int(ctx.sae.d_sae)}
        )
        details = {
            "datasets": rows,
            "skipped": prep.skipped,
            "n_values": list(cfg.n_values),
            "pooling": "mean over each example's tokens (BOS excluded), texts left-truncated to max_tokens",
            "max_tokens": cfg.max_tokens,
            "ablation_path": sorted({r["ablation_path"] for r in rows}),
            "model_forward_batches": prep.forward_batches,
        }
        samples = {"class": Samples("class", ids, columns)} if ids else {}
        timing = {**prep.timing, "tpp_sae_s": time.perf_counter() - t0}
        return EvalOutput(metrics, details, samples=samples, timing=timing)
