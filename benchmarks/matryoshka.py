"""Cost of the Matryoshka prefix sweep against evaluating each prefix as a separate SAE, in one run.

    python benchmarks/matryoshka.py [--sae /work/zoo/matryoshka-2304-k32] [--tokens 4096] [--threads 1]

On the embedded model over one token set, for a Matryoshka SAE with prefix widths m_1 < ... < m_n:

- T_sweep: ``--evals matryoshka`` alone, cold (empty activation cache): one prefix pass to the hook,
  one clean suffix (the clean side), the zero-ablation baseline, one spliced suffix per prefix;
- T_sep_cold: each prefix as its own SAE (built by hand from the first m encoder columns and
  decoder rows), ``--evals core`` in its own run with an empty cache each time: what evaluating n
  separate SAE folders costs on n machines or with no cache;
- T_sep_cached: the same n runs in sequence sharing one activation cache (the first cold, the
  others reading its prefix states, clean side and ablation from disk): what n separate runs on one
  machine cost.

Prints the ratios T_sep / T_sweep and the largest difference between the sweep's per-prefix
numbers and the separate runs' (they must agree: the same tokens, the same SAEs). Model loading and
tokenization are excluded. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import empty_activation_cache


def _truncated(sae, m: int):
    """The first ``m`` latents of a native SAE as a native SAE of width m."""
    from saebench.sae import NativeSAE

    cfg = sae.cfg.model_copy(update={"d_sae": m, "matryoshka_widths": None})
    t = {n: p.detach().clone() for n, p in sae.named_parameters()}
    t["W_enc"], t["b_enc"], t["W_dec"] = t["W_enc"][:, :m], t["b_enc"][:m], t["W_dec"][:m]
    return NativeSAE.from_tensors(cfg, t).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sae", default="/work/zoo/matryoshka-2304-k32")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--ctx-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from saebench import evaluate
    from saebench.evaluators.matryoshka import prefix_widths
    from saebench.loading import load_sae
    from saebench.models import load_model

    model = load_model()
    loaded = load_sae(args.sae)
    sae = loaded.sae
    widths = prefix_widths(sae)
    if widths is None:
        raise SystemExit(f"{args.sae} declares no matryoshka_widths")
    hook = sae.hook_name
    sizes = {"tokens": args.tokens, "ctx_len": args.ctx_len, "batch_size": args.batch_size, "progress": False}
    parts = {m: _truncated(sae, m) for m in widths}

    with empty_activation_cache():
        t0 = time.perf_counter()
        sweep = evaluate(loaded, model=model, evals=["matryoshka"], **sizes)
        t_sweep = time.perf_counter() - t0
    t_tok = sweep.results[loaded.name]["matryoshka"].timing.get("tokenize_s", 0.0)
    t_sweep -= t_tok

    t_cold, sep = 0.0, {}
    for m, part in parts.items():
        with empty_activation_cache():
            t0 = time.perf_counter()
            run = evaluate(part, model=model, hook=hook, evals=["core"], name=f"prefix-{m}", **sizes)
            t_cold += time.perf_counter() - t0 - run.results[f"prefix-{m}"]["core"].timing.get("tokenize_s", 0.0)
            sep[m] = run.metrics["core"]
    t_cached = 0.0
    with empty_activation_cache():
        for m, part in parts.items():
            t0 = time.perf_counter()
            run = evaluate(part, model=model, hook=hook, evals=["core"], name=f"prefix-{m}", **sizes)
            t_cached += time.perf_counter() - t0 - run.results[f"prefix-{m}"]["core"].timing.get("tokenize_s", 0.0)

    sw = sweep.details["matryoshka"]["sweep"]
    diff = max(
        abs(sw[k][i] - sep[m][k]) / max(abs(sep[m][k]), 1e-12)
        for i, m in enumerate(widths)
        for k in ("fvu", "delta_ce", "kl", "l0")
    )
    print(
        f"model {model.name}, hook {hook}, SAE {loaded.name} d_sae={sae.d_sae}, prefixes {widths}, "
        f"{args.tokens} tokens, ctx {args.ctx_len}, batch {args.batch_size}, torch threads {torch.get_num_threads()}"
    )
    print(f"{'measure':46s} {'T (s)':>8s} {'T / T_sweep':>12s}")
    print(f"{'prefix sweep, one run, cold':46s} {t_sweep:8.2f} {1.0:12.3f}")
    print(f"{f'{len(widths)} separate runs, each cold':46s} {t_cold:8.2f} {t_cold / t_sweep:12.3f}")
    print(f"{f'{len(widths)} separate runs, one shared cache':46s} {t_cached:8.2f} {t_cached / t_sweep:12.3f}")
    print(f"largest relative difference, sweep vs separate (FVU, ΔCE, KL, L0 per prefix): {diff:.2e}")
    for i, m in enumerate(widths):
        print(
            f"  m={m:5d}  FVU {sw['fvu'][i]:.4f}  ΔCE {sw['delta_ce'][i]:.4f}  KL {sw['kl'][i]:.4f}  "
            f"L0 {sw['l0'][i]:.2f}  dead {sw['dead_frac'][i]:.3f}"
        )


if __name__ == "__main__":
    main()
