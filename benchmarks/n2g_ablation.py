"""Cost of ``--evals n2g`` and ``--evals ablation`` per latent, and model calls vs the naive count.

    python benchmarks/n2g_ablation.py [--sae reference] [--profile quick] [--threads 1]

Evaluates one SAE (default: the shipped reference TopK SAE at ``blocks.6.hook_resid_post`` of the
embedded model) with both evaluators on one profile, with an empty activation cache, and prints:

- the shared prefix pass over the token set (done once, shared with every other evaluator);
- per evaluator: wall time, wall time per latent, model calls made and the naive count
  (n2g: one forward per pruning step and per saliency test, as Neuron2Graph runs them;
  ablation: one suffix per ablated or randomly edited pair plus one un-ablated suffix per context),
  and their ratio. Target: >= 10x fewer calls than naive. Printed, never asserted. Not a test.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import empty_activation_cache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sae", default="reference")
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from saebench import evaluate
    from saebench.models import load_model

    t0 = time.perf_counter()
    model = load_model()
    t_load = time.perf_counter() - t0
    with empty_activation_cache():  # the prefix pass is cold
        t0 = time.perf_counter()
        run = evaluate(args.sae, model=model, evals=["n2g", "ablation"], profile=args.profile, progress=False)
        wall = time.perf_counter() - t0
    res = next(iter(run.results.values()))
    n2g, abl = res["n2g"], res["ablation"]
    prefix_s = n2g.timing["states_s"] + abl.timing["states_s"]
    print(
        f"threads {torch.get_num_threads()}, profile {args.profile}, SAE {res['n2g'].sae.name} "
        f"(d_sae {res['n2g'].sae.d_sae}), tokens {n2g.config['n_tokens']} x ctx {n2g.config['ctx_len']}, "
        f"model load {t_load:.1f}s, total wall {wall:.1f}s"
    )
    print(f"shared prefix pass (once, cached on disk for every evaluator and SAE at this hook): {prefix_s:.1f}s")
    for label, r, per in (("n2g", n2g, n2g.metrics["n_latents"]), ("ablation", abl, abl.metrics["n_pairs"])):
        m = r.metrics
        ev_s = r.timing["evaluator_s"] - r.timing["states_s"]
        calls, naive = m["forward_calls"], m["naive_forward_calls"]
        ratio = naive / calls if calls else float("inf")
        flag = "meets" if ratio >= 10 else "MISSES"
        extra = (
            f"{m['n_examples']} examples, {r.details['rows_prune']} pruning + "
            f"{r.details['rows_saliency']} saliency rows"
            if label == "n2g"
            else f"{m['n_pairs']} (position, active latent) pairs over {m['n_contexts']} contexts"
        )
        print(
            f"{label:8s}: {per} latents, {extra}; evaluator (excl. prefix) {ev_s:.1f}s = "
            f"{ev_s / max(per, 1):.2f}s/{'latent' if label == 'n2g' else 'pair'}; "
            f"model calls {calls} vs naive {naive} ({calls / max(per, 1):.2f} vs {naive / max(per, 1):.1f} per "
            "latent): "
            f"{ratio:.1f}x fewer ({flag} target >= 10x)"
        )
    print(
        f"n2g f1 {n2g.metrics['n2g_f1']}, precision {n2g.metrics['n2g_precision']}, recall "
        f"{n2g.metrics['n2g_recall']}; "
        f"ablation sparsity (active pairs) mean {abl.metrics['ablation_sparsity_active']}, median "
        f"{abl.metrics['ablation_sparsity_median']}, random-direction null {abl.metrics['ablation_sparsity_random']}"
    )


if __name__ == "__main__":
    main()
