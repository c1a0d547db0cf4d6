"""``mode=saebench`` of ``--evals scr`` and ``--evals tpp``: SAEBench 0.6.0's procedure end to end.

One function serves both (``perform_scr`` as in SAEBench's ``evals/scr_and_tpp/main.py``):

1. **data** (:mod:`saebench.tasks.saebench_data`): Bias in Bios and Amazon reviews from the local
   layout or the hub, sampled by SAEBench's own rules (SCR: per dataset and class pair the six
   keys of ``get_spurious_corr_data``; TPP: ``get_balanced_dataset`` and the chosen classes);
2. **activations** (:mod:`saebench.pipeline.fixed_rows`): BOS + the first ``context_length - 1``
   tokens, padded, SAEBench's batches, BOS/pad/EOS masked, mean-pooled over the full row;
3. **probes** (:mod:`saebench.probes.saebench_probes`): one torch generator seeded with the seed,
   drawn in SAEBench's order through every run: per key the train and test selections and an
   AdamW probe (batch 16, 20 epochs, lr 1e-3, L1 1e-3, the best-test-accuracy epoch), then the
   clean accuracies, then every selection SAEBench draws while scoring an SAE (node-effect sets,
   and for each ablated class and N the accuracy sets: TPP's negatives are redrawn per
   evaluation, as SAEBench does). Those draws do not depend on the SAE, so they are made once per
   hook and every SAE is scored on the sets SAEBench uses for the SAE it evaluates first with
   fresh artifacts (SAEBench reuses saved probes for later SAEs, whose draws then start over);
4. **per SAE**: node effects from running sums in ``sae_batch_size`` chunks (float32, SAEBench's
   order), ``torch.topk`` of them, ablation with the error term kept *including* the masked
   positions, which SAEBench encodes and ablates too (:class:`saebench.probes.scr_tpp.SaeAblation`
   with ``masks``: the same code as the variant), accuracies on the drawn sets,
   ``get_scr_plotting_dict`` / ``create_tpp_plotting_dict``, then the mean over runs (SCR) or over
   datasets of per-dataset class means (TPP).

``tests/test_saebench_mode.py`` runs SAEBench's ``run_eval_single_sae`` (its data, probe training
and scoring) on the same model, SAE, local files and seed and holds every number to ours.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import model_validator

from saebench.errors import SaebenchError
from saebench.evaluators.base import EvalConfig
from saebench.pipeline import ActivationPipeline

INTENDED, SPURIOUS, BIASED = "professor / nurse", "male / female", "male_professor / female_nurse"
SCR_CHOSEN = [SPURIOUS, INTENDED, BIASED]  # SAEBench's list(PAIRED_CLASS_KEYS)


@dataclass(frozen=True)
class Procedure:
    """SAEBench's ``ScrAndTppEvalConfig`` (its names) plus where the data lives; built only by
    :func:`procedure` from the evaluator's config, which holds SAEBench's defaults once."""

    perform_scr: bool
    dataset_names: tuple[str, ...]
    column1_vals_lookup: dict[str, list[tuple[str, str]]]
    n_values: tuple[int, ...]
    seed: int
    train_set_size: int
    test_set_size: int
    context_length: int
    probe_train_batch_size: int
    probe_test_batch_size: int
    probe_epochs: int
    probe_lr: float
    probe_l1_penalty: float
    early_stopping_patience: int
    sae_batch_size: int
    llm_batch_size: int
    data_dir: str | None
    use_hub: bool

    def runs(self) -> list[tuple[str, str, tuple[str, str] | None]]:
        """``(run name, dataset, class pair)`` in SAEBench's order."""
        if not self.perform_scr:
            return [(f"{d}_tpp", d, None) for d in self.dataset_names]
        return [(f"{d}_scr_{a}_{b}", d, (a, b)) for d in self.dataset_names for a, b in self.column1_vals_lookup[d]]


@dataclass
class Run:
    """One SAEBench run's SAE-independent part: texts, activations, probes, clean accuracies and
    every selection SAEBench draws while it scores an SAE."""

    name: str
    dataset: str
    train: dict[str, Any]  # key -> RowActs
    test: dict[str, Any]
    probes: dict[str, Any]  # key -> TorchProbe
    clean: dict[str, float]  # SAEBench's llm_test_accuracies (its keys)
    effect_sets: dict[str, Any]  # class -> Selection (train)
    accuracy_sets: dict[str, dict[int, list[tuple[str, str, Any]]]]  # class -> N -> [(name, probe, Selection)]
    chosen: list[str]
    n_texts: dict[str, int]
    sample_id: str
    epochs: dict[str, int] = field(default_factory=dict)


@dataclass
class Prepared:
    runs: list[Run]
    forward_batches: int
    timing: dict[str, float]


def prepare(pipe: ActivationPipeline, proc: Procedure) -> Prepared:
    """Every run's SAE-independent part, once per pipeline (memoised)."""
    key = "saebench-scr-tpp:" + json.dumps(proc.__dict__, sort_keys=True, default=str)
    return pipe.shared(key, lambda: _prepare(pipe, proc))


def _accuracy_sets(
    sizes: dict[str, int], chosen: list[str], scr: bool, gen: torch.Generator
) -> list[tuple[str, str, Any]]:
    """SAEBench's ``get_probe_test_accuracy`` draws: ``(accuracy name, probe key, selection)``."""
    from saebench.probes.saebench_probes import PAIRED_KEYS, select

    out = [(c, c, select(sizes, c, scr, gen)) for c in chosen]
    if scr:
        for c in chosen:
            if c in PAIRED_KEYS:
                sel = select(sizes, c, True, gen)
                out += [(f"{o} probe on {c} data", o, sel) for o in PAIRED_KEYS if o != c]
    return out


def _prepare(pipe: ActivationPipeline, proc: Procedure) -> Prepared:
    from saebench.pipeline.fixed_rows import row_activations
    from saebench.probes.saebench_probes import accuracy, generator, pool_mean, select, train_torch_probe
    from saebench.tasks.saebench_data import CHOSEN_CLASSES, multi_label_data, scr_data

    timing = {"data_s": 0.0, "activations_s": 0.0, "probes_s": 0.0}
    before = pipe.counters.task_forward_batches
    gen = generator(proc.seed)
    runs = []
    for name, dataset, pair in proc.runs():
        t0 = time.perf_counter()
        if pair is not None:
            tr_texts, te_texts = scr_data(
                dataset, pair, proc.train_set_size, proc.test_set_size, proc.seed, proc.data_dir, proc.use_hub
            )
            chosen = list(SCR_CHOSEN)
        else:
            tr_texts, te_texts = multi_label_data(
                dataset, proc.train_set_size, proc.test_set_size, proc.seed, proc.data_dir, proc.use_hub
            )
            chosen = list(CHOSEN_CLASSES[dataset])
        t1 = time.perf_counter()
        label = name.replace("/", "_")
        train = row_activations(pipe, {f"tr:{k}": v for k, v in tr_texts.items()}, proc.context_length,
                                proc.llm_batch_size, label)  # fmt: skip
        test = row_activations(pipe, {f"te:{k}": v for k, v in te_texts.items()}, proc.context_length,
                               proc.llm_batch_size, label)  # fmt: skip
        train = {k[3:]: v for k, v in train.items()}
        test = {k[3:]: v for k, v in test.items()}
        t2 = time.perf_counter()
        xtr = {k: pool_mean(v.acts, v.mask) for k, v in train.items()}
        xte = {k: pool_mean(v.acts, v.mask) for k, v in test.items()}
        ntr = {k: len(v) for k, v in tr_texts.items()}
        nte = {k: len(v) for k, v in te_texts.items()}
        scr = proc.perform_scr
        probes, epochs = {}, {}
        for k in tr_texts:  # train_probe_on_activations: every key, in order
            s_tr, s_te = select(ntr, k, scr, gen), select(nte, k, scr, gen)
            probes[k] = train_torch_probe(
                s_tr.gather(xtr), s_tr.labels, s_te.gather(xte), s_te.labels, gen, proc.probe_train_batch_size,
                proc.probe_epochs, proc.probe_lr, proc.probe_l1_penalty, proc.early_stopping_patience,
            )  # fmt: skip
            epochs[k] = probes[k].best_epoch
        clean = {
            acc: accuracy(probes[p].net, sel.gather(xte), sel.labels, proc.probe_test_batch_size)
            for acc, p, sel in _accuracy_sets(nte, chosen, scr, gen)
        }
        effect_sets = {c: select(ntr, c, scr, gen) for c in chosen}  # get_all_node_effects_for_one_sae
        accuracy_sets = {c: {n: _accuracy_sets(nte, chosen, scr, gen) for n in proc.n_values} for c in chosen}
        timing["data_s"] += t1 - t0
        timing["activations_s"] += t2 - t1
        timing["probes_s"] += time.perf_counter() - t2
        h = hashlib.sha256(json.dumps([name, proc.seed, proc.train_set_size, proc.test_set_size]).encode())
        for texts in (tr_texts, te_texts):
            for k, v in texts.items():
                h.update(k.encode() + b"\x1f" + "\x1e".join(v).encode())
        runs.append(
            Run(name, dataset, train, test, probes, clean, effect_sets, accuracy_sets, chosen,
                {k: len(v) for k, v in te_texts.items()}, f"{name}@{h.hexdigest()[:16]}", epochs)
        )  # fmt: skip
    return Prepared(runs, pipe.counters.task_forward_batches - before, timing)


def _effects(zbar: dict[str, torch.Tensor], sel: Any, dot: torch.Tensor, scr: bool, batch: int) -> torch.Tensor:
    """SAEBench's ``get_effects_per_class_precomputed_acts`` from pooled latents ``zbar[key]``."""
    from saebench.probes.scr_tpp import node_effects

    d_sae = dot.numel()
    pos_sum, neg_sum = torch.zeros(d_sae), torch.zeros(d_sae)
    n_pos = n_neg = 0
    for i in range(0, len(sel.rows), batch):
        z = torch.stack([zbar[k][j] for k, j in sel.rows[i : i + batch]])
        y = sel.labels[i : i + batch]
        pos_sum += z[y == 1].sum(dim=0)
        neg_sum += z[y == 0].sum(dim=0)
        n_pos, n_neg = n_pos + int((y == 1).sum()), n_neg + int((y == 0).sum())
    pos = pos_sum / n_pos if n_pos else pos_sum
    neg = neg_sum / n_neg if n_neg else neg_sum
    return node_effects(pos, neg, dot, scr)


def top_n(effects: torch.Tensor, n: int) -> torch.Tensor:
    """SAEBench's ``select_top_n_features``: ``torch.topk`` of ``min(n, #non-zero)`` effects."""
    mask = torch.zeros(effects.numel(), dtype=torch.bool)
    k = min(n, int((effects != 0).sum()))
    if k > 0:
        mask[torch.topk(effects, k).indices] = True
    return mask


def score_run(run: Run, sae: Any, label: str, proc: Procedure, device: Any, path: str = "auto") -> dict[str, Any]:
    """One SAE on one run: SAEBench's ablated accuracies ``[class][N][name]`` and the latents ablated."""
    from saebench.probes.saebench_probes import accuracy_from_logits, pool_mean
    from saebench.probes.scr_tpp import SaeAblation
    from saebench.probes.sparse_probing import encoder

    enc = encoder(sae, label)
    d_sae = int(sae.d_sae)
    ns = [n for n in proc.n_values if n <= d_sae]
    keys = list(run.test)
    offsets, start = {}, 0
    for k in keys:
        offsets[k], start = start, start + run.test[k].mask.shape[0]
    acts = torch.cat([run.test[k].acts for k in keys])
    masks = torch.cat([run.test[k].mask for k in keys])
    lengths = masks.sum(dim=1)
    probe_keys = list(run.chosen)
    w = torch.stack([run.probes[p].w for p in probe_keys], 1).double()
    b = torch.tensor([run.probes[p].b for p in probe_keys], dtype=torch.float64)
    xbar = pool_mean(acts, masks)
    abl = SaeAblation(sae, enc, acts, lengths, xbar, w, b, path, 1024, device, masks=masks)
    w_dec = getattr(sae, "W_dec", None)
    zbar_tr = {
        k: pool_mean(v.acts, v.mask, fn=enc, device=device, rows=proc.sae_batch_size) for k, v in run.train.items()
    }
    ablated: dict[str, dict[int, dict[str, float]]] = {}
    latents: dict[str, list[int]] = {}
    targets = [SPURIOUS, INTENDED] if proc.perform_scr else run.chosen
    every = list(range(int(lengths.numel())))
    for c in targets:
        if isinstance(w_dec, torch.Tensor) and tuple(w_dec.shape) == (d_sae, w.shape[0]):
            dot = (run.probes[c].net.weight.detach().float() @ w_dec.detach().float().cpu().T).squeeze(0)
        else:
            dot = abl.dots[:, probe_keys.index(c)].float()
        eff = _effects(zbar_tr, run.effect_sets[c], dot, proc.perform_scr, proc.sae_batch_size)
        latents[c] = [int(i) for i in torch.nonzero(top_n(eff, 20)).flatten()] if d_sae >= 20 else []
        if not ns:
            continue
        logits = abl.ablated_logits(every, torch.stack([top_n(eff, n) for n in ns]))  # [M, n_test, P]
        ablated[c] = {}
        for j, n in enumerate(ns):
            accs = {}
            for acc_name, p, sel in run.accuracy_sets[c][n]:
                if proc.perform_scr and p != BIASED:
                    continue  # only the biased probe's accuracies enter SCR
                ids = torch.as_tensor([offsets[k] + i for k, i in sel.rows])
                accs[acc_name] = accuracy_from_logits(logits[j, ids, probe_keys.index(p)].float(), sel.labels)
            ablated[c][n] = accs
    return {"ablated": ablated, "latents": latents, "path": abl.path, "path_reason": abl.reason}


def scr_result(run: Run, ablated: dict[str, dict[int, dict[str, float]]]) -> dict[str, float | None]:
    """SAEBench's ``get_scr_plotting_dict`` for one run."""
    from saebench.probes.scr_tpp import scr_scores

    c = run.clean
    on_int, on_spur = f"{BIASED} probe on {INTENDED} data", f"{BIASED} probe on {SPURIOUS} data"
    clean = {"intended": c[INTENDED], "spurious": c[SPURIOUS], "biased_on_intended": c[on_int],
             "biased_on_spurious": c[on_spur]}  # fmt: skip
    abl = {
        "dir1": {n: a[on_int] for n, a in ablated.get(SPURIOUS, {}).items()},
        "dir2": {n: a[on_spur] for n, a in ablated.get(INTENDED, {}).items()},
    }
    return scr_scores(clean, abl)


def tpp_result(run: Run, ablated: dict[str, dict[int, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """SAEBench's ``create_tpp_plotting_dict`` per class for one run."""
    from saebench.probes.scr_tpp import tpp_scores

    if not ablated:
        return {c: {} for c in run.chosen}
    return tpp_scores({c: run.clean[c] for c in run.chosen}, ablated)


# -- configuration shared by the two evaluators ---------------------------------------------------

SB_DATASETS = ["LabHC/bias_in_bios_class_set1", "canrager/amazon_reviews_mcauley_1and5"]
SB_N_VALUES = [2, 5, 10, 20, 50, 100, 500]
# settings that change numbers (SAEBench's defaults); seed and batch sizes only change float order
SB_DEFAULTS: dict[str, Any] = {
    "dataset_names": SB_DATASETS,
    "train_set_size": 4000,
    "test_set_size": 1000,
    "context_length": 128,
    "probe_train_batch_size": 16,
    "probe_epochs": 20,
    "probe_lr": 1e-3,
    "probe_l1_penalty": 1e-3,
    "early_stopping_patience": 20,
    "n_values": SB_N_VALUES,
}


class SaebenchFields(EvalConfig):
    """Mode and data fields of ``scr`` and ``tpp``, and SAEBench's own settings (its names and
    defaults) that ``mode=saebench`` runs with; ``variant`` ignores the SAEBench settings."""

    mode: Literal["variant", "saebench"] = "variant"
    data: Literal["offline", "saebench"] | None = None  # None: saebench in saebench mode or with use_hub
    data_dir: str | None = None  # SAEBench's datasets in the local layout (else $SAEBENCH_DATA_DIR)
    use_hub: bool = False  # datasets.load_dataset from the hub where the local files are missing
    dataset_names: list[str] = list(SB_DATASETS)
    train_set_size: int = 4000
    test_set_size: int = 1000
    context_length: int = 128
    probe_train_batch_size: int = 16
    probe_test_batch_size: int = 500
    probe_epochs: int = 20
    probe_lr: float = 1e-3
    probe_l1_penalty: float = 1e-3
    early_stopping_patience: int = 20
    sae_batch_size: int = 125
    llm_batch_size: int = 32

    @model_validator(mode="after")
    def _resolve_data(self) -> SaebenchFields:
        if self.data is None:
            self.data = "saebench" if (self.mode == "saebench" or self.use_hub) else "offline"
        return self


def check_mode(cfg: Any, evaluator: str) -> None:
    """One-line errors for mode/data settings, and SAEBench's data present (exit 2, before any work)."""
    from saebench.tasks.saebench_data import CHOSEN_CLASSES, SCR_PAIRS, require

    if cfg.mode == "saebench":
        if cfg.data != "saebench":
            raise SaebenchError(
                f"{evaluator}: mode=saebench runs on SAEBench's datasets (data=saebench); for the offline stand-ins "
                f"use mode=variant (docs/saebench_mode.md)"
            )
        known = SCR_PAIRS if evaluator == "scr" else CHOSEN_CLASSES
        bad = [d for d in cfg.dataset_names if d not in known]
        if bad or not cfg.dataset_names:
            raise SaebenchError(f"{evaluator}: dataset_names {bad or '[]'} unknown; SAEBench's: {', '.join(known)}")
        sizes = ("train_set_size", "test_set_size", "probe_train_batch_size", "probe_epochs", "probe_test_batch_size",
                 "sae_batch_size", "llm_batch_size")  # fmt: skip
        small = [k for k in sizes if getattr(cfg, k) < 1]
        if small or cfg.context_length < 2:
            raise SaebenchError(f"{evaluator}: {', '.join(small) or 'context_length'} too small; fix --set")
        require(evaluator, cfg.dataset_names, cfg.data_dir, cfg.use_hub)  # (mode=variant skips a pair, with why)


def naming(cfg: Any, extra_changed: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Which names a result carries: SAEBench's only for its procedure, data and settings
    (``extra_changed``: an evaluator's own settings that differ from SAEBench's)."""
    if cfg.mode != "saebench":
        why = "mode=variant: our probes" + (" on SAEBench's data" if cfg.data == "saebench" else " and offline data")
        return {"names": "variant", "mode": cfg.mode, "data": cfg.data, "why": why}
    changed = [f"{k}={getattr(cfg, k)!r}" for k, v in SB_DEFAULTS.items() if getattr(cfg, k) != v]
    changed += list(extra_changed)
    if changed:
        return {"names": "variant", "mode": cfg.mode, "data": cfg.data,
                "why": "SAEBench's procedure and data with other settings: " + ", ".join(changed)}  # fmt: skip
    return {"names": "saebench", "mode": cfg.mode, "data": cfg.data,
            "why": "SAEBench's procedure, data and settings (seed and batch sizes aside)"}  # fmt: skip


def procedure(cfg: Any, seed: int, scr: bool) -> Procedure:
    from saebench.tasks.saebench_data import SCR_PAIRS

    lookup = getattr(cfg, "column1_vals_lookup", None) or SCR_PAIRS
    return Procedure(
        scr, tuple(cfg.dataset_names), {k: [tuple(p) for p in v] for k, v in lookup.items()}, tuple(cfg.n_values),
        seed, cfg.train_set_size, cfg.test_set_size, cfg.context_length, cfg.probe_train_batch_size,
        cfg.probe_test_batch_size, cfg.probe_epochs, cfg.probe_lr, cfg.probe_l1_penalty, cfg.early_stopping_patience,
        cfg.sae_batch_size, cfg.llm_batch_size, cfg.data_dir, cfg.use_hub,
    )  # fmt: skip


def text_step(n_texts: int, gap: float | None, n_units: int) -> float | None:
    """How much one text moves a headline that is the mean over ``n_units`` of
    ``(A - A_0) / gap`` with A an accuracy over ``n_texts`` texts: ``1 / (n_texts · |gap| · n_units)``
    (None where the score is pinned to 0 because the gap is below SAEBench's 0.001)."""
    if gap is None or abs(gap) < 0.001 or n_texts < 1 or n_units < 1:
        return None
    return 1.0 / (n_texts * abs(gap) * n_units)


def resolution_entry(metric: str, unit: str, steps: list[float | None], min_effect: float, what: str) -> dict:
    """The ``details.resolution`` entry of one headline: the median and the largest one-unit step over
    the scored units (``steps`` already divided by the unit count). ``resolves`` when even the largest
    is below the minimum effect: no single text / word can make a difference the gate counts."""
    vals = sorted(s for s in steps if s is not None)
    if not vals:
        return {"metric": metric, "unit": unit, "step": None, "step_max": None, "min_effect": min_effect,
                "resolves": False, "why": f"no {unit} can move it (every score is pinned or undefined)"}  # fmt: skip
    med = vals[len(vals) // 2] if len(vals) % 2 else (vals[len(vals) // 2 - 1] + vals[len(vals) // 2]) / 2
    ok = vals[-1] < min_effect
    why = (f"one {unit} moves {metric} by up to {vals[-1]:.3g} (median {med:.3g}) {what}; "
           + ("below" if ok else "not below") + f" its minimum effect {min_effect:g}")  # fmt: skip
    return {"metric": metric, "unit": unit, "step": med, "step_max": vals[-1], "min_effect": min_effect,
            "resolves": ok, "why": why}  # fmt: skip
