"""Sweeps: peak memory and wall time for 1, 8, 32 reference-sized SAEs at one and three hooks,
with and without --max-memory, and the same 32-SAE sweep through Ray with 1 and 2 workers.

    python benchmarks/sweep.py [--tokens 1024] [--budget 2.5GB] [--counts 1,8,32] [--ray]

Each configuration runs in a fresh child process (``saebench.evaluate`` on the embedded model,
``core`` only, warm activation cache so every run measures the same work: prefix states and
ablation baselines are read, every SAE costs one spliced suffix) and reports its own peak RSS
(``ru_maxrss``) and wall time excluding model load. The SAEs are the shipped reference TopK SAE
(576 x 2304, k 32) plus seeded noise, so each has its own fingerprint and its own result.

Printed: per configuration T (s), peak RSS, SAEs/hour, and the marginal cost of one SAE,
(T_32 - T_8) / 24, in units of one bare suffix pass from the hook's block over the token set
(measured in the same run), which is the floor; and for Ray the throughput and the overhead vs
the plain single process, (T_ray - T_plain) / T_plain. Targets (printed, never asserted): peak
under the budget; marginal cost ~1 suffix; Ray overhead <= 10% at 1 worker.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOOKS = ("blocks.6.hook_resid_post", "blocks.3.hook_resid_post", "blocks.9.hook_resid_post")

CHILD = r"""
import json, os, sys, time, torch
torch.set_num_threads(1)
args = json.loads(sys.argv[1])
from saebench.budget import peak_rss_bytes, reset_peak_rss, rss_bytes, window_peak_rss_bytes
from saebench.models import load_model
t0 = time.perf_counter()
if args.get("ray_workers"):
    from saebench.distributed import evaluate_ray
    model_load = 0.0
    run = evaluate_ray(args["specs"], workers=args["ray_workers"], threads=1, out=args["out"], progress=False,
                       tokens=args["tokens"], ctx_len=args["ctx_len"], batch_size=args["batch_size"])
else:
    from saebench import evaluate
    model = load_model()
    model_load = time.perf_counter() - t0
    load_peak, after_load = peak_rss_bytes(), rss_bytes()
    reset_peak_rss()
    t0 = time.perf_counter()
    run = evaluate(args["specs"], model=model, out=args["out"], progress=False, tokens=args["tokens"],
                   ctx_len=args["ctx_len"], batch_size=args["batch_size"], max_memory=args.get("budget"))
wall = time.perf_counter() - t0
n = sum(len(per) for per in run.results.values()) - len(run.skipped)
sweep_peak = window_peak_rss_bytes() if not args.get("ray_workers") else peak_rss_bytes()
print("RESULT " + json.dumps({"wall": wall, "model_load": model_load, "peak": peak_rss_bytes(), "n": n,
                              "sweep_peak": sweep_peak, "groups": {h: g for h, g in run.groups.items()},
                              "load_peak": locals().get("load_peak", 0), "after_load": locals().get("after_load", 0),
                              "dist": {k: v for k, v in run.distributed.items() if k != "reruns"}}))
"""


def make_saes(folder: Path, n: int, hooks: tuple[str, ...]) -> dict[str, list[str]]:
    """``n`` perturbed copies of the reference SAE per hook, as native folders."""
    import torch

    from saebench.loading import load_sae
    from saebench.sae import save_native

    ref = load_sae("reference").sae
    out: dict[str, list[str]] = {}
    for h in hooks:
        out[h] = []
        for i in range(n):
            path = folder / f"{h.split('.')[1]}-{i:03d}"
            if not (path / "cfg.json").is_file():
                sae = load_sae("reference").sae
                g = torch.Generator().manual_seed(1000 * int(h.split(".")[1]) + i)
                with torch.no_grad():
                    for p in sae.parameters():
                        if p.ndim:
                            p.add_(torch.randn(p.shape, generator=g) * 1e-3 * p.abs().mean())
                sae.cfg.hook_name = sae.hook_name = h
                save_native(sae, path)
            out[h].append(str(path))
    del ref
    return out


def child(args: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"child failed:\n{proc.stderr[-3000:]}")


def bare_suffix_seconds(tokens: int, ctx_len: int, batch_size: int, hook: str) -> tuple[float, float]:
    """One bare forward and one bare suffix from ``hook``'s block over the token set (best of 2)."""
    import torch

    torch.set_num_threads(1)
    from saebench.data import build_token_set
    from saebench.models import load_model

    model = load_model()
    site = model.hook_site(hook)
    ts = build_token_set(model.tokenize, model.bos_id, tokens, ctx_len, seed=0)
    batches = [ts.tokens[s : s + batch_size] for s in range(0, ts.tokens.shape[0], batch_size)]
    states = [model.prefix(b, site) for b in batches]

    def best(fn) -> float:
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            with torch.no_grad():
                for i, b in enumerate(batches):
                    fn(i, b)
            times.append(time.perf_counter() - t0)
        return min(times)

    return best(lambda i, b: model.model(b)), best(lambda i, b: model.suffix(states[i], site))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=1024, help="tokens per hook (quick profile: 8192)")
    ap.add_argument("--ctx-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--counts", default="1,8,32")
    ap.add_argument("--budget", default="2.5GB", help="--max-memory for the budgeted runs")
    ap.add_argument("--hooks", type=int, default=3, help="hooks for the multi-hook runs (max 3)")
    ap.add_argument("--ray", action="store_true", help="also the 32-SAE sweep through Ray with 1 and 2 workers")
    ap.add_argument("--skip-plain", action="store_true", help="only the Ray comparison")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of the Ray comparison (best of N is reported)")
    ap.add_argument("--work", help="folder for the SAEs and results (default: a temporary one)")
    args = ap.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    hooks = HOOKS[: args.hooks]
    sizes = {"tokens": args.tokens, "ctx_len": args.ctx_len, "batch_size": args.batch_size}
    work = Path(args.work or tempfile.mkdtemp(prefix="saebench-sweep-"))
    saes = make_saes(work / "saes", max(counts), hooks)
    print(f"saebench sweep benchmark: {args.tokens} tokens/hook, ctx {args.ctx_len}, batch {args.batch_size}, 1 thread")
    print(f"SAEs: reference-sized TopK 576 x 2304 (k 32), {max(counts)} per hook; core only; warm activation cache")
    t_fwd, t_suf = bare_suffix_seconds(args.tokens, args.ctx_len, args.batch_size, HOOKS[0])
    print(f"bare forward {t_fwd:.2f} s, bare suffix from block 7 of 30 {t_suf:.2f} s ({t_suf / t_fwd:.3f} forward)")
    # warm the activation cache for every hook (prefix states + ablation baselines), untimed
    for h in hooks:
        child({"specs": saes[h][:1], "out": str(work / "warm"), **sizes})

    def run(name: str, specs: list[str], budget: str | None = None, ray_workers: int = 0) -> dict:
        out = work / "out" / f"{name}-{time.time_ns()}"
        res = child({"specs": specs, "out": str(out), "budget": budget, "ray_workers": ray_workers, **sizes})
        per_hour = res["n"] / res["wall"] * 3600 if res["wall"] > 0 else float("nan")
        print(
            f"{name:34s} T {res['wall']:7.1f} s  peak RSS {res['peak'] / 1e9:5.2f} GB (model load "
            f"{res['load_peak'] / 1e9:4.2f}, sweep {res['sweep_peak'] / 1e9:4.2f} from "
            f"{res['after_load'] / 1e9:4.2f})  {per_hour:6.0f} SAEs/h"
            + (f"  budget {budget}, groups {res['groups']}" if budget else "")
        )
        return res

    results: dict[str, dict] = {}
    if not args.skip_plain:
        for n_hooks in (1, len(hooks)) if len(hooks) > 1 else (1,):
            for n in counts:
                specs = [s for h in hooks[:n_hooks] for s in saes[h][:n]]
                results[f"{n}x{n_hooks}"] = run(f"{n} SAE(s) x {n_hooks} hook(s)", specs)
                if n > 1:
                    results[f"{n}x{n_hooks}b"] = run(f"{n} SAE(s) x {n_hooks} hook(s), budget", specs, args.budget)
        lo, hi = min((c for c in counts if c > 1), default=1), max(counts)
        for tag in ("", "b"):
            if hi > lo and f"{hi}x1{tag}" in results and f"{lo}x1{tag}" in results:
                marginal = (results[f"{hi}x1{tag}"]["wall"] - results[f"{lo}x1{tag}"]["wall"]) / (hi - lo)
                print(
                    f"marginal SAE ({lo}->{hi}, one hook{', budget' if tag else ''}): {marginal:.2f} s = "
                    f"{marginal / t_suf:.2f} bare suffixes = {marginal / t_fwd:.2f} forward passes"
                )
    if args.ray:
        n = max(counts)
        specs = saes[hooks[0]][:n]
        rounds: dict[str, list[dict]] = {"plain": [], "ray1": [], "ray2": []}
        for i in range(args.repeat):  # interleaved: a busy machine slows all three alike
            rounds["plain"].append(run(f"{n} SAEs x 1 hook, plain [{i + 1}]", specs))
            for w in (1, 2):
                rounds[f"ray{w}"].append(run(f"{n} SAEs x 1 hook, ray {w} worker(s) [{i + 1}]", specs, ray_workers=w))
        plain = min(rounds["plain"], key=lambda r: r["wall"])
        base = plain["wall"] + plain["model_load"]  # Ray's wall includes the actors' model load
        print(f"best of {args.repeat}: plain compute {plain['wall']:.1f} s, incl. model load {base:.1f} s")
        for w in (1, 2):
            r = min(rounds[f"ray{w}"], key=lambda r: r["wall"])
            d = r["dist"]
            print(
                f"  ray {w} worker(s): plan {d['plan_s']:.1f} s + cluster/actors/model start {d['startup_s']:.1f} s + "
                f"jobs {d['jobs_s']:.1f} s (inside the actors {d['worker_compute_s']:.1f} s); whole run vs plain incl. "
                f"model load {(r['wall'] - base) / base * 100:+.1f}%; jobs phase vs plain compute "
                f"{(d['jobs_s'] - plain['wall']) / plain['wall'] * 100:+.1f}%; {n / r['wall'] * 3600:.0f} SAEs/h"
            )


if __name__ == "__main__":
    main()
