"""``--evals sparse_probing``: SAEBench 0.6.0's sparse probing, its procedure on its 8 datasets.

SAEBench's ``evals/sparse_probing/main.py``, end to end, for one SAE as SAEBench evaluates it in a
fresh run (``run_eval_single_sae``; one torch generator seeded with the seed and drawn in its order
through every dataset, :mod:`saebench.probes.saebench_probes`). Per dataset
(:mod:`saebench.tasks.saebench_data`: Bias in Bios class sets 1-3, Amazon categories and sentiment,
GitHub code languages, AG News, Europarl languages; read from the local layout or the hub):

- the texts' activations, SAEBench's tokenization and mean pool
  (:mod:`saebench.pipeline.fixed_rows`: BOS + the first ``context_length - 1`` tokens, BOS/pad/EOS
  masked); per class a one-vs-rest probe set (negatives drawn from the other classes);
- ``llm_test_accuracy``: a torch probe on the pooled residual (AdamW, batch 250, 100 epochs, lr
  1e-2, early stopping after 10 epochs without a better *test* accuracy, that best kept);
  ``llm_top_{k}_test_accuracy``: sklearn ``LogisticRegression`` on the k residual dimensions with the
  largest class-mean gap (raw inputs, no standardisation);
- ``sae_test_accuracy`` and ``sae_top_{k}_test_accuracy``: the same on the SAE's mean-pooled latents;
- per dataset the mean over its classes; reported the mean over datasets (unit ``sparse_probing_dataset``,
  a two-level bootstrap over datasets and classes).

SAEBench's names are carried only with its data and every number-changing setting at its default
(seed and batch sizes aside); otherwise the same numbers carry ours (``sp_*``). Without the data:
one line naming the missing files and the layout, exit 2. Our own sparse probing on offline tasks
is ``--evals probing`` (Gao et al.'s 61 tasks) and ``--evals sae_probes``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from saebench.errors import SaebenchError
from saebench.evaluators.base import EvalConfig, EvalContext, EvalOutput, Metric
from saebench.pipeline import ActivationPipeline
from saebench.stats import MeanOfMeans, Samples

SB_DATASETS = [
    "LabHC/bias_in_bios_class_set1", "LabHC/bias_in_bios_class_set2", "LabHC/bias_in_bios_class_set3",
    "canrager/amazon_reviews_mcauley_1and5", "canrager/amazon_reviews_mcauley_1and5_sentiment",
    "codeparrot/github-code", "fancyzhx/ag_news", "Helsinki-NLP/europarl",
]  # fmt: skip
K_DECLARED = (1, 2, 5, 10, 20, 50, 100)  # SAEBench's output fields
SB_UNIT, VARIANT_UNIT = "sparse_probing_dataset", "sp_dataset"
SB_DEFAULTS: dict[str, Any] = {
    "dataset_names": SB_DATASETS,
    "probe_train_set_size": 4000,
    "probe_test_set_size": 1000,
    "context_length": 128,
    "k_values": [1, 2, 5],
}
GPU_PROBE = {"batch_size": 250, "epochs": 100, "lr": 1e-2, "patience": 10}  # train_probe_on_activations' settings


class SparseProbingConfig(EvalConfig):
    """SAEBench's ``SparseProbingEvalConfig`` (its names and defaults) and where its data lives."""

    data_dir: str | None = None  # the local layout (docs/saebench_mode.md#data), else $SAEBENCH_DATA_DIR
    use_hub: bool = False
    dataset_names: list[str] = list(SB_DATASETS)
    probe_train_set_size: int = 4000
    probe_test_set_size: int = 1000
    context_length: int = 128
    sae_batch_size: int = 125
    llm_batch_size: int = 32
    k_values: list[int] = [1, 2, 5]
    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}


def metric_names(sb: bool) -> list[str]:
    """SAEBench's metric names, or ours (``sp_*``) for the same quantities."""
    base = ["llm_test_accuracy", *[f"llm_top_{k}_test_accuracy" for k in K_DECLARED], "sae_test_accuracy",
            *[f"sae_top_{k}_test_accuracy" for k in K_DECLARED]]  # fmt: skip
    return base if sb else [variant_name(n) for n in base]


def variant_name(name: str) -> str:
    """``sae_top_1_test_accuracy`` -> ``sp_sae_top_1_accuracy``."""
    return "sp_" + name.replace("_test_accuracy", "_accuracy")


def _declare() -> tuple[Metric, ...]:
    out = []
    for sb in (True, False):
        for name, key in zip(metric_names(sb), metric_names(True), strict=True):
            head = key == "sae_top_1_test_accuracy"
            what = "SAE latents" if key.startswith("sae") else "the residual stream"
            k = key.split("_")[2] if "_top_" in key else "all"
            out.append(
                Metric(
                    name,
                    f"test accuracy of one-vs-rest probes on {k} dimensions of {what}, mean over classes then "
                    + ("datasets (SAEBench's procedure and data)" if sb else "datasets (SAEBench's procedure, other "
                       "settings)"),
                    "up",
                    head,
                    "",
                    ("sparse probing top-1 (SAEBench)" if sb else "sparse probing top-1") if head else "",
                    0.01,
                    MeanOfMeans(SB_UNIT if sb else VARIANT_UNIT, name),
                )
            )  # fmt: skip
    return (*out, Metric("n_datasets", "datasets scored"), Metric("d_sae", "latents of the SAE"))


METRICS = _declare()


def naming(cfg: SparseProbingConfig) -> dict[str, Any]:
    changed = [f"{k}={getattr(cfg, k)!r}" for k, v in SB_DEFAULTS.items() if getattr(cfg, k) != v]
    if changed:
        return {"names": "variant", "mode": "saebench", "data": "saebench",
                "why": "SAEBench's procedure and data with other settings: " + ", ".join(changed)}  # fmt: skip
    return {"names": "saebench", "mode": "saebench", "data": "saebench",
            "why": "SAEBench's procedure, data and settings (seed and batch sizes aside)"}  # fmt: skip


@dataclass
class Dataset:
    """One dataset's SAE-independent part: per class key the activations of train and test texts."""

    name: str
    train: dict[str, Any]  # class -> RowActs
    test: dict[str, Any]
    xtr: dict[str, torch.Tensor]  # pooled residual
    xte: dict[str, torch.Tensor]
    sample_id: str


def _check(cfg: SparseProbingConfig) -> None:
    from saebench.tasks.saebench_data import CHOSEN_CLASSES, require

    bad = [d for d in cfg.dataset_names if d not in CHOSEN_CLASSES]
    if bad or not cfg.dataset_names:
        raise SaebenchError(
            f"sparse_probing: dataset_names {bad or '[]'} unknown; SAEBench's: {', '.join(SB_DATASETS)}"
        )
    if min(cfg.probe_train_set_size, cfg.probe_test_set_size, cfg.sae_batch_size, cfg.llm_batch_size) < 1 or (
        cfg.context_length < 2 or not cfg.k_values or min(cfg.k_values) < 1
    ):
        raise SaebenchError("sparse_probing: sizes, batch sizes and k_values must be >= 1; fix --set")
    require("sparse_probing", cfg.dataset_names, cfg.data_dir, cfg.use_hub)


def prepare(pipe: ActivationPipeline, cfg: SparseProbingConfig, seed: int) -> list[Dataset]:
    key = "sparse-probing:" + json.dumps([cfg.model_dump(), seed], sort_keys=True, default=str)
    return pipe.shared(key, lambda: _prepare(pipe, cfg, seed))


def _prepare(pipe: ActivationPipeline, cfg: SparseProbingConfig, seed: int) -> list[Dataset]:
    from saebench.pipeline.fixed_rows import row_activations
    from saebench.probes.saebench_probes import pool_mean
    from saebench.tasks.saebench_data import multi_label_data

    out = []
    for name in cfg.dataset_names:
        tr, te = multi_label_data(name, cfg.probe_train_set_size, cfg.probe_test_set_size, seed, cfg.data_dir,
                                  cfg.use_hub)  # fmt: skip
        label = name.replace("/", "_")
        a_tr = row_activations(pipe, tr, cfg.context_length, cfg.llm_batch_size, label + "-train")
        a_te = row_activations(pipe, te, cfg.context_length, cfg.llm_batch_size, label + "-test")
        h = hashlib.sha256(json.dumps([name, seed, cfg.probe_train_set_size, cfg.probe_test_set_size]).encode())
        for texts in (tr, te):
            for k, v in texts.items():
                h.update(k.encode() + b"\x1f" + "\x1e".join(v).encode())
        xtr = {k: pool_mean(v.acts, v.mask) for k, v in a_tr.items()}
        xte = {k: pool_mean(v.acts, v.mask) for k, v in a_te.items()}
        out.append(Dataset(name, a_tr, a_te, xtr, xte, f"{name}@{h.hexdigest()[:16]}"))
    return out


def probe_accuracies(
    xtr: dict[str, torch.Tensor], xte: dict[str, torch.Tensor], gen: torch.Generator, top_k: int | None
) -> dict[str, float]:
    """SAEBench's ``train_probe_on_activations``: per class its selections (draws), then a torch
    probe (``top_k`` None) or sklearn on the top-k mean-gap dimensions; test accuracy per class."""
    from saebench.probes.saebench_probes import select, top_k_mean_diff, train_sklearn_probe, train_torch_probe

    ntr, nte = {k: len(v) for k, v in xtr.items()}, {k: len(v) for k, v in xte.items()}
    accs = {}
    for c in xtr:
        s_tr, s_te = select(ntr, c, False, gen), select(nte, c, False, gen)
        x_tr, x_te = s_tr.gather(xtr), s_te.gather(xte)
        if top_k is None:
            p = GPU_PROBE
            accs[c] = train_torch_probe(x_tr, s_tr.labels, x_te, s_te.labels, gen, p["batch_size"], p["epochs"],
                                        p["lr"], None, p["patience"]).test_accuracy  # fmt: skip
        else:
            keep = top_k_mean_diff(x_tr, s_tr.labels, top_k)
            accs[c] = train_sklearn_probe(x_tr[:, keep], s_tr.labels, x_te[:, keep], s_te.labels)[1]
    return accs


def score(datasets: list[Dataset], sae: Any, label: str, cfg: SparseProbingConfig, seed: int, device: Any) -> dict:
    """Per dataset and class, SAEBench's accuracies for this SAE (one generator through all)."""
    from saebench.probes.saebench_probes import generator, pool_mean
    from saebench.probes.sparse_probing import encoder

    enc = encoder(sae, label)
    gen = generator(seed)
    out = {}
    for d in datasets:
        per: dict[str, dict[str, float]] = {"llm_test_accuracy": probe_accuracies(d.xtr, d.xte, gen, None)}
        for k in cfg.k_values:
            per[f"llm_top_{k}_test_accuracy"] = probe_accuracies(d.xtr, d.xte, gen, k)
        ztr = {c: pool_mean(v.acts, v.mask, fn=enc, device=device, rows=cfg.sae_batch_size) for c, v in d.train.items()}
        zte = {c: pool_mean(v.acts, v.mask, fn=enc, device=device, rows=cfg.sae_batch_size) for c, v in d.test.items()}
        per["sae_test_accuracy"] = probe_accuracies(ztr, zte, gen, None)
        for k in cfg.k_values:
            per[f"sae_top_{k}_test_accuracy"] = probe_accuracies(ztr, zte, gen, k)
        out[d.name] = per
    return out


class SparseProbingEvaluator:
    """``--evals sparse_probing``: SAEBench's sparse probing (see module doc)."""

    name = "sparse_probing"
    needs: frozenset[str] = frozenset()
    Config = SparseProbingConfig
    metrics = METRICS

    def preflight(self, cfg: EvalConfig) -> None:
        assert isinstance(cfg, SparseProbingConfig)
        _check(cfg)

    def prepare(self, pipe: ActivationPipeline, cfg: EvalConfig, seed: int) -> None:
        assert isinstance(cfg, SparseProbingConfig)
        _check(cfg)
        prepare(pipe, cfg, seed)

    def run(self, ctx: EvalContext, cfg: EvalConfig) -> EvalOutput:
        assert isinstance(cfg, SparseProbingConfig)
        datasets = prepare(ctx.pipeline, cfg, ctx.seed)
        t0 = time.perf_counter()
        per = score(datasets, ctx.sae, ctx.sae_name, cfg, ctx.seed, ctx.model.device)
        names = naming(cfg)
        sb = names["names"] == "saebench"
        unit = SB_UNIT if sb else VARIANT_UNIT
        keys = [k for k in metric_names(True) if any(k in p for p in per.values())]
        out_name = {k: k if sb else variant_name(k) for k in keys}
        columns = {out_name[k]: [list(per[d.name][k].values()) for d in datasets] for k in keys}
        steps = [1.0 / (len(d.test[c].mask) * 2 * len(d.test) * len(datasets)) for d in datasets for c in d.test]
        from saebench.evaluators.scr_tpp_saebench import resolution_entry

        head = out_name.get("sae_top_1_test_accuracy")
        details = {
            "datasets": [{"dataset_name": d.name, **{out_name[k]: per[d.name][k] for k in keys}} for d in datasets],
            "naming": names,
            "resolution": {head: resolution_entry(head, "text", steps, 0.01, f"over {len(datasets)} datasets")}
            if head
            else {},
            "pooling": "SAEBench's: mean over the unmasked tokens of BOS + a text's first context_length - 1 tokens",
        }
        if not sb:
            ctx.notes.append(f"sparse_probing: our names, not SAEBench's: {names['why']}")
        samples = {unit: Samples(unit, [d.sample_id for d in datasets], columns)}
        metrics: dict[str, Any] = {"n_datasets": len(datasets), "d_sae": int(ctx.sae.d_sae)}
        return EvalOutput(metrics, details, samples=samples, timing={"sparse_probing_sae_s": time.perf_counter() - t0})
