"""Cost of a transcoder's core evaluation against an SAE's at the same layer, in one run.

    python benchmarks/transcoder.py [--layer 6] [--tokens 4096] [--train-tokens 32768] [--threads 1]

On the embedded model, three TopK dictionaries of the same width and k, trained here by
``saebench.train.train_sae`` on the same training tokens (1 epoch of batches of 256 tokens: cost, not
quality, is measured):

- TC: a transcoder reading ``blocks.L.ln2.hook_normalized`` and predicting ``blocks.L.hook_mlp_out``;
- SAE_out: an SAE at ``blocks.L.hook_mlp_out`` (the activation TC predicts: the same splice site);
- SAE_in: an SAE at ``blocks.L.ln2.hook_normalized`` (the activation TC reads).

Each gets ``--evals core`` in its own run, cold (its own empty activation cache: prefix pass, clean
side, zero-ablation baseline and spliced suffixes all computed), then ``--repeats`` warm runs (the
same cache again: only the spliced suffixes), interleaved across the three so a load spike on a
shared machine hits all of them. Prints the wall times (model loading and tokenization excluded;
warm: the median), the ratios T_TC / T_SAE, the spliced-suffix seconds of each (the per-SAE part)
and, for context, each one's FVU and ΔCE. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import torch
from _common import empty_activation_cache


def _core(sae, model, args) -> tuple[float, dict, dict]:
    """``--evals core`` on ``sae``: (wall seconds, metrics, timing)."""
    from saebench import evaluate

    t0 = time.perf_counter()
    run = evaluate(sae, model=model, tokens=args.tokens, ctx_len=args.ctx_len, batch_size=args.batch_size,
                   progress=False)  # fmt: skip
    wall = time.perf_counter() - t0
    name = next(iter(run.results))
    return wall, run.metrics["core"], run.results[name]["core"].timing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layer", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--ctx-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--train-tokens", type=int, default=32768)
    ap.add_argument("--d-sae", type=int, default=1536)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="warm runs per dictionary (interleaved; median reported)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from saebench.models import load_model
    from saebench.train import collect_transcoder_acts, train_sae

    model = load_model()
    hook_in, hook_out = f"blocks.{args.layer}.ln2.hook_normalized", f"blocks.{args.layer}.hook_mlp_out"
    t0 = time.perf_counter()
    with empty_activation_cache():
        x, y = collect_transcoder_acts(model, hook_in, hook_out, args.train_tokens, args.ctx_len, 1, progress=False)
    t_acts = time.perf_counter() - t0
    common = {"k": args.k, "model_name": model.name, "epochs": 1, "batch_tokens": 256, "progress": False}
    t0 = time.perf_counter()
    tc, _ = train_sae(x, "topk", args.d_sae, hook=hook_in, targets=y, hook_out=hook_out, **common)
    sae_out, _ = train_sae(y, "topk", args.d_sae, hook=hook_out, **common)
    sae_in, _ = train_sae(x, "topk", args.d_sae, hook=hook_in, **common)
    t_train = time.perf_counter() - t0
    print(f"layer {args.layer}: {x.shape[0]} training tokens ({t_acts:.1f} s to collect), three TopK "
          f"d_sae={args.d_sae} k={args.k} trained in {t_train:.1f} s; core on {args.tokens} tokens, ctx "
          f"{args.ctx_len}, batch {args.batch_size}, {args.threads} thread(s)")  # fmt: skip

    saes = {"TC": tc, "SAE_out": sae_out, "SAE_in": sae_in}
    cold: dict[str, float] = {}
    warm: dict[str, list[float]] = {k: [] for k in saes}
    spliced: dict[str, list[float]] = {k: [] for k in saes}
    metrics: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        roots = {label: stack.enter_context(empty_activation_cache()) for label in saes}
        for label, sae in saes.items():  # cold: each in its own empty cache
            os.environ["SAEBENCH_CACHE"] = str(roots[label])
            cold[label], metrics[label], _ = _core(sae, model, args)
        for _ in range(args.repeats):  # warm, interleaved: a load spike on the shared machine hits all three
            for label, sae in saes.items():
                os.environ["SAEBENCH_CACHE"] = str(roots[label])
                wall, _, timing = _core(sae, model, args)
                warm[label].append(wall)
                spliced[label].append(timing.get("spliced_s", 0.0))
    med = {k: statistics.median(v) for k, v in warm.items()}
    med_sp = {k: statistics.median(v) for k, v in spliced.items()}
    print(f"{'':8} {'cold s':>8} {'warm s (median of ' + str(args.repeats) + ')':>24} {'spliced s':>10} {'FVU':>7} "
          f"{'ΔCE':>7}")  # fmt: skip
    for label in saes:
        m = metrics[label]
        print(f"{label:8} {cold[label]:8.1f} {med[label]:24.1f} {med_sp[label]:10.1f} {m['fvu']:7.3f} "
              f"{m['delta_ce']:7.3f}   warm runs: {', '.join(f'{v:.1f}' for v in warm[label])}")  # fmt: skip
    for label in ("SAE_out", "SAE_in"):
        print(f"T_TC / T_{label}: cold {cold['TC'] / cold[label]:.2f}, warm {med['TC'] / med[label]:.2f} (median), "
              f"{min(warm['TC']) / min(warm[label]):.2f} (fastest run), spliced part (warm median) "
              f"{med_sp['TC'] / max(med_sp[label], 1e-9):.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
