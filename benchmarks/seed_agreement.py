"""Do two sampling seeds agree on one SAE? Per-latent evaluators at one profile, measured in one run.

    python benchmarks/seed_agreement.py [--sae reference] [--evals n2g,ablation] [--seeds 0 1]
                                        [--profile quick] [--threads 1] [--set n2g.n_latents=96 ...] [--out DIR]

Evaluates one SAE (default: the shipped reference TopK SAE) once per seed (a seed draws a new token
sample, new latents and new examples, as ``saebench run --seed`` does) and prints, per headline
metric: the value at each seed, the largest pairwise |difference|, the metric's declared minimum
effect and whether the seeds agree within it, the mean 95% half-width, and each evaluator's wall
time per seed (shared passes excluded). Printed, never asserted. Not a test.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sae", default="reference")
    ap.add_argument("--evals", default="n2g,ablation")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", nargs="*", default=[], help="EVAL.KEY=JSON overrides, e.g. n2g.n_latents=64")
    ap.add_argument("--out", default=None, help="also write each seed's results under OUT/seed<N>/")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from saebench import evaluate
    from saebench.models import load_model

    evals = [e.strip() for e in args.evals.split(",") if e.strip()]
    cfg: dict[str, dict[str, object]] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        ev, _, field = key.partition(".")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        cfg.setdefault(ev, {})[field] = parsed
    model = load_model()
    per_seed = {}
    for seed in args.seeds:
        t0 = time.perf_counter()
        out = f"{args.out}/seed{seed}" if args.out else None
        run = evaluate(
            args.sae,
            model=model,
            evals=evals,
            profile=args.profile,
            seed=seed,
            eval_config=cfg,
            progress=False,
            out=out,
        )
        res = next(iter(run.results.values()))
        per_seed[seed] = res
        print(f"seed {seed}: {time.perf_counter() - t0:.1f}s wall", flush=True)
    print(f"threads {torch.get_num_threads()}, profile {args.profile}, SAE {args.sae}, settings {cfg or 'defaults'}")
    for ev in evals:
        first = per_seed[args.seeds[0]][ev]
        tim = [per_seed[s][ev].timing for s in args.seeds]
        costs = [t.get("evaluator_s", 0.0) for t in tim]  # run() alone: shared prefix passes are timed apart
        print(f"{ev}: evaluator time per seed (shared passes excluded) " + ", ".join(f"{c:.1f}s" for c in costs))
        for name, decl in first.declarations.items():
            if not decl.get("headline") and name not in ("ablation_sparsity_random", "ablation_sparsity_minus_random"):
                continue
            vals = [per_seed[s][ev].metrics.get(name) for s in args.seeds]
            if any(not isinstance(v, (int, float)) for v in vals):
                print(f"  {name}: {vals} (undefined at some seed)")
                continue
            spread = max(abs(a - b) for a, b in itertools.combinations(vals, 2))
            min_eff = float(decl.get("min_effect") or 0.0)
            hw = [per_seed[s][ev].uncertainty.get(name, {}) for s in args.seeds]
            half = [(u["ci_high"] - u["ci_low"]) / 2 for u in hw if u.get("ci_high") is not None]
            verdict = "agree" if spread <= min_eff else "DIFFER"
            print(
                f"  {name}: " + ", ".join(f"{v:.4f}" for v in vals) + f"; max |diff| {spread:.4f} vs minimum effect "
                f"{min_eff} ({verdict}); mean 95% half-width {sum(half) / max(1, len(half)):.4f}"
            )


if __name__ == "__main__":
    main()
