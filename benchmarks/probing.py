"""Cost split of ``--evals probing`` on the quick profile, measured in one run.

    python benchmarks/probing.py [--d-sae 16384] [--threads 1] [--tasks 'glue_*' ...] [--permutations 19]

Evaluates two random TopK SAEs (``--d-sae`` latents, k=32) at ``blocks.6.hook_resid_post`` of the
embedded model, one after the other, with an empty activation cache, and prints:

- model forward: the per-task activation pass (cold), its number of batches;
- SAE encoding: encode + pooling of every task example's tokens;
- probe fitting: the 1-D Newton probes on every live latent (once on the real labels and once per
  shuffled-label repetition of the noise floor, ``n_permutations`` = 19 at the defaults) plus the
  top-k probes;
- residual baselines (SAE-independent, computed once per task sample and memoised);
- for the second SAE: model forward batches (target 0) and its own encode / probe times.

Targets, printed and never asserted: probe fitting <= 10% of the model-forward time for the same
tasks; the second SAE at the same hook costs no model forward pass. Model loading, task loading
and tokenization are reported apart. Not a test.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import empty_activation_cache


def random_topk(d_sae: int, seed: int):
    from saebench.sae import NativeSAE, SAEConfig

    cfg = SAEConfig(
        architecture="topk",
        d_in=576,
        d_sae=d_sae,
        hook_name="blocks.6.hook_resid_post",
        model_name="smollm2-135m",
        k=32,
    )
    sae = NativeSAE(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return sae


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-sae", type=int, default=16384)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tasks", nargs="*", default=None, help="task names/globs (default: all available)")
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--permutations", type=int, default=None, help="noise-floor shuffles (default: the config's 19)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from saebench import evaluate
    from saebench.models import load_model

    t0 = time.perf_counter()
    model = load_model()
    t_load = time.perf_counter() - t0
    with empty_activation_cache():  # the first pass is cold
        pcfg: dict[str, object] = {"tasks": args.tasks} if args.tasks else {}
        if args.permutations is not None:
            pcfg["n_permutations"] = args.permutations
        cfg = {"probing": pcfg}
        runs = []
        for i in range(2):
            t0 = time.perf_counter()
            r = evaluate(
                random_topk(args.d_sae, seed=i),
                model=model,
                hook="blocks.6.hook_resid_post",
                evals=["probing"],
                profile=args.profile,
                eval_config=cfg,
                name=f"sae{i}",
                progress=False,
            )
            res = r.results[f"sae{i}"]["probing"]
            runs.append(
                (
                    {**res.metrics, **res.timing, "model_forward_batches": res.details["model_forward_batches"]},
                    time.perf_counter() - t0,
                )
            )

    (m1, wall1), (m2, wall2) = runs
    t1, t2 = m1, m2
    fwd = t1["activations_s"]
    from saebench.profiles import PROFILES

    p = PROFILES[args.profile]
    print(f"task batches hold up to {p['batch_size']} x {p['ctx_len']} tokens (the profile's batch)")
    print(
        f"threads {torch.get_num_threads()}, profile {args.profile}, d_sae {args.d_sae}, "
        f"{m1['n_tasks_scored']} tasks scored ({m1['n_tasks_skipped']} skipped), model load {t_load:.1f}s"
    )
    print(
        f"first SAE  (wall {wall1:.1f}s): model forward {fwd:.2f}s in {t1['model_forward_batches']} batches | "
        f"task data {t1['task_data_s']:.2f}s | SAE encode {t1['sae_encode_s']:.2f}s | probe fit "
        f"{t1['probe_fit_s']:.2f}s "
        f"(1-D {t1['probe_1d_s']:.2f}s, top-k {t1['probe_topk_s']:.2f}s) | baselines {t1['baselines_s']:.2f}s"
    )
    print(
        f"second SAE (wall {wall2:.1f}s): model forward {t2['activations_s']:.2f}s in {t2['model_forward_batches']} "
        "batches | "
        f"SAE encode {t2['sae_encode_s']:.2f}s | probe fit {t2['probe_fit_s']:.2f}s | baselines "
        f"{t2['baselines_s']:.2f}s (memoised)"
    )
    print(f"latents scored per task (mean): {m1['n_latents_scored_mean']:.0f} of {args.d_sae}")
    for label, t in (("first", t1), ("second", t2)):
        ratio = t["probe_fit_s"] / fwd if fwd > 0 else float("nan")
        flag = "meets" if ratio <= 0.10 else "MISSES"
        print(
            f"{label} SAE: probe fit / model forward = {ratio:.3f} ({flag} target <= 0.10); "
            f"1-D only {t['probe_1d_s'] / fwd:.3f}; SAE encode / model forward = {t['sae_encode_s'] / fwd:.3f}"
        )
    print(
        f"second SAE model forward batches: {t2['model_forward_batches']} "
        f"({'meets' if t2['model_forward_batches'] == 0 else 'MISSES'} target 0)"
    )


if __name__ == "__main__":
    main()
