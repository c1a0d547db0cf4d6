"""Cost of the core evaluation relative to one bare forward pass, measured in one run.

    python benchmarks/core_eval.py [--tokens 8192] [--threads 2] [--sae reference]

Prints, on the embedded model over one token set:

- T_fwd: one bare forward pass (embeddings to logits) over the token set, in batches;
- T_core cold (empty activation cache) and warm (states and ablation baselines cached);
- R = T_core / T_fwd next to the floor F = 1 + (1 + a)(N - L)/N: one clean pass, the spliced
  suffix from the hook's block L of N, and a ablation suffixes (a = 2 cold, 0 warm);
- the marginal cost of a second SAE at the same hook in the same run, against (N - L)/N.

Model loading and tokenization are excluded from every T (reported separately). Not a test:
targets (R <= 1.15 F) are printed, never asserted.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import empty_activation_cache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--ctx-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sae", default="reference")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from saebench import evaluate
    from saebench.data import build_token_set
    from saebench.models import load_model
    from saebench.sae import load_sae

    t0 = time.perf_counter()
    model = load_model()
    t_load = time.perf_counter() - t0
    sae = load_sae(args.sae)
    sae2 = load_sae(args.sae, name="second")
    site = model.hook_site(sae.hook_name)
    tokens = build_token_set(model.tokenize, model.bos_id, args.tokens, args.ctx_len, seed=0)

    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, tokens.tokens.shape[0], args.batch_size):
            model.model(tokens.tokens[s:s + args.batch_size])
    t_fwd = time.perf_counter() - t0

    sizes = {"tokens": args.tokens, "ctx_len": args.ctx_len, "batch_size": args.batch_size}
    with empty_activation_cache():
        t0 = time.perf_counter()
        cold = evaluate(sae, model=model, progress=False, **sizes)
        t_cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        evaluate(sae, model=model, progress=False, **sizes)
        t_warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        evaluate([sae, sae2], model=model, progress=False, **sizes)
        t_two = time.perf_counter() - t0

    n, start = model.n_layers, site.start
    frac = (n - start) / n
    t_tok = cold.results[sae.name]["core"].timing["tokenize_s"]
    rows = [
        ("core, cold cache", (t_cold - t_tok) / t_fwd, 1 + 3 * frac),
        ("core, warm cache", (t_warm - t_tok) / t_fwd, 1 + 1 * frac),
        ("second SAE, same run (marginal)", (t_two - t_warm) / t_fwd, frac),
    ]
    print(f"model {model.name}, hook {sae.hook_name} (split at block {start} of {n}), SAE {sae.name} "
          f"d_sae={sae.sae.d_sae}, {tokens.n_tokens} tokens, ctx {args.ctx_len}, batch {args.batch_size}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"model load {t_load:.1f} s, tokenization {t_tok:.2f} s (excluded below)")
    print(f"T_fwd (bare forward) {t_fwd:.2f} s = {tokens.n_tokens / t_fwd:.0f} tokens/s")
    print(f"T_core cold {t_cold - t_tok:.2f} s, warm {t_warm - t_tok:.2f} s; two SAEs warm {t_two - t_tok:.2f} s")
    print(f"{'measure':34s} {'R = T/T_fwd':>12s} {'floor F':>8s} {'R/F':>6s}  target R <= 1.15 F")
    for label, r, f in rows:
        print(f"{label:34s} {r:12.3f} {f:8.3f} {r / f:6.3f}  {'ok' if r <= 1.15 * f else 'MISSED'}")


if __name__ == "__main__":
    main()
