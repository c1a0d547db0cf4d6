"""How noisy is each headline metric, does the gate tell noise from a real change, and what do the
intervals cost — measured in one run.

    python benchmarks/noise.py [--seeds 0 1 2] [--evals core,probing,n2g,ablation] [--out /tmp/saebench-noise]

1. Evaluates the reference SAE on the quick profile with each seed (a different token sample,
   task sample and latent sample per seed) and prints, per headline metric, the value per seed,
   their standard deviation, the root mean square of the reported standard errors (a sound
   interval has them about equal over many seeds), the mean reported 95% half-width, and the
   declared minimum effect.
2. Compares every other seed with the first (``saebench compare``): a sound gate says "within
   noise" (or "changed" for descriptive metrics) everywhere.
3. Adds Gaussian noise to the reference's decoder (``--decoder-noise`` × each row's norm) and
   compares that SAE with the clean one on the first seed: the gate must fail, naming metrics.
4. Prints the cost of the intervals: the resampling's seconds over the evaluator's seconds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--evals", default="core,probing,n2g,ablation")
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--decoder-noise", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="/tmp/saebench-noise")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from saebench import evaluate
    from saebench.compare import compare
    from saebench.evaluators import metric_table
    from saebench.loading import load_sae
    from saebench.models import load_model

    evals = [e for e in args.evals.split(",") if e]
    out = Path(args.out)
    model = load_model()
    ref = load_sae("reference", name="reference")
    runs = {}
    for seed in args.seeds:
        t0 = time.perf_counter()
        runs[seed] = evaluate(ref, model=model, evals=evals, profile=args.profile, seed=seed,
                              out=out / f"seed{seed}", progress=False)  # fmt: skip
        print(f"seed {seed}: {time.perf_counter() - t0:.0f} s")

    decl = metric_table(evals)
    print(f"\nspread over seeds {args.seeds} ({args.profile} profile, reference SAE)")
    print(f"{'evaluator.metric':34s} {'values per seed':40s} {'sd':>9s} {'rms se':>9s} {'mean ±':>9s} {'min eff':>8s}")
    for ev in evals:
        for m in decl[ev].values():
            if not m.headline:
                continue
            vals = [runs[s].results["reference"][ev].metrics.get(m.name) for s in args.seeds]
            unc = [runs[s].results["reference"][ev].uncertainty.get(m.name) or {} for s in args.seeds]
            halves = [(u["ci_high"] - u["ci_low"]) / 2 for u in unc if u.get("ci_low") is not None]
            ses = [u["se"] for u in unc if isinstance(u.get("se"), (int, float))]
            rms = (sum(x * x for x in ses) / len(ses)) ** 0.5 if ses else float("nan")
            nums = [v for v in vals if isinstance(v, (int, float))]
            sd = statistics.stdev(nums) if len(nums) > 1 else float("nan")
            half = statistics.mean(halves) if halves else float("nan")
            shown = ", ".join(f"{v:.4g}" if isinstance(v, (int, float)) else "n/a" for v in vals)
            print(f"{ev + '.' + m.name:34s} {shown:40s} {sd:9.3g} {rms:9.3g} {half:9.3g} {m.min_effect:8.3g}")

    first = args.seeds[0]
    for seed in args.seeds[1:]:
        cmp = compare([out / f"seed{seed}"], [out / f"seed{first}"])
        verdicts: dict[str, int] = {}
        for r in cmp.rows:
            verdicts[r.verdict] = verdicts.get(r.verdict, 0) + 1
        print(f"\ncompare seed {seed} vs seed {first}: {verdicts}; failures: "
              f"{[f'{r.evaluator}.{r.metric}' for r in cmp.failures] or 'none'}")  # fmt: skip

    noisy = load_sae("reference", name="reference")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w = noisy.sae.W_dec
        w += args.decoder_noise * w.norm(dim=1, keepdim=True) * torch.randn(w.shape, generator=g) / w.shape[1] ** 0.5
    noisy.fingerprint = noisy.fingerprint + "-noisy"
    evaluate(noisy, model=model, evals=evals, profile=args.profile, seed=first, out=out / "noisy", progress=False)
    cmp = compare([out / "noisy"], [out / f"seed{first}"])
    print(f"\ndecoder noise {args.decoder_noise} x row norm vs clean (seed {first}): failures:")

    def g(v: object, spec: str = ".4g") -> str:
        return format(v, spec) if isinstance(v, (int, float)) else "n/a"

    for r in cmp.failures:
        print(f"  {r.evaluator}.{r.metric} ({r.verdict}): {g(r.baseline)} -> {g(r.new)}, diff {g(r.diff, '+.4g')} "
              f"[{g(r.low, '+.3g')}, {g(r.high, '+.3g')}]{' paired' if r.paired else ''}")  # fmt: skip
    print(f"  within noise: {[f'{r.evaluator}.{r.metric}' for r in cmp.rows if r.verdict == 'within noise']}")

    print("\ncost of the intervals: seconds of the resampling (studentised bootstrap over independent units")
    print("for every declared estimator, plus core's document jackknife of the density metrics) / the")
    print("evaluator's seconds (its own run plus the shared inputs it needed: states, the splice loop, task")
    print("activations), first seed")
    for ev in evals:
        t = runs[first].results["reference"][ev].timing
        total = t.get("evaluator_s", 0.0) + t.get("shared_inputs_s", 0.0)
        cost = t.get("intervals_s", 0.0) + t.get("density_intervals_s", 0.0)
        print(f"  {ev:10s} {cost:.3f} s / {total:.1f} s = {cost / max(total, 1e-9):.2%}  (target <= 5%)")


if __name__ == "__main__":
    main()
