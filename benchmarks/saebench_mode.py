"""Agreement and cost of ``mode=saebench`` against SAEBench 0.6.0's own code, and of our variant, on the same input.

    python benchmarks/saebench_mode.py [--evals scr,tpp,sparse_probing,absorption] [--threads 1]
                                       [--per-cell 120] [--vocab-per-letter 40]

Input: stand-in files in SAEBench's local layout (``crosscheck_saebench.write_layout``: synthetic Bias in
Bios and Amazon rows, ``--per-cell`` train rows per class and attribute), or for absorption a vocabulary
of ``--vocab-per-letter`` alphabetic tokens per first letter; the reference SAE; the embedded model;
SAEBench's context length (128) and N values. For each evaluator, each in a cold activation cache:

1. ours, ``mode=saebench`` (one ``evaluate``: data, model passes, probes, the SAE);
2. ours, the variant, on the same texts where it can read them (``data=saebench`` for SCR/TPP; the same
   vocabulary for absorption): our probes, our truncation;
3. SAEBench's own code on the same model, SAE, files and seed (``run_eval_single_sae`` for SCR, TPP and
   sparse probing; for absorption its two experiments, seeded, the vocabulary in our order), its model
   passes as SAEBench runs them (absorption: the whole model, as its ``run_with_cache`` does).

Prints the largest absolute difference between our SAEBench-mode numbers and SAEBench's over every
aggregate metric, and the wall seconds of the three with their ratios (measured in this one process).
Not a test; ratios are printed, never asserted.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import empty_activation_cache
from crosscheck_saebench import local_load_dataset, saebench_view, view_for_saebench, write_layout

HOOK = "blocks.6.hook_resid_post"
PAIRS = {"LabHC/bias_in_bios_class_set1": [("professor", "nurse"), ("architect", "journalist")]}


def timed(fn: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def ours(model: Any, sae: Any, ev: str, cfg: dict[str, Any], seed: int) -> tuple[Any, float]:
    from saebench.runner import evaluate

    with empty_activation_cache():
        run, wall = timed(lambda: evaluate(sae, model=model, hook=HOOK, evals=[ev], seed=seed, progress=False,
                                           eval_config={ev: cfg}, name="sae"))  # fmt: skip
    return run.results["sae"][ev], wall


def report(ev: str, mine: dict[str, float], theirs: dict[str, float], walls: dict[str, float | None]) -> None:
    common = [k for k in theirs if k in mine and isinstance(theirs[k], float) and mine[k] is not None]
    diff = max((abs(mine[k] - theirs[k]) for k in common), default=float("nan"))
    base = walls["saebench code"]
    parts = [f"{k} {v:.1f}s" + (f" ({v / base:.2f}x SAEBench)" if base else "") for k, v in walls.items() if v]
    print(f"{ev}: {len(common)} aggregate metrics, largest |ours - SAEBench| = {diff:.2e}; " + "; ".join(parts))


def bench_scr_tpp(model: Any, sae: Any, root: Path, scr: bool, per_cell: int, seed: int) -> None:
    import sae_bench.evals.scr_and_tpp.dataset_creation as dc
    import sae_bench.evals.scr_and_tpp.main as sb
    import sae_bench.sae_bench_utils.dataset_utils as du
    from sae_bench.evals.scr_and_tpp.eval_config import ScrAndTppEvalConfig

    from saebench.evaluators.scr import variant_name as scr_name
    from saebench.evaluators.tpp import variant_name as tpp_name

    ev = "scr" if scr else "tpp"
    train, test = (per_cell // 3) * 4 if scr else per_cell * 2, (per_cell // 8) * 4 if scr else per_cell // 2
    datasets = list(PAIRS) if scr else ["LabHC/bias_in_bios_class_set1", "canrager/amazon_reviews_mcauley_1and5"]
    cfg = {"mode": "saebench", "data_dir": str(root), "dataset_names": datasets, "train_set_size": train,
           "test_set_size": test, "llm_batch_size": 32}  # fmt: skip
    if scr:
        cfg["column1_vals_lookup"] = {k: [list(p) for p in v] for k, v in PAIRS.items()}
    mine, wall_mode = ours(model, sae, ev, cfg, seed)
    rename = scr_name if scr else tpp_name
    mine_sb = {k: mine.metrics.get(rename(k)) for k in sb_keys(scr)}
    per = 4 if scr else 2  # SAEBench's sizes count texts per probe: per quadrant (SCR) or per class (TPP)
    variant: dict[str, Any] = {"data": "saebench", "data_dir": str(root), "n_train": train // per,
                               "n_test": test // per, "max_tokens": 128}  # fmt: skip
    if scr:
        variant["pairs"] = ["bias_in_bios_professor_nurse", "bias_in_bios_architect_journalist"]
    else:
        variant["datasets"] = ["bias_in_bios_set1", "amazon_categories"]
    _, wall_variant = ours(model, sae, ev, variant, seed)
    sb_cfg = ScrAndTppEvalConfig(model_name="smollm2-135m", perform_scr=scr)
    for k, v in cfg.items():
        if hasattr(sb_cfg, k) and k not in ("column1_vals_lookup",):
            setattr(sb_cfg, k, v)
    if scr:
        sb_cfg.column1_vals_lookup = PAIRS
    sb_cfg.llm_dtype, sb_cfg.random_seed = "float32", seed
    dc.load_dataset = du.load_dataset = local_load_dataset(root)
    with saebench_view(model) as ht, torch.random.fork_rng(), tempfile.TemporaryDirectory() as art:
        (theirs, _), wall_sb = timed(lambda: sb.run_eval_single_sae(sb_cfg, view_for_saebench(sae), ht, "cpu", art,
                                                                   save_activations=False))  # fmt: skip
    report(ev, mine_sb, theirs, {"saebench code": wall_sb, "ours mode=saebench": wall_mode,
                                 "ours variant": wall_variant})  # fmt: skip


def sb_keys(scr: bool) -> list[str]:
    ns = (2, 5, 10, 20, 50, 100, 500)
    if scr:
        return [f"scr_{k}_threshold_{n}" for n in ns for k in ("dir1", "dir2", "metric")]
    return [
        f"tpp_threshold_{n}_{s}" for n in ns for s in ("total_metric", "intended_diff_only", "unintended_diff_only")
    ]


def bench_sparse_probing(model: Any, sae: Any, root: Path, per_cell: int, seed: int) -> None:
    import sae_bench.evals.sparse_probing.main as sp
    import sae_bench.evals.sparse_probing.probe_training as pt
    import sae_bench.sae_bench_utils.dataset_utils as du
    from sae_bench.evals.sparse_probing.eval_config import SparseProbingEvalConfig

    from saebench.evaluators.sparse_probing import variant_name

    names = ["LabHC/bias_in_bios_class_set1", "canrager/amazon_reviews_mcauley_1and5_sentiment"]
    small = {"dataset_names": names, "probe_train_set_size": per_cell * 2, "probe_test_set_size": per_cell // 2,
             "llm_batch_size": 32}  # fmt: skip
    mine, wall_mode = ours(model, sae, "sparse_probing", {**small, "data_dir": str(root)}, seed)
    du.load_dataset = local_load_dataset(root)
    pt.train_sklearn_probe = getattr(
        pt.train_sklearn_probe, "__wrapped__", pt.train_sklearn_probe
    )  # its jaxtyping check
    cfg = SparseProbingEvalConfig(model_name="smollm2-135m", random_seed=seed, llm_dtype="float32", **small)
    with saebench_view(model) as ht, torch.random.fork_rng(), tempfile.TemporaryDirectory() as art:
        (theirs, _), wall_sb = timed(lambda: sp.run_eval_single_sae(cfg, view_for_saebench(sae), ht, "cpu", art,
                                                                   save_activations=False))  # fmt: skip
    mine_sb = {k: mine.metrics.get(variant_name(k)) for k in theirs if isinstance(theirs[k], float)}
    report("sparse_probing", mine_sb, theirs, {"saebench code": wall_sb, "ours mode=saebench": wall_mode})


def bench_absorption(model: Any, sae: Any, per_letter: int, seed: int, tmp: Path) -> None:
    from sae_bench.evals.absorption import common, feature_absorption, k_sparse_probing
    from sae_bench.evals.absorption.main import _aggregate_results_df

    from saebench.evaluators import absorption, absorption_saebench

    letters = "abcdefghijklmnopqrstuvwxyz"
    pairs = absorption.alpha_vocab(model.tokenizer, model.d_vocab)
    chosen: dict[str, list[tuple[int, str]]] = {c: [] for c in letters}
    for i, w in pairs:
        if len(chosen[w.strip()[0].lower()]) < per_letter:
            chosen[w.strip()[0].lower()].append((i, w))
    subset = sorted(p for c in letters for p in chosen[c])
    vocab = [w for _, w in subset]
    absorption_saebench.saebench_vocab = lambda tok, d: vocab
    mine, wall_mode = ours(model, sae, "absorption", {"mode": "saebench", "min_feats_for_eval": 1}, seed)
    original = absorption.alpha_vocab
    absorption.alpha_vocab = lambda tok, d: subset
    _, wall_variant = ours(model, sae, "absorption", {"n_words": None, "icl_examples": 10, "min_letters": 1}, seed)
    absorption.alpha_vocab = original
    common.get_alpha_tokens = feature_absorption.get_alpha_tokens = lambda tok: vocab
    state = random.getstate()
    with saebench_view(model) as ht, torch.random.fork_rng():
        random.seed(seed)
        torch.manual_seed(seed)
        kw = {"model": ht, "sae": view_for_saebench(sae), "layer": 6, "sae_name": "s", "max_k_value": 10,
              "device": "cpu", "prompt_template": "{word} has the first letter:", "prompt_token_pos": -6,
              "probes_dir": tmp / "probes"}  # fmt: skip

        def run() -> Any:
            k_sparse_probing.run_k_sparse_probing_experiment(
                **kw, experiment_dir=tmp / "ksp", precalc_k_sparse_probe_sae_acts=True, verbose=False
            )
            return feature_absorption.run_feature_absortion_experiment(
                **kw, experiment_dir=tmp / "fa", sparse_probing_experiment_dir=tmp / "ksp", batch_size=10
            )

        raw, wall_sb = timed(run)
    random.setstate(state)
    agg = _aggregate_results_df(raw).set_index("letter")
    good = [r["letter"] for r in mine.details["letters"] if r.get("scored")]
    theirs = {"absorption_rate": sum(agg.loc[c, "mean_absorption_fraction"] for c in good) / len(good),
              "full_absorption_rate": sum(agg.loc[c, "full_absorption_rate"] for c in good) / len(good)}  # fmt: skip
    report(f"absorption ({len(vocab)} words)", dict(mine.metrics), theirs,
           {"saebench code": wall_sb, "ours mode=saebench": wall_mode, "ours variant": wall_variant})  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--evals", default="scr,tpp,sparse_probing,absorption")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--per-cell", type=int, default=120)
    ap.add_argument("--vocab-per-letter", type=int, default=40)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from saebench.loading import load_sae
    from saebench.models import load_model

    model = load_model()
    sae = load_sae("reference").sae
    print(f"threads {torch.get_num_threads()}; reference SAE ({sae.d_sae} latents); SAEBench 0.6.0; seed {args.seed}")
    with tempfile.TemporaryDirectory() as tmp:
        root = write_layout(Path(tmp) / "data", per_cell=args.per_cell)
        for ev in args.evals.split(","):
            if ev in ("scr", "tpp"):
                bench_scr_tpp(model, sae, root, ev == "scr", args.per_cell, args.seed)
            elif ev == "sparse_probing":
                bench_sparse_probing(model, sae, root, args.per_cell, args.seed)
            elif ev == "absorption":
                bench_absorption(model, sae, args.vocab_per_letter, args.seed, Path(tmp))


if __name__ == "__main__":
    main()
