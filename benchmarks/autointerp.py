"""Autointerp scoring throughput: the in-process scorer vs an endpoint, on the same latents; and the
cost per latent of the hosted path at a stated price. Prints, never asserts.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/autointerp.py --latents 2 --threads 1

1. Examples of ``--latents`` latents of the reference SAE (``--profile`` sizes; top-tokens
   explanations) are collected once.
2. In process (the embedded SmolLM2-135M, no response cache; its load time printed, and the
   tokens/s of bare forwards of the same model as the reference every ratio is taken against):
   the ``judge`` prompts (one per
   detection / fuzzing case and per simulated token: what an endpoint is sent) and the default
   ``surprisal`` items are scored; prompts/s counts questions answered, tokens/s the tokens those
   prompts hold (what an endpoint would prefill) and the tokens actually run (shared prefixes and
   branch rows make these far fewer).
3. The endpoint path: ``transformers serve`` on the same model folder (127.0.0.1, CPU) is sent the
   same judge prompts as one-token chat completions, ``--concurrency`` at a time, through the
   suite's client. transformers serve 5.x ignores ``logprobs`` (the judge refuses it in preflight),
   so this measures the work an endpoint does for the judge (one prefill and one token per prompt),
   not its scores.
4. Cost per latent on a hosted model at ``--price-in`` / ``--price-out`` USD per million tokens
   (default: gpt-4o-mini's list price): the judge prompts (1 completion token each) plus one
   explanation request (the explainer prompt, ``--explanation-tokens`` completion tokens), token
   counts from SmolLM2's tokenizer (an estimate of a hosted model's).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
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


def collect(n_latents: int, profile: str, tokens: int, seed: int = 0) -> list:
    """LatentData (with top-tokens explanations) of the reference SAE's first sampled latents."""
    from saebench.autointerp.explainers import top_tokens_explanation
    from saebench.data import build_token_set
    from saebench.evaluators.autointerp import AutointerpConfig, build_latent_data, gather_examples
    from saebench.loading import load_sae
    from saebench.models import load_model
    from saebench.pipeline import ActivationPipeline, examples

    model = load_model()
    sae = load_sae("reference").sae
    cfg = AutointerpConfig.for_profile(profile, n_latents=n_latents)
    ts = build_token_set(model.tokenize, model.bos_id, tokens, 128, seed=seed)
    pipe = ActivationPipeline(model, ts, sae.hook_name, batch_size=8, progress=False)
    latents, _ = examples.choose_latents(pipe, sae, None, 4 * n_latents, seed, "autointerp")
    col = gather_examples(pipe, sae, latents.tolist(), cfg, seed)
    out = []
    for lat in latents.tolist():
        d = build_latent_data(col[lat], cfg, lambda t: model.tokenizer.decode([t]), seed)
        if d is not None:
            d.explanation = top_tokens_explanation(d.explain, d.threshold)
            out.append(d)
        if len(out) == n_latents:
            break
    return out


def plans(latents: list, method: str) -> tuple[list, list]:
    """All items of ``method`` for the latents, and their tags."""
    from saebench.autointerp.engine import latent_cases
    from saebench.autointerp.logprob import build_plan

    items, tags = [], []
    for d in latents:
        plan, _ = build_plan(method, d.explanation, latent_cases(d, 0), ("detection", "fuzzing", "simulation"))
        items += plan.items
        tags += plan.tags
    return items, tags


def bare_tokens_per_s(model, batch: int, length: int, reps: int = 3) -> float:
    """Tokens/s of plain forwards of the scorer's model body on ``[batch, length]`` random ids (one warm-up)."""
    import torch

    ids = torch.randint(100, 10000, (batch, length), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.model(input_ids=ids, use_cache=False)
        t0 = time.perf_counter()
        for _ in range(reps):
            model.model(input_ids=ids, use_cache=False)
    return reps * ids.numel() / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latents", type=int, default=2)
    ap.add_argument("--profile", default="quick", choices=["quick", "standard", "paper"])
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the in-process scorer")
    ap.add_argument("--batch-size", type=int, default=16, help="prompts per forward of the in-process scorer")
    ap.add_argument("--price-in", type=float, default=0.15, help="USD per million prompt tokens (gpt-4o-mini)")
    ap.add_argument("--price-out", type=float, default=0.60, help="USD per million completion tokens (gpt-4o-mini)")
    ap.add_argument("--explanation-tokens", type=int, default=20, help="completion tokens of one explanation")
    ap.add_argument("--bare-len", type=int, default=64, help="sequence length of the bare-forward reference")
    ap.add_argument("--skip-endpoint", action="store_true")
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    from saebench.autointerp.client import LLMClient, LLMSettings
    from saebench.autointerp.embedded import EmbeddedScorer
    from saebench.autointerp.prompts import explanation_messages
    from saebench.models import _hf_folder

    t0 = time.perf_counter()
    latents = collect(a.latents, a.profile, a.tokens)
    print(
        f"{len(latents)} latents of the reference SAE ({a.profile} sizes), examples in "
        f"{time.perf_counter() - t0:.1f} s; torch threads {torch.get_num_threads()}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"
    )
    judge, _ = plans(latents, "judge")
    surprisal, s_tags = plans(latents, "surprisal")

    t0 = time.perf_counter()
    scorer = EmbeddedScorer(batch_size=a.batch_size)  # no cache: every prompt is computed
    print(f"scorer load (SmolLM2-135M fp32 from the cached transformers folder): {time.perf_counter() - t0:.2f} s")
    bare = bare_tokens_per_s(scorer.model, a.batch_size, a.bare_len)
    print(
        f"bare forward (no cache, no mask, {a.batch_size} x {a.bare_len} tokens, hidden states only): "
        f"{bare:.0f} tokens/s"
    )

    def vs_bare(dt: float, u: dict) -> str:
        """The scorer's time over the time bare forwards take for the tokens it ran / an endpoint would prefill."""
        return (
            f"{dt / (u['computed_tokens'] / bare):.2f}x bare forwards over the tokens run, "
            f"{dt / (u['prompt_tokens'] / bare):.3f}x over the prompt tokens"
        )

    t0 = time.perf_counter()
    scorer.top_logprobs(judge)
    dt = time.perf_counter() - t0
    u = scorer.usage.as_dict()
    print(
        f"in process, judge:     {len(judge)} prompts in {dt:.1f} s = {len(judge) / dt:.1f} prompts/s; "
        f"{u['prompt_tokens'] / dt:.0f} prompt tokens/s ({u['prompt_tokens']} tokens; {u['computed_tokens']} run "
        f"through the model in {u['forward_calls']} forwards = {u['computed_tokens'] / dt:.0f} tokens/s); "
        f"{dt / len(latents):.1f} s per latent; {vs_bare(dt, u)}"
    )
    judge_tokens = u["prompt_tokens"]
    scorer.usage = type(scorer.usage)()
    t0 = time.perf_counter()
    branch = [it for it, t in zip(surprisal, s_tags, strict=True) if t[0] == "positions"]
    plain = [it for it, t in zip(surprisal, s_tags, strict=True) if t[0] != "positions"]
    scorer.branch_logprobs(branch)
    scorer.continuation_logprobs(plain)
    dt = time.perf_counter() - t0
    u = scorer.usage.as_dict()
    print(
        f"in process, surprisal: {u['prompts']} questions in {dt:.1f} s = {u['prompts'] / dt:.1f} questions/s "
        f"({len(branch)} branch rows + {len(plain)} marked texts); {u['prompt_tokens'] / dt:.0f} equivalent prompt "
        f"tokens/s, {u['computed_tokens'] / dt:.0f} tokens/s run; {dt / len(latents):.1f} s per latent; "
        f"{vs_bare(dt, u)}"
    )

    folder = str(_hf_folder())
    if not a.skip_endpoint:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        tmp = Path(tempfile.mkdtemp(prefix="saebench-autointerp-bench-"))
        t0 = time.perf_counter()
        proc = start_server(folder, port, tmp / "server.log")
        try:
            import httpx

            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2, trust_env=False).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.25)
                if proc.poll() is not None or time.perf_counter() - t0 > 300:
                    sys.exit(f"server did not start: {(tmp / 'server.log').read_text()[-1500:]}")
            print(f"transformers serve healthy after {time.perf_counter() - t0:.1f} s")
            client = LLMClient(LLMSettings(base_url=f"http://127.0.0.1:{port}/v1", cache_dir=None, timeout_s=600))
            t0 = time.perf_counter()
            with ThreadPoolExecutor(max_workers=a.concurrency) as pool:
                list(pool.map(lambda m: client.chat(folder, m, 1), judge))
            dt = time.perf_counter() - t0
            cu = client.usage.as_dict()
            print(
                f"endpoint, judge prompts (max_tokens=1, concurrency {a.concurrency}): {len(judge)} prompts in "
                f"{dt:.1f} s = {len(judge) / dt:.2f} prompts/s; {cu['prompt_tokens'] / dt:.0f} prompt tokens/s "
                f"({cu['prompt_tokens']} prompt tokens reported); no log-probabilities returned"
            )
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    tok = scorer.tok
    expl_in = sum(len(scorer.render(explanation_messages(d.explain, [d.threshold] * len(d.explain)))) for d in latents)
    per_in = (judge_tokens + expl_in) / len(latents)
    per_out = len(judge) / len(latents) + a.explanation_tokens
    cost = (per_in * a.price_in + per_out * a.price_out) / 1e6
    print(
        f"hosted judge + LLM explainer, per latent ({a.profile} sizes): {len(judge) / len(latents):.0f} requests, "
        f"{per_in:.0f} prompt + {per_out:.0f} completion tokens (SmolLM2 tokenizer: {type(tok).__name__}) = "
        f"${cost:.5f} at ${a.price_in}/M in, ${a.price_out}/M out; ${cost * 1000:.2f} per 1000 latents"
    )


if __name__ == "__main__":
    main()
