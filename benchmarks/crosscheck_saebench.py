"""Cross-check saebench's core metrics against SAEBench 0.6.0's own core evaluation, same inputs.

    python benchmarks/crosscheck_saebench.py [--sae reference] [--tokens 2048] [--batch-size 16]

Needs ``sae-bench==0.6.0`` (``bash setup.sh --crosscheck``). SAEBench's ``run_evals`` is called
directly (its ``multiple_evals`` would load the model from the hub) with our transformer-lens
model, our token ids (a small stand-in for SAELens's ActivationsStore hands them out), our SAE
as SAEBench's own ``TopKSAE`` (our ``act_scale`` folded into the weights: SAEBench applies no
activation normalisation), ``exclude_special_tokens_from_reconstruction=True`` and
``ignore_tokens={BOS}``: SAEBench's recommended settings, and our convention (positions holding
the BOS id stay clean and out of every average).

Shared metrics must agree to 1e-4 relative. Three of SAEBench's numbers are deliberately not
ours: its ``explained_variance`` subtracts (E‖x‖²/d)² where the variance needs ‖E x‖² (SAELens
#659; we report the pooled 1 - FVU, SAELens 6.54's number); its ``mse`` divides the per-token
squared error by the batch's token count (it moves with the batch size; ours is per element); its
``relative_reconstruction_bias`` averages per-batch ratios (it moves with the batch size, by
~2e-4 relative at batch 4; ours is the pooled E‖x̂‖²/E⟨x, x̂⟩ of the Gated SAE paper). They are
printed for reference, never compared.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from typing import Any

import torch

SHARED = (
    "l0",
    "l1",
    "ce_loss_score",
    "ce_loss_with_ablation",
    "ce_loss_with_sae",
    "ce_loss_without_sae",
    "kl_div_score",
    "kl_div_with_ablation",
    "kl_div_with_sae",
    "cossim",
    "l2_norm_in",
    "l2_norm_out",
    "l2_ratio",
    "frac_alive",
    "freq_over_1_percent",
    "freq_over_10_percent",
    "normalized_freq_over_1_percent",
    "normalized_freq_over_10_percent",
)
NOT_COMPARED = ("explained_variance", "mse", "relative_reconstruction_bias")


class FixedTokenStore:
    """What SAEBench's core eval reads from SAELens's ActivationsStore, over fixed token ids."""

    def __init__(self, tokens: torch.Tensor, batch_size: int) -> None:
        self.tokens, self.context_size, self.store_batch_size_prompts, self.pos = tokens, tokens.shape[1], batch_size, 0

    def get_batch_tokens(self, batch_size: int | None = None, **_: object) -> torch.Tensor:
        n = batch_size or self.store_batch_size_prompts
        out = self.tokens[self.pos : self.pos + n]
        self.pos += n
        return out

    def reset_input_dataset(self) -> None:
        self.pos = 0


def saebench_topk(native: Any, hook: str, model_name: str) -> Any:
    """Our native TopK SAE as SAEBench's own TopKSAE (act_scale folded: W_enc·s, W_dec/s, b_dec/s)."""
    from sae_bench.custom_saes.topk_sae import TopKSAE

    s = float(native.cfg.act_scale)
    layer = int(hook.split(".")[1])
    sae = TopKSAE(
        d_in=native.d_in,
        d_sae=native.d_sae,
        k=int(native.cfg.k),
        model_name=model_name,
        hook_layer=layer,
        device=torch.device("cpu"),
        dtype=torch.float32,
        hook_name=hook,
    )
    with torch.no_grad():
        sae.W_enc.copy_(native.W_enc * s)
        sae.b_enc.copy_(native.b_enc)
        sae.W_dec.copy_(native.W_dec / s)
        sae.b_dec.copy_(native.b_dec / s)
    sae.cfg.architecture = "topk"
    return sae.eval()


def saebench_core(model: Any, native: Any, hook: str, tokens: torch.Tensor, batch_size: int) -> dict[str, float]:
    """SAEBench 0.6.0's core metrics on exactly these token ids (flattened to metric name -> value)."""
    import warnings

    import sae_bench.evals.core.main as core
    from sae_bench.evals.core.eval_config import CoreEvalConfig
    from sae_bench.sae_bench_utils.general_utils import load_and_format_sae

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the decoder-norm warning: our folded rows are not unit norm
        _, sae, _ = load_and_format_sae("saebench", saebench_topk(native, hook, model.name), "cpu")
    n_batches = tokens.shape[0] // batch_size
    cfg = CoreEvalConfig(
        batch_size_prompts=batch_size,
        n_eval_reconstruction_batches=n_batches,
        n_eval_sparsity_variance_batches=n_batches,
        context_size=tokens.shape[1],
        compute_kl=True,
        compute_ce_loss=True,
        compute_l2_norms=True,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
        compute_featurewise_density_statistics=True,
        compute_featurewise_weight_based_metrics=True,
        exclude_special_tokens_from_reconstruction=True,
    )
    with torch.no_grad():
        metrics, feature_metrics = core.run_evals(
            sae, FixedTokenStore(tokens, batch_size), model.model, cfg, ignore_tokens={model.bos_id}
        )
    metrics["misc_metrics"] = core.calculate_misc_metrics(feature_metrics)
    flat: dict[str, float] = {}
    for group in metrics.values():
        flat.update({k: float(v) for k, v in group.items() if isinstance(v, (int, float))})
    return flat


def crosscheck(
    model: Any, native: Any, hook: str, tokens: torch.Tensor, batch_size: int
) -> dict[str, tuple[float, float]]:
    """``{metric: (saebench, SAEBench 0.6.0)}`` for the shared metrics and the two known differences,
    and ``{"_seconds": (ours, SAEBench's)}``: the wall time of each computation in this process (ours
    with no activation cache, so both run every model pass)."""
    import time

    from saebench import evaluate
    from saebench.data import TokenSet

    n = (tokens.shape[0] // batch_size) * batch_size
    ts = TokenSet(tokens[:n], "crosscheck", "-", 0)
    t0 = time.perf_counter()
    ours = evaluate(
        native, model=model, hook=hook, token_set=ts, batch_size=batch_size, progress=False, use_cache=False
    ).metrics["core"]
    t1 = time.perf_counter()
    theirs = saebench_core(model, native, hook, ts.tokens, batch_size)
    t2 = time.perf_counter()
    return {**{k: (ours[k], theirs[k]) for k in SHARED + NOT_COMPARED}, "_seconds": (t1 - t0, t2 - t1)}


# -- handing SAEBench our model, SAEs and local data (shared with tests/test_saebench_mode.py) ----------

NAMES = ["Ann", "Bea", "Cal", "Dan", "Eve", "Fay", "Gus", "Hal", "Ida", "Jon", "Kim", "Lou", "Max", "Ned", "Ola"]
TOWNS = ["Leeds", "Porto", "Oslo", "Kyoto", "Lima", "Quito", "Cairo", "Perth"]
WORDS = ["quietly", "often", "with care", "at night", "every day", "for years", "in teams", "alone"]


def write_layout(root: Any, per_cell: int = 30, seed: int = 0) -> Any:
    """Small stand-ins for SAEBench's Bias in Bios and Amazon files in the documented local layout
    (``docs/saebench_mode.md#data``): synthetic texts with the hub's columns, ``per_cell`` train rows
    per (class, second attribute) and half as many test rows."""
    import random
    from pathlib import Path

    import pandas as pd

    root = Path(root)
    rng = random.Random(seed)
    for split, n in (("train", per_cell), ("test", per_cell // 2)):
        rows = []
        for prof in (0, 1, 2, 6, 9, 13, 21, 11):
            for g in (0, 1):
                pron = "She" if g else "He"
                rows += [{"hard_text": f"{pron} works {rng.choice(WORDS)} as job {prof} near {rng.choice(TOWNS)}; "
                          f"{rng.choice(NAMES)} says case {i} of {prof}-{g}.", "profession": prof, "gender": g}
                         for i in range(n)]  # fmt: skip
        rng.shuffle(rows)
        (root / "LabHC" / "bias_in_bios").mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_parquet(root / "LabHC" / "bias_in_bios" / f"{split}.parquet")
        reviews = []
        for cat in (1, 2, 3, 5, 6, 24, 26):
            for rating in (1.0, 5.0):
                mood = "awful" if rating == 1.0 else "great"
                reviews += [{"text": f"A {mood} item {i} of kind {cat}, {rng.choice(WORDS)}.", "category": cat,
                             "rating": rating} for i in range(n)]  # fmt: skip
        rng.shuffle(reviews)
        folder = root / "canrager" / "amazon_reviews_mcauley_1and5"
        folder.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(reviews).to_csv(folder / f"{split}.csv", index=False)
    return root


@contextlib.contextmanager
def saebench_view(model: Any) -> Iterator[Any]:
    """The shared HookedTransformer as SAEBench expects it, as transformer-lens' loader leaves a
    Llama model: its tokenizer set with the BOS prepended (the embedded model's ``<|endoftext|>``)
    and ``default_prepend_bos`` on (our split passes take token ids and leave it off); restored after."""
    from transformers import AutoTokenizer

    from saebench.models import _hf_folder

    ht = model.model
    saved = (ht.tokenizer, ht.cfg.tokenizer_prepends_bos, ht.cfg.default_prepend_bos)
    tok = AutoTokenizer.from_pretrained(str(_hf_folder()), bos_token="<|endoftext|>", add_bos_token=True)
    ht.cfg.default_prepend_bos = True
    ht.set_tokenizer(tok)
    assert tok("a b")["input_ids"][0] == model.bos_id and int(ht.to_tokens(["a b"])[0, 0]) == model.bos_id
    try:
        yield ht
    finally:
        ht.tokenizer, ht.cfg.tokenizer_prepends_bos, ht.cfg.default_prepend_bos = saved


def local_load_dataset(root: Any) -> Any:
    """``datasets.load_dataset`` for SAEBench's code, answered from the local layout."""
    from saebench.tasks.saebench_data import load_split

    def load(name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {s: load_split(name, s, str(root), False) for s in ("train", "test")}

    return load


def view_for_saebench(sae: Any, layer: int = 6, hook: str = "blocks.6.hook_resid_post") -> Any:
    """What SAEBench's SCR/TPP/sparse-probing/absorption code reads from an SAE, backed by ours."""
    from types import SimpleNamespace

    return SimpleNamespace(
        encode=sae.encode, decode=sae.decode, W_dec=sae.W_dec, W_enc=sae.W_enc, dtype=torch.float32,
        device=torch.device("cpu"), cfg=SimpleNamespace(hook_layer=layer, hook_name=hook, d_sae=sae.d_sae),
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sae", default="reference")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--ctx-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from saebench.data import build_token_set
    from saebench.loading import load_sae
    from saebench.models import load_model

    model = load_model()
    loaded = load_sae(args.sae)
    ts = build_token_set(model.tokenize, model.bos_id, args.tokens, args.ctx_len, seed=0)
    rows = crosscheck(model, loaded.sae, loaded.hook_name, ts.tokens, args.batch_size)
    print(
        f"SAE {loaded.name}, {ts.n_tokens} tokens, ctx {args.ctx_len}, batch {args.batch_size}, "
        f"threads {torch.get_num_threads()}; SAEBench 0.6.0, exclude_special_tokens_from_reconstruction"
    )
    ours_s, theirs_s = rows.pop("_seconds")
    print(f"{'metric':32s} {'saebench':>14s} {'SAEBench':>14s} {'rel diff':>10s}")
    for k, (a, b) in rows.items():
        rel = abs(a - b) / max(abs(b), 1e-12)
        tag = "  (not compared: different definition)" if k in NOT_COMPARED else ""
        print(f"{k:32s} {a:14.8f} {b:14.8f} {rel:10.2e}{tag}")
    print(f"wall seconds: saebench core {ours_s:.1f} (intervals included), SAEBench core {theirs_s:.1f}; "
          f"SAEBench / saebench = {theirs_s / ours_s:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
