"""Model passes and cost of ``--evals absorption`` and ``--evals splitting``, and what a second SAE
at the same hook costs.

    python benchmarks/absorption_splitting.py [--sae reference] [--sae2 PATH] [--profile quick] [--threads 1]

With an empty activation cache, in one process (model loaded once):

1. SAE A alone, both evaluators: model calls by kind (``pipe.counters``), the shared
   SAE-independent work (prompts, prompt activations, the 26 letter probes) and the per-SAE work;
2. SAEs A and B in one run: the model calls must equal run 1's (the prompt activations are
   computed once for both) and B's extra cost is its own evaluator time;
3. SAE B alone in a later run (warm disk cache): 0 model calls; only SAE encodes and probes.

``--sae2`` defaults to the reference SAE with k = 16 instead of 32 (same weights, a different SAE
with its own fingerprint); any SAE at the hook works (e.g. a zoo member). Ratios are printed,
never asserted. Not a test.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
from _common import empty_activation_cache

EVALS = ["absorption", "splitting"]


def variant_k16(folder: Path) -> str:
    """The reference SAE's files with k = 16 in cfg.json (a second SAE at the same hook)."""
    from saebench.loading import reference_sae_path

    src = reference_sae_path()
    shutil.copytree(src, folder)
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["k"] = 16
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=2))
    return str(folder)


def fmt(v: float | None) -> str:
    return "None" if v is None else f"{v:.4f}"


def calls(counters) -> str:
    c = counters
    return (
        f"prompt-row batches {c.position_forward_batches} ({c.position_rows} rows), prefix batches "
        f"{c.prefix_batches}, suffix batches {c.clean_suffix_batches + c.spliced_suffix_batches}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sae", default="reference")
    ap.add_argument("--sae2", default=None)
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from saebench import evaluate
    from saebench.models import load_model

    t0 = time.perf_counter()
    model = load_model()
    t_load = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp, empty_activation_cache():
        sae2 = args.sae2 or variant_k16(Path(tmp) / "reference-k16")
        refs = {"splitting": {"reference": [args.sae, sae2]}}
        kw = {"model": model, "evals": EVALS, "profile": args.profile, "progress": False, "eval_config": refs}

        t0 = time.perf_counter()
        one = evaluate(args.sae, **kw)
        wall_one = time.perf_counter() - t0
        (hook,) = one.counters
        res_a = next(iter(one.results.values()))
        ab = res_a["absorption"]
        print(
            f"threads {torch.get_num_threads()}, profile {args.profile}, hook {hook}, model load {t_load:.1f}s; "
            f"absorption: {ab.metrics['n_words_train']} + {ab.metrics['n_words_test']} words, "
            f"{ab.config['evaluator_config']['icl_examples']} in-context examples"
        )
        t = ab.timing
        shared = t["prompts_s"] + t["activations_s"] + t["letter_probe_s"]
        per_sae = t["sae_encode_s"] + t["l1_probe_s"] + t["k_sparse_s"] + t["absorption_s"]
        print(f"1. A alone, cold cache: wall {wall_one:.1f}s; model calls: {calls(one.counters[hook])}")
        print(
            f"   absorption shared (once per hook): {shared:.1f}s = prompts {t['prompts_s']:.1f} + prompt activations "
            f"{t['activations_s']:.1f} + letter probes {t['letter_probe_s']:.1f}; per SAE {per_sae:.1f}s = encode "
            f"{t['sae_encode_s']:.1f} + L1 probe {t['l1_probe_s']:.1f} + k-sparse {t['k_sparse_s']:.1f} + "
            f"absorption {t['absorption_s']:.2f}"
        )
        sp = res_a["splitting"]
        print(f"   splitting per SAE: {sp.timing['evaluator_s']:.1f}s (no model call: decoder geometry only)")

        with empty_activation_cache():
            t0 = time.perf_counter()
            both = evaluate([args.sae, sae2], **kw)
            wall_both = time.perf_counter() - t0
        names = list(both.results)
        ev_b = sum(both.results[names[1]][e].timing["evaluator_s"] for e in EVALS)
        same = both.counters[hook].position_forward_batches == one.counters[hook].position_forward_batches
        print(
            f"2. A and B in one run, cold cache: wall {wall_both:.1f}s = {wall_both / wall_one:.2f}x run 1; model "
            f"calls: {calls(both.counters[hook])} ({'same as' if same else 'DIFFERENT from'} A alone); B's "
            f"evaluators {ev_b:.1f}s"
        )

        t0 = time.perf_counter()
        later = evaluate(sae2, **kw)
        wall_later = time.perf_counter() - t0
        rb = next(iter(later.results.values()))
        tb = rb["absorption"].timing
        print(
            f"3. B alone later, warm disk cache: wall {wall_later:.1f}s = {wall_later / wall_one:.2f}x run 1; model "
            f"calls: {calls(later.counters[hook])}; prompt activations {tb['activations_s']:.2f}s and letter probes "
            f"{tb['letter_probe_s']:.2f}s (both from the disk cache)"
        )
        for name, r in list(both.results.items()):
            m, s = r["absorption"].metrics, r["splitting"].metrics
            mmcs = s["mmcs_child"] if s["mmcs_child"] is not None else s["mmcs_parent"]
            print(
                f"   {name}: absorption {fmt(m['absorption_rate'])}, full "
                f"{fmt(m['full_absorption_rate'])}, split latents {fmt(m['num_main_latents'])} over "
                f"{m['n_letters_scored']} letters; max dec cos {fmt(s['average_max_decoder_cosine_sim'])}, mmcs vs "
                f"the other {fmt(mmcs)} (None: same weights, e.g. the k16 variant)"
            )


if __name__ == "__main__":
    main()
