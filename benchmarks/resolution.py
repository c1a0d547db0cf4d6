"""Resolution and cost of the quick profile's sampled headlines (scr, tpp, absorption), old sizes vs new.

    python benchmarks/resolution.py [--threads 1] [--evals scr,tpp,absorption]

For each evaluator, the reference SAE on the embedded model, each run in a cold activation cache, in
one process: the quick profile as it was (``before``: SCR on the historical-figure and Yelp/movie pairs
with 24 test texts per quadrant; absorption scoring letters with any true positive) and as it is now
(``after``). Prints per run the wall seconds, the SAE-independent seconds (activations and probes, once
per hook), the per-SAE seconds, the headline's value and interval, and ``details.resolution``: how much
one test text / word moves the headline (median and largest over the units) and whether the largest is
below the metric's minimum effect. Ratios are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _common import empty_activation_cache

BEFORE = {
    "scr": {"pairs": ["hist_fig_politician_gender", "reviews_yelp_movie"], "n_train": 32, "n_test": 24},
    "tpp": {},
    "absorption": {"min_true_positives": 1},
}
SHARED_SUFFIXES = ("activations_s", "probes_s", "letter_probe_s", "prompts_s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--evals", default="scr,tpp,absorption")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from saebench.models import load_model
    from saebench.runner import evaluate

    model = load_model()
    print(f"reference SAE, quick profile, threads {torch.get_num_threads()}, cold activation cache per run")
    for label in ("before", "after"):
        for ev in args.evals.split(","):
            cfg = BEFORE[ev] if label == "before" else {}
            with empty_activation_cache():
                t0 = time.perf_counter()
                run = evaluate("reference", model=model, evals=[ev], eval_config={ev: cfg}, progress=False)
                wall = time.perf_counter() - t0
            res = next(iter(run.results.values()))[ev]
            t = res.timing
            shared = sum(v for k, v in t.items() if k.endswith(SHARED_SUFFIXES) and not k.startswith(("l1", "sae")))
            for name, r in res.details["resolution"].items():
                u = res.uncertainty.get(name, {})
                print(json.dumps({
                    "profile": label, "eval": ev, "metric": name, "wall_s": round(wall, 1),
                    "shared_s": round(shared, 1), "per_sae_s": round(t.get("evaluator_s", 0.0), 1),
                    "value": res.metrics.get(name),
                    "ci": [u.get("ci_low"), u.get("ci_high")], "step_median": r["step"], "step_max": r["step_max"],
                    "min_effect": r["min_effect"], "resolves": r["resolves"],
                }))  # fmt: skip


if __name__ == "__main__":
    main()
