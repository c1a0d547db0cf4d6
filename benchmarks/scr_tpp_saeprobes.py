"""Model passes and cost split of ``--evals scr``, ``tpp`` and ``sae_probes``, measured in one run.

    python benchmarks/scr_tpp_saeprobes.py [--profile quick] [--threads 1] [--d-sae 2304] [--evals scr tpp sae_probes]

For each evaluator, with an empty activation cache: one ``evaluate`` call on two SAEs at
``blocks.6.hook_resid_post`` (the shipped reference TopK SAE and a random TopK SAE of ``--d-sae``
latents), then a second call on the random SAE alone (new pipeline, warm disk cache). Prints

- model forward batches of the first call (``pipe.counters.task_forward_batches``) and of the
  second (target 0: the activations come from the disk cache);
- the shared, SAE-independent work timed once per hook (activations, probes / baselines);
- per SAE: the evaluator's own seconds and, for sae_probes, its encode and probe-fit split. The
  second SAE of the first call runs no model pass: its cost is its SAE encodes and probe fits.

Then the probe engine alone: ``saebench.probes.ksparse.fit_cv`` (batched Newton over the C grid
and CV splits) against sae-probes' ``find_best_reg`` (sklearn, one fit per C and split) on the
same data, when the sae-probes package is importable. Ratios are printed, never asserted. Not a test.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import empty_activation_cache

HOOK = "blocks.6.hook_resid_post"


def random_topk(d_sae: int, seed: int):
    from saebench.sae import NativeSAE, SAEConfig

    cfg = SAEConfig(architecture="topk", d_in=576, d_sae=d_sae, hook_name=HOOK, model_name="smollm2-135m", k=32)
    sae = NativeSAE(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return sae


SHARED = {
    "scr": ("scr_activations_s", "scr_probes_s"),
    "tpp": ("tpp_activations_s", "tpp_probes_s"),
    "sae_probes": ("sae_probes_activations_s", "baselines_s"),
}


def bench_engine() -> None:
    import warnings

    from saebench.probes.ksparse import fit_cv

    try:
        from sae_probes.utils_training import find_best_reg
    except Exception as exc:  # optional
        print(f"engine: sae-probes' find_best_reg not importable ({type(exc).__name__}); skipped")
        return
    warnings.simplefilter("ignore")
    for n, d in ((16, 16), (96, 16), (96, 576), (512, 128)):
        g = torch.Generator().manual_seed(n + d)
        x = torch.randn(n + 200, d, generator=g)
        y = (x[:, 0] + torch.randn(n + 200, generator=g) > 0).long()
        t0 = time.perf_counter()
        ours = fit_cv(x[:n], y[:n], x[n:], y[n:], seed=42)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        theirs = find_best_reg(x[:n].numpy(), y[:n].numpy(), x[n:].numpy(), y[n:].numpy(), seed=42)
        t_theirs = time.perf_counter() - t0
        print(
            f"engine n={n:4d} d={d:3d}: fit_cv {t_ours:.3f}s vs find_best_reg {t_theirs:.3f}s "
            f"(x{t_theirs / max(t_ours, 1e-9):.1f}); C {ours.c:.3g} vs {float(theirs.classifier.C):.3g}; "
            f"test AUC {ours.test_auc:.4f} vs {theirs.metrics.test_auc:.4f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--d-sae", type=int, default=2304)
    ap.add_argument("--evals", nargs="*", default=["scr", "tpp", "sae_probes"])
    ap.add_argument("--no-engine", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from saebench import evaluate
    from saebench.loading import load_sae
    from saebench.models import load_model

    t0 = time.perf_counter()
    model = load_model()
    print(f"threads {torch.get_num_threads()}, profile {args.profile}, model load {time.perf_counter() - t0:.1f}s")
    ref = load_sae("reference").sae
    for ev in args.evals:
        with empty_activation_cache():
            t0 = time.perf_counter()
            run = evaluate([ref, random_topk(args.d_sae, 1)], model=model, hook=HOOK, evals=[ev], profile=args.profile,
                           name=["reference", "random"], progress=False)  # fmt: skip
            wall1 = time.perf_counter() - t0
            passes1 = run.counters[HOOK].task_forward_batches
            t0 = time.perf_counter()
            again = evaluate(random_topk(args.d_sae, 1), model=model, hook=HOOK, evals=[ev], profile=args.profile,
                             name="random", progress=False)  # fmt: skip
            wall2 = time.perf_counter() - t0
            passes2 = again.counters[HOOK].task_forward_batches
        a, b = run.results["reference"][ev], run.results["random"][ev]
        c = again.results["random"][ev]
        acts_key, probe_key = SHARED[ev]
        print(f"\n== {ev} ({args.profile}) ==")
        print(
            f"call 1 (2 SAEs, cold cache, wall {wall1:.1f}s): model forward batches {passes1} "
            f"(activations {a.timing[acts_key]:.1f}s, {probe_key} {a.timing[probe_key]:.1f}s; shared, once per hook)"
        )
        for label, r in (("reference", a), ("random", b)):
            extra = ""
            if ev == "sae_probes":
                extra = f" (encode {r.timing['sae_encode_s']:.2f}s, probe fits {r.timing['sae_probe_fit_s']:.2f}s)"
            print(f"  SAE {label:9s}: evaluator {r.timing['evaluator_s']:.2f}s{extra}")
        print(
            f"call 2 (random SAE alone, warm disk cache, wall {wall2:.1f}s): model forward batches {passes2} "
            f"({'meets' if passes2 == 0 else 'MISSES'} target 0); shared {c.timing['shared_inputs_s']:.1f}s, "
            f"evaluator {c.timing['evaluator_s']:.2f}s"
        )
        print(
            f"second SAE in call 1: {b.timing['evaluator_s']:.2f}s of SAE encodes + probes, no model pass "
            f"(per-SAE / shared = {b.timing['evaluator_s'] / max(a.timing['shared_inputs_s'], 1e-9):.3f})"
        )
        head = [m.name for m in __import__("saebench.evaluators", fromlist=["get_evaluator"]).get_evaluator(ev).metrics
                if m.headline]  # fmt: skip
        print("  headline (reference): " + ", ".join(f"{k} {a.metrics.get(k)}" for k in head))
    if not args.no_engine:
        print()
        bench_engine()


if __name__ == "__main__":
    main()
