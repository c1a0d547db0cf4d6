"""Autointerp cost per latent against a real local OpenAI-compatible server.

Starts ``transformers serve`` on the embedded SmolLM2 folder (127.0.0.1, CPU), runs
``--evals autointerp`` with the reference SAE on a fresh response cache, and prints per latent:
requests, prompt and completion tokens, and wall time (mean latency of one latent, and run wall
divided by latents at the given concurrency); then the projected cost of the ``paper`` profile
(1000 latents) on a hosted model at a stated price. Prints, never asserts.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/autointerp.py --latents 4 --concurrency 2

Example sizes default to the paper profile's (10 top + 5 sampled to explain, 2 + 2 + 10 random to
detect, 2 + 2 + 2 random to simulate, 21-token windows). Token counts are SmolLM2's tokenizer and
its (often rambling, max_tokens-capped) replies: an estimate of a hosted model's, not a quote.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def start_server(folder: str, port: int, log: Path) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("transformers")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    fh = open(log, "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [str(exe), "serve", folder, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
        stdout=fh,
        stderr=subprocess.STDOUT,
        env=env,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latents", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument(
        "--price-in", type=float, default=0.15, help="USD per million prompt tokens (gpt-4o-mini list price)"
    )
    ap.add_argument(
        "--price-out", type=float, default=0.60, help="USD per million completion tokens (gpt-4o-mini list price)"
    )
    ap.add_argument("--paper-latents", type=int, default=1000)
    a = ap.parse_args()

    import httpx

    import saebench
    from saebench.models import _hf_folder

    folder = str(_hf_folder())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = Path(tempfile.mkdtemp(prefix="saebench-autointerp-bench-"))
    t0 = time.perf_counter()
    proc = start_server(folder, port, tmp / "server.log")
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.25)
            if proc.poll() is not None or time.perf_counter() - t0 > 300:
                sys.exit(f"server did not start: {(tmp / 'server.log').read_text()[-1500:]}")
        t_start = time.perf_counter() - t0
        # no response cache: every request is a real one
        cfg = {
            "autointerp": {
                "base_url": f"http://127.0.0.1:{port}/v1",
                "explainer_model": folder,
                "n_latents": a.latents,
                "concurrency": a.concurrency,
                "cache": False,
            }
        }
        run = saebench.evaluate(
            "reference",
            evals=["autointerp"],
            profile="paper",
            tokens=a.tokens,
            ctx_len=128,
            batch_size=8,
            progress=False,
            eval_config=cfg,
        )
        res = next(iter(run.results.values()))["autointerp"]
        m = {**res.metrics, "timing_s": res.timing}
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    u, rows = m["usage"], m["latents"]
    n = max(1, len(rows))
    print(f"server start (transformers serve, CPU): {t_start:.1f} s to healthy")
    print(
        f"latents run: {len(rows)} (sampled {m['n_latents_sampled']}, skipped {m['n_skipped_few_examples']}), "
        f"concurrency {a.concurrency}"
    )
    print(f"requests/latent: {u['requests'] / n:.2f}  (retries {u['retries']}, failed {u['failed_requests']})")
    print(
        f"prompt tokens/latent: {u['prompt_tokens'] / n:.0f}   completion tokens/latent: "
        f"{u['completion_tokens'] / n:.0f}"
    )
    lat = [r["wall_s"] for r in rows]
    print(
        f"wall/latent: mean latency {sum(lat) / n:.1f} s; throughput {m['timing_s']['llm_s'] / n:.1f} s per latent "
        f"(LLM phase {m['timing_s']['llm_s']:.1f} s; example collection {m['timing_s']['examples_s']:.1f} s)"
    )
    statuses = {s: sum(r["status"] == s for r in rows) for s in {r["status"] for r in rows}}
    print(
        f"outcomes: {statuses}; unparseable detection {m['n_unparseable_detection']}, simulation "
        f"{m['n_unparseable_simulation']}"
    )
    per_in, per_out = u["prompt_tokens"] / n, u["completion_tokens"] / n
    cost = a.paper_latents * (per_in * a.price_in + per_out * a.price_out) / 1e6
    print(
        f"projected paper profile ({a.paper_latents} latents) at ${a.price_in}/M in, ${a.price_out}/M out: "
        f"{a.paper_latents * per_in / 1e6:.2f} M prompt + {a.paper_latents * per_out / 1e6:.2f} M completion tokens "
        f"= ${cost:.2f} per SAE"
    )
    for r in rows[:4]:
        print(
            f"  latent {r['latent']}: {r['status']}: {r.get('explanation')!r} "
            f"det={det if not isinstance(det := r.get('detection'), dict) else det['balanced_accuracy']} "
            f"sim={r.get('simulation') if not isinstance(r.get('simulation'), dict) else r['simulation']['r']}"
        )


if __name__ == "__main__":
    main()
