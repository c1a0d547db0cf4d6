"""``--evals probing``: 1-D sparse probing on the hypothesized-feature tasks (Gao et al. 2024, sec. 4.2).

For each task of the registry (``saebench.tasks``; 61 tasks from 17 sources, ``saebench tasks``
lists them): sample train/test examples, take the hook activations of every example from the
shared pipeline (computed once per model, hook and task sample, cached on disk), pool each SAE
latent over the example (``mean`` over non-BOS tokens or the ``last`` token; ``auto`` uses each
task family's choice), then

- ``heldout_probe_loss``: for every live latent a 1-D logistic probe fit on train (batched Newton,
  small L2); the latent whose probe has the lowest *train* loss is chosen and only that probe is
  scored on test (test cross-entropy); mean over tasks (lower is better; ln 2 ≈ 0.693 is chance on
  balanced tasks). Nothing is chosen on test: the earlier ``probe_loss`` took the minimum *test*
  loss over 700-3,000 latents on 32 test examples, an optimistic number that fell with the
  candidate count even on pure noise, hence the new name.
- the task's **noise floor**: the identical procedure (fit every latent, choose on train, score on
  test) on ``n_permutations`` seeded shuffles of the train labels, the same shuffles for every SAE
  on a task; ``probe_noise_floor`` is its mean over tasks and ``probe_loss_below_floor`` = floor −
  held-out loss per test example, averaged (nats; 0 = what noise gets at this SAE's candidate
  count). A task is **at the floor** when its permutation p-value (1 + #shuffles doing at least
  as well) / (1 + n_permutations) exceeds ``floor_alpha``; ``n_tasks_at_floor`` counts them and
  ``tasks_at_floor`` names them.
- ``top_k_accuracy`` (k = 1, 2, 5): SAEBench's probe on the k latents with the largest
  |mean_pos - mean_neg| on train, test accuracy (chosen on train already).
- baselines on the same examples: the single residual channel chosen on train by the same 1-D code
  (``baseline_resid_1d_heldout_loss``, with its own floor at 576 candidates) and a full-width
  residual probe (L2 chosen by cross-validation on train only). Neither selects on test, so the
  SAE-vs-residual comparison is like for like.

Intervals: two-level bootstrap over tasks and the test examples within each task (units are
``task@hash-of-its-sample``: two results pair task by task when they probed the same examples).
Latents constant on a task's train set are skipped (their best probe is the intercept-only
``prior_loss``); a task where every latent is dead scores its prior and is counted in
``n_tasks_no_live_latents``. Tasks whose data is not available (offline, or hub when ``use_hub``)
or that have a single class after filtering are skipped with a one-line reason each, listed and
counted in the result.
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
from saebench.stats import MeanOfMeans, Samples


class ProbingConfig(EvalConfig):
    """Settings of ``--evals probing``; profiles set the sample sizes only."""

    tasks: list[str] | None = None  # task names, globs or family names; None = all 61
    task_specs: list[str] = []  # extra user TOML spec files (same format as tasks/*.toml)
    max_train: int | None = 32  # cap on each task's train size (None: the spec's default)
    max_test: int | None = 32
    max_tokens: int = 64  # per example, incl. BOS; longer texts keep their end
    pooling: Literal["auto", "mean", "last"] = "auto"
    l2: float = 0.1  # on standardized latents, mean-CE objective (sklearn C = 1 / (l2 n_train)); see docs/probing.md
    newton_iters: int = 50
    latent_chunk: int = 4096  # latents fit at once (memory ~96 x n_train x chunk bytes)
    token_chunk: int = 1024  # tokens encoded at once (memory token_chunk x d_sae floats)
    top_k: list[int] = [1, 2, 5]
    n_permutations: int = 19  # shuffled-label repetitions per task for the noise floor (19: a 5% test)
    floor_alpha: float = 0.05  # a task is at the floor when its permutation p-value exceeds this
    baselines: bool = True
    use_hub: bool = False  # load tasks missing offline from the hub (network)
    data_paths: dict[str, str] = {}  # family -> local data file/folder (e.g. europarl)

    @field_validator("tasks", "task_specs", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        """``--set probing.tasks=glue_*,haystack_*`` arrives as a string: split it on commas."""
        return [p.strip() for p in v.split(",") if p.strip()] if isinstance(v, str) else v

    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": {"max_train": 32, "max_test": 32, "max_tokens": 64},
        "standard": {"max_train": 256, "max_test": 256, "max_tokens": 128},
        "paper": {"max_train": None, "max_test": None, "max_tokens": 128},
    }


def _mom(col: str) -> MeanOfMeans:
    return MeanOfMeans("task", col)


METRICS = (
    Metric(
        "probe_loss_below_floor",
        "mean over tasks of the noise floor minus the held-out 1-D probe loss (0: what shuffled labels get)",
        "up",
        True,
        "nats",
        "probe loss below floor",
        0.01,
        _mom("probe_gain"),
    ),
    Metric(
        "heldout_probe_loss",
        "mean over tasks of the test CE of the 1-D latent probe chosen by train loss",
        "down",
        True,
        "nats",
        "held-out probe loss",
        0.01,
        _mom("heldout_probe_loss"),
    ),
    Metric(
        "probe_noise_floor",
        "mean over tasks of the held-out probe loss on shuffled train labels (same candidates, same procedure)",
        "",
        False,
        "nats",
        "",
        0.0,
        _mom("noise_floor"),
    ),
    Metric(
        "top_1_accuracy",
        "mean test accuracy of a probe on the 1 latent with the largest class-mean gap on train",
        "up",
        True,
        "",
        "top-1 acc",
        0.01,
        _mom("top_1_accuracy"),
    ),
    Metric("top_2_accuracy", "the same with 2 latents", "up", False, "", "", 0.01, _mom("top_2_accuracy")),
    Metric("top_5_accuracy", "the same with 5 latents", "up", False, "", "", 0.01, _mom("top_5_accuracy")),
    Metric(
        "prior_loss",
        "mean test CE of the intercept-only probe (chance level)",
        "",
        False,
        "nats",
        "",
        0.0,
        _mom("prior_loss"),
    ),
    Metric(
        "baseline_resid_1d_heldout_loss",
        "test CE of the single residual channel chosen by train loss (same 1-D code)",
        "",
        False,
        "nats",
        "",
        0.0,
        _mom("resid_1d_heldout_loss"),
    ),
    Metric(
        "baseline_resid_1d_below_floor",
        "the residual channel's noise floor (576 candidates) minus its held-out loss",
        "",
        False,
        "nats",
        "",
        0.0,
        _mom("resid_1d_gain"),
    ),
    Metric(
        "baseline_resid_full_loss",
        "full-width residual probe's test CE (L2 by CV on train)",
        "",
        False,
        "nats",
        "",
        0.0,
        _mom("resid_full_loss"),
    ),
    Metric(
        "baseline_resid_full_accuracy",
        "full-width residual probe's test accuracy",
        "",
        False,
        "",
        "",
        0.0,
        _mom("resid_full_accuracy"),
    ),
    Metric("n_tasks_requested", "tasks selected"),
    Metric("n_tasks_scored", "tasks scored"),
    Metric("n_tasks_skipped", "tasks whose data is unavailable"),
    Metric("n_tasks_at_floor", "scored tasks whose held-out probe does not beat shuffled labels (p > floor_alpha)"),
    Metric("n_tasks_no_live_latents", "tasks on which every latent is dead"),
    Metric("n_latents_scored_mean", "mean number of live latents per task"),
    Metric("n_permutations", "shuffled-label repetitions per task behind each noise floor"),
    Metric("d_sae", "latents of the SAE"),
)


@dataclass
class Prepared:
    """The SAE-independent part of a probing run: sampled tasks and their hook activations."""

    n_requested: int
    loaded: dict[str, Any]
    skipped: dict[str, str]
    notes: list[str]
    acts: dict[str, Any]
    forward_batches: int
    timing: dict[str, float]


def prepare_tasks(pipe: ActivationPipeline, cfg: ProbingConfig, seed: int) -> Prepared:
    """Sample every selected task and compute its activations once per pipeline (memoised)."""
    key = "probing:" + json.dumps([cfg.model_dump(), seed], sort_keys=True, default=str)
    return pipe.shared(key, lambda: _prepare(pipe, cfg, seed))


def _prepare(pipe: ActivationPipeline, cfg: ProbingConfig, seed: int) -> Prepared:
    from saebench.pipeline.tasks import task_activations
    from saebench.tasks import TaskUnavailable, load_specs, load_task, select

    if any(k < 1 for k in cfg.top_k) or cfg.max_tokens < 2:
        raise SaebenchError("probing: top_k values must be >= 1 and max_tokens >= 2; fix the --set values")
    if cfg.n_permutations < 0 or not 0 < cfg.floor_alpha < 1:
        raise SaebenchError("probing: n_permutations must be >= 0 and 0 < floor_alpha < 1; fix the --set values")
    t0 = time.perf_counter()
    specs = select(load_specs(cfg.task_specs), cfg.tasks)
    loaded, skipped, notes = {}, {}, []
    for spec in specs:
        n_tr = spec.n_train if cfg.max_train is None else min(spec.n_train, cfg.max_train)
        n_te = spec.n_test if cfg.max_test is None else min(spec.n_test, cfg.max_test)
        try:
            loaded[spec.name] = load_task(spec, n_tr, n_te, seed, cfg.data_paths, cfg.use_hub)
        except TaskUnavailable as exc:
            skipped[spec.name] = str(exc)
            notes.append(f"probing: skipped {spec.name}: {exc}")
    for task in loaded.values():
        notes.extend(task.notes)
    t_data = time.perf_counter() - t0
    before = pipe.counters.task_forward_batches
    t0 = time.perf_counter()
    acts = task_activations(pipe, {n: t.texts for n, t in loaded.items()}, cfg.max_tokens)
    return Prepared(
        len(specs),
        loaded,
        skipped,
        notes,
        acts,
        pipe.counters.task_forward_batches - before,
        {"task_data_s": t_data, "activations_s": time.perf_counter() - t0},
    )


class ProbingEvaluator:
    """``--evals probing``: 1-D sparse probing on the registry's tasks (see module doc)."""

    name = "probing"
    needs: frozenset[str] = frozenset()
    Config = ProbingConfig
    metrics = METRICS

    def prepare(self, pipe: ActivationPipeline, cfg: EvalConfig, seed: int) -> None:
        """Sample the tasks and compute their activations once for every SAE at this hook."""
        assert isinstance(cfg, ProbingConfig)
        prepare_tasks(pipe, cfg, seed)

    def run(self, ctx: EvalContext, cfg: EvalConfig) -> EvalOutput:
        assert isinstance(cfg, ProbingConfig)
        from saebench.probes.sparse_probing import baselines, encoder, pool, score_task, task_seed
        from saebench.tasks import content_hash

        prep = prepare_tasks(ctx.pipeline, cfg, ctx.seed)
        ctx.notes.extend(prep.notes)
        enc = encoder(ctx.sae, ctx.sae_name)
        device = ctx.model.device
        rows, t_enc, t_1d, t_topk, t_base = [], 0.0, 0.0, 0.0, 0.0
        ids: list[str] = []
        columns: dict[str, list[Any]] = {}
        for name, task in prep.loaded.items():
            ta = prep.acts[name]
            pooling = task.spec.pooling if cfg.pooling == "auto" else cfg.pooling
            y = torch.tensor(task.labels, dtype=torch.float64)
            t1 = time.perf_counter()
            z = pool(ta.acts, ta.lengths, pooling, enc, cfg.token_chunk, device)
            t_enc += time.perf_counter() - t1
            perm_seed = task_seed(ctx.seed, name)
            r, per, times = score_task(
                z,
                y,
                task.n_train,
                cfg.l2,
                cfg.latent_chunk,
                cfg.top_k,
                cfg.newton_iters,
                cfg.n_permutations,
                perm_seed,
                cfg.floor_alpha,
            )
            # per-example floor CE (the gain column is floor - held-out loss, example by example)
            per["noise_floor"] = (
                [a + b for a, b in zip(per["heldout_probe_loss"], per["probe_gain"], strict=True)]
                if per["probe_gain"] is not None
                else None
            )
            t_1d += times["probe_1d_s"]
            t_topk += times["probe_topk_s"]
            row = {
                "task": name,
                "family": task.spec.family,
                "source": task.spec.source,
                "origin": task.origin,
                "n_train": task.n_train,
                "n_test": task.n_test,
                "pooling": pooling,
                **r,
            }
            if cfg.baselines:
                t1 = time.perf_counter()
                x = pool(ta.acts, ta.lengths, pooling)
                key = (ta.key, pooling, cfg.l2, ctx.seed, task.n_train, cfg.n_permutations, cfg.floor_alpha)
                base_row, base_per = baselines(
                    key,
                    x[: task.n_train],
                    y[: task.n_train],
                    x[task.n_train :],
                    y[task.n_train :],
                    cfg.l2,
                    cfg.latent_chunk,
                    ctx.seed,
                    cfg.n_permutations,
                    perm_seed,
                    cfg.floor_alpha,
                )
                row.update(base_row)
                per.update(base_per)
                t_base += time.perf_counter() - t1
            if r["n_latents_scored"] == 0:
                ctx.notes.append(f"probing: every latent is dead on {name}; it scores its prior loss")
            rows.append(row)
            ids.append(f"{name}@{content_hash(task)}")
            for col, vals in per.items():
                columns.setdefault(col, []).append(vals)

        declared = {m.name for m in METRICS if m.estimator is not None}
        ks = cfg.top_k
        at_floor = [r["task"] for r in rows if r["at_floor"]]
        metrics: dict[str, Any] = {  # the declared ones (losses, floor, top-k, baselines) follow from the samples
            **{
                f"top_{k}_accuracy": mean_defined([r[f"top_{k}_accuracy"] for r in rows])
                for k in ks
                if f"top_{k}_accuracy" not in declared
            },
            "n_tasks_requested": prep.n_requested,
            "n_tasks_scored": len(rows),
            "n_tasks_skipped": len(prep.skipped),
            "n_tasks_at_floor": len(at_floor) if cfg.n_permutations > 0 else None,
            "n_tasks_no_live_latents": sum(r["n_latents_scored"] == 0 for r in rows),
            "n_latents_scored_mean": mean_defined([r["n_latents_scored"] for r in rows]),
            "n_permutations": cfg.n_permutations,
            "d_sae": int(ctx.sae.d_sae),
        }
        details: dict[str, Any] = {
            "skipped": prep.skipped,
            "pooling": cfg.pooling,
            "pooling_by_task": {r["task"]: r["pooling"] for r in rows},
            "max_tokens": cfg.max_tokens,
            "truncation": "left (keep each example's last max_tokens-1 tokens), BOS prepended and excluded from "
            "pooling",
            "probe_l2": cfg.l2,
            "selection": "each task's latent (and top-k latents) chosen on train; only the chosen probe is scored "
            "on test",
            "noise_floor": f"the same procedure on {cfg.n_permutations} seeded shuffles of the train labels per task; "
            f"at the floor: permutation p-value > {cfg.floor_alpha}",
            "heldout_probe_loss_by_task": {r["task"]: r["heldout_probe_loss"] for r in rows},
            "noise_floor_by_task": {r["task"]: r["noise_floor"] for r in rows},
            "tasks_at_floor": at_floor,
            "tasks": rows,
            "model_forward_batches": prep.forward_batches,
        }
        timing = {
            **prep.timing,
            "sae_encode_s": t_enc,
            "probe_fit_s": t_1d + t_topk,
            "probe_1d_s": t_1d,
            "probe_topk_s": t_topk,
            "baselines_s": t_base,
        }
        if not rows:
            ctx.notes.append("probing: no task could be scored; see 'skipped' for the reasons")
        samples = {"task": Samples("task", ids, columns)} if rows else {}
        return EvalOutput(metrics, details, samples=samples, timing=timing)
