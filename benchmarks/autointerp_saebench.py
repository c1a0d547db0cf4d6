"""Cost of autointerp's free-text path (SAEBench's protocol) against SAEBench 0.6.0's own autointerp, same inputs.

    OMP_NUM_THREADS=1 nice -n 15 .venv/bin/python benchmarks/autointerp_saebench.py \
        [--sae /work/zoo/topk-2304-k32] [--tokens 16384] [--latents 16] [--repeats 2]

Both sides run in this one process on the same SAE, the same transformer-lens model
(``saebench.models.load_model()``), the same token ids (one :class:`saebench.data.TokenSet`,
BOS at position 0, 128-token contexts) and the same latents, with SAEBench's sizes (explain:
10 top + 5 importance-sampled windows; score: 2 top + 2 sampled + 10 random; 21-token windows)
and the same batch size for model passes:

- **ours**: ``saebench.evaluate(..., evals=["autointerp"])`` with ``scoring=text``,
  ``scores=["detection"]`` (SAEBench runs no simulation), ``min_active_tokens=15`` (SAEBench's
  ``dead_latent_threshold``), no activation cache and no response cache, an LLM explainer at the
  stub endpoint. It samples ``--latents`` live latents itself (its firing pass is timed with it).
- **SAEBench**: ``sae_bench.evals.autointerp.main.run_eval_single_sae`` (what ``run_eval`` calls
  per SAE, without reloading a model from the hub) with ``override_latents`` = the latents ours
  drew, our SAE as SAEBench's own ``TopKSAE`` (``crosscheck_saebench.saebench_topk``), the model
  through ``saebench_view`` (its tokenizer prepends the BOS, as SAEBench expects), the token ids
  saved where SAEBench looks for its tokenized dataset. Its OpenAI client is pointed at the stub
  through ``OPENAI_BASE_URL``. Its code computes the firing frequency of every latent in a model
  pass whenever none is given (as ``run_eval`` does for an SAE object), so that pass is timed too.

The LLM is a local stub (``http.server`` on 127.0.0.1 speaking ``/v1/chat/completions``) with fixed
replies: an explanation (``This neuron activates on the token "the".``) and a detection answer
(``2, 5, 9``), which both sides parse. Its replies cost ~nothing, so the seconds are the non-LLM
work (model passes, example selection, prompt building) plus the HTTP round trips. Requests are
counted per side (the stub sees which path each came to).

Prints, per repeat and side: wall seconds, split into model passes and example collection (ours:
``prefix_states`` / ``examples_s``; SAEBench: its sparsity pass, ``collect_sae_activations``, the
rest of ``gather_data``) and the LLM phase; the number of requests; and the ratio SAEBench / ours.
Repeats alternate the order (ours first, then SAEBench first) to spread the load of a shared
machine over both. Not a test: ratios are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import torch
from _common import empty_activation_cache
from crosscheck_saebench import saebench_topk, saebench_view

EXPLANATION = 'This neuron activates on the token "the".'
DETECTION = "2, 5, 9"
SIZES = {  # SAEBench 0.6.0's AutoInterpEvalConfig defaults (ours: the paper profile's sizes)
    "n_top_explain": 10,
    "n_sampled_explain": 5,
    "n_top_score": 2,
    "n_sampled_score": 2,
    "n_random_score": 10,
    "window": 10,
}


class _Stub(BaseHTTPRequestHandler):
    """A chat-completions endpoint with fixed replies; counts requests per first path segment and kind."""

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._count("get")
        self._send({"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]})

    def do_POST(self) -> None:  # noqa: N802
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        system = req["messages"][0]["content"]
        explain = "Describe in one short phrase" in system or "summarize in a single sentence" in system
        kind = "explain" if explain else "detect"
        self._count(kind)
        reply = EXPLANATION if explain else DETECTION
        n_prompt = sum(len(m["content"]) for m in req["messages"]) // 4
        self._send(
            {
                "id": "stub",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": req["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": reply}}],
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": 8, "total_tokens": n_prompt + 8},
            }
        )

    def _count(self, kind: str) -> None:
        side = self.path.strip("/").split("/")[0]
        with self.server.lock:  # type: ignore[attr-defined]
            key = (side, kind)
            self.server.hits[key] = self.server.hits.get(key, 0) + 1  # type: ignore[attr-defined]


def start_stub() -> tuple[ThreadingHTTPServer, str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    srv.daemon_threads = True
    srv.hits, srv.lock = {}, threading.Lock()  # type: ignore[attr-defined]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"


def requests(srv: Any, side: str) -> dict[str, int]:
    """Requests the stub got from one side (and resets that side's counters)."""
    with srv.lock:
        out = {kind: n for (s, kind), n in srv.hits.items() if s == side}
        for key in [k for k in srv.hits if k[0] == side]:
            del srv.hits[key]
    return out


def stage_timers() -> tuple[dict[str, list[float]], Any]:
    """Time our example stages (``fire_counts``, ``latent_examples``, ``latent_acts``) and count the contexts
    ``encode_seqs`` hands the SAE, by wrapping the public functions; returns (record, undo)."""
    from saebench.pipeline import examples
    from saebench.pipeline.states import ActivationPipeline

    rec: dict[str, list[float]] = {"fire_counts": [], "latent_examples": [], "latent_acts": [], "encoded": []}
    saved = (examples.fire_counts, examples.latent_examples, examples.latent_acts, ActivationPipeline.encode_seqs)

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                rec[name].append(time.perf_counter() - t0)

        return wrapper

    def encode_seqs(self: Any, sae: Any, seqs: Any = None) -> Any:
        rec["encoded"].append(float(self.seq_index(seqs).numel()))
        yield from saved[3](self, sae, seqs)

    examples.fire_counts = timed("fire_counts", saved[0])
    examples.latent_examples = timed("latent_examples", saved[1])
    examples.latent_acts = timed("latent_acts", saved[2])
    ActivationPipeline.encode_seqs = encode_seqs  # type: ignore[method-assign]

    def undo() -> None:
        examples.fire_counts, examples.latent_examples, examples.latent_acts = saved[:3]
        ActivationPipeline.encode_seqs = saved[3]  # type: ignore[method-assign]

    return rec, undo


def run_ours(
    model: Any, sae: Any, ts: Any, url: str, n_latents: int, batch_size: int, seed: int, warm: bool = False
) -> dict[str, Any]:
    """Our autointerp, free-text detection at SAEBench's sizes: wall seconds, its split, the latents and score.

    Cold (default): no activation cache, every model pass runs. ``warm``: a first, untimed run stores the
    prefix states in a fresh activation cache, and the timed run reads them (what another evaluator of the
    same ``saebench run``, or a rerun, pays)."""
    from saebench import evaluate

    cfg = {
        **SIZES,
        "n_latents": n_latents,
        "min_active_tokens": 15,
        "base_url": f"{url}/ours/v1",
        "explainer_model": "gpt-4o-mini",
        "scoring": "text",
        "scores": ["detection"],
        "cache": False,
        "max_retries": 0,
    }
    kw = {"model": model, "token_set": ts, "evals": ["autointerp"], "eval_config": {"autointerp": cfg},
          "batch_size": batch_size, "seed": seed, "progress": False, "use_cache": warm, "name": "sae"}  # fmt: skip
    with empty_activation_cache():
        if warm:
            evaluate(sae, **kw)
        rec, undo = stage_timers()
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            run = evaluate(sae, **kw)
        finally:
            undo()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    res = run.results["sae"]["autointerp"]
    t = res.timing
    rows = res.details["latents"]
    return {
        "wall": wall,
        "cpu": cpu,
        "model": t.get("shared_inputs_s", 0.0),  # the prefix-state pass (prepare_hook)
        "examples": t["examples_s"],
        "llm": t["llm_s"],
        "other": wall - t.get("shared_inputs_s", 0.0) - t["examples_s"] - t["llm_s"],
        "latents": [r["latent"] for r in rows],
        "n_scored": sum(isinstance(r.get("detection"), dict) for r in rows),
        "score": res.metrics["detection_accuracy"],
        "timing": t,
        "stages": rec,
    }


def run_theirs(
    model: Any, sae: Any, ts: Any, url: str, latents: list[int], batch_size: int, seed: int
) -> dict[str, Any]:
    """SAEBench 0.6.0's ``run_eval_single_sae`` on the same token ids, SAE and latents: wall seconds and its split."""
    import sae_bench.evals.autointerp.main as sb
    import sae_bench.sae_bench_utils.activation_collection as ac
    from sae_bench.evals.autointerp.eval_config import AutoInterpEvalConfig

    tokens = ts.tokens
    cfg = AutoInterpEvalConfig(
        model_name=model.name,
        n_latents=None,
        override_latents=list(latents),
        random_seed=seed,
        llm_context_size=int(tokens.shape[1]),
        llm_batch_size=batch_size,
        llm_dtype="float32",
        total_tokens=int(tokens.numel()),
        buffer=SIZES["window"],
    )
    spent: dict[str, float] = {"sparsity": 0.0, "collect": 0.0, "gather": 0.0}
    originals = (ac.get_feature_activation_sparsity, ac.collect_sae_activations, sb.AutoInterp.gather_data)

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name] += time.perf_counter() - t0

        return wrapper

    grad = torch.is_grad_enabled()
    ac.get_feature_activation_sparsity = timed("sparsity", originals[0])
    ac.collect_sae_activations = timed("collect", originals[1])
    sb.AutoInterp.gather_data = timed("gather", originals[2])
    previous_url = os.environ.get("OPENAI_BASE_URL")
    os.environ["OPENAI_BASE_URL"] = f"{url}/saebench/v1"
    try:
        with tempfile.TemporaryDirectory() as tmp, saebench_view(model) as ht:
            name = f"{model.name.replace('/', '_')}_{cfg.total_tokens}_tokens_{cfg.llm_context_size}_ctx.pt"
            torch.save(tokens.clone(), Path(tmp) / name)  # where SAEBench looks for its tokenized dataset
            t0, c0 = time.perf_counter(), time.process_time()
            out = sb.run_eval_single_sae(cfg, sae, ht, "cpu", tmp, api_key="stub")
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        ac.get_feature_activation_sparsity, ac.collect_sae_activations, sb.AutoInterp.gather_data = originals
        if previous_url is None:
            os.environ.pop("OPENAI_BASE_URL", None)
        else:
            os.environ["OPENAI_BASE_URL"] = previous_url
        torch.set_grad_enabled(grad)
    scores = [r["score"] for r in out.values()]
    return {
        "wall": wall,
        "cpu": cpu,
        "model": spent["sparsity"] + spent["collect"],
        "examples": spent["sparsity"] + spent["gather"],
        "llm": wall - spent["sparsity"] - spent["gather"],
        "sparsity": spent["sparsity"],
        "collect": spent["collect"],
        "select": spent["gather"] - spent["collect"],
        "latents": sorted(out),
        "n_scored": len(out),
        "score": statistics.fmean(scores) if scores else None,
    }


def saebench_selection_per_latent(n_tokens: int, ctx_len: int, buffer: int, density: float = 0.003) -> float:
    """Seconds SAEBench's per-latent selection ops take on one latent's dense ``[n_ctx, ctx_len]`` activations
    at ``n_tokens`` tokens (synthetic: a fraction ``density`` of positions firing): ``get_k_largest_indices``
    (a full argsort, then the no-overlap loop), the threshold and ``get_iw_sample_indices`` (as in its
    ``gather_data``, bfloat16 as it stores them). No model pass: the part of its cost that grows with
    tokens x latents."""
    from sae_bench.sae_bench_utils.indexing_utils import get_iw_sample_indices, get_k_largest_indices

    g = torch.Generator().manual_seed(0)
    n_ctx = n_tokens // ctx_len
    acts = torch.rand(n_ctx, ctx_len, generator=g) * (torch.rand(n_ctx, ctx_len, generator=g) < density)
    acts = acts.to(torch.bfloat16)
    t0 = time.perf_counter()
    top = get_k_largest_indices(acts, k=12, buffer=buffer, no_overlap=True)
    threshold = acts[top[:, 0], top[:, 1]].min().item()
    rest = torch.where(acts >= threshold, 0.0, acts)
    get_iw_sample_indices(rest, k=7, buffer=buffer)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sae", default="/work/zoo/topk-2304-k32")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--ctx-len", type=int, default=128)
    ap.add_argument("--latents", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warm", action="store_true", help="also time ours reading cached prefix states")
    ap.add_argument(
        "--selection-tokens", type=int, default=2_000_000, help="tokens of the SAEBench selection micro-measure"
    )
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import sae_bench

    from saebench.data import build_token_set
    from saebench.loading import load_sae
    from saebench.models import load_model

    model = load_model()
    loaded = load_sae(a.sae)
    native, hook = loaded.sae, loaded.hook_name
    ts = build_token_set(model.tokenize, model.bos_id, a.tokens, a.ctx_len, seed=a.seed)
    theirs_sae = saebench_topk(native, hook, model.name)
    import openai  # noqa: F401 - imported before any timing, as SAEBench's modules are
    import sae_bench.evals.autointerp.main  # noqa: F401

    import saebench.autointerp.engine  # noqa: F401
    import saebench.evaluators.autointerp  # noqa: F401

    with torch.no_grad():  # warm-up: the first forward of a process pays one-off costs
        model.model(ts.tokens[:2, :16])
    srv, url = start_stub()
    print(
        f"SAE {loaded.name} ({hook}, d_sae {native.d_sae}); {ts.n_tokens} tokens in {ts.tokens.shape[0]} contexts of "
        f"{a.ctx_len}; {a.latents} latents; batch {a.batch_size}; torch threads {torch.get_num_threads()}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; SAEBench {getattr(sae_bench, '__version__', '0.6.0')}; "
        f"stub LLM at {url}"
    )
    rows: list[tuple[dict[str, Any], dict[str, Any]]] = []
    latents: list[int] | None = None
    for rep in range(a.repeats):
        order = ("ours", "saebench") if rep % 2 == 0 else ("saebench", "ours")
        got: dict[str, dict[str, Any]] = {}
        for side in order if latents is not None else ("ours", "saebench"):
            if side == "ours":
                got[side] = run_ours(model, native, ts, url, a.latents, a.batch_size, a.seed)
                latents = latents or got[side]["latents"]
            else:
                assert latents is not None
                got[side] = run_theirs(model, theirs_sae, ts, url, latents, a.batch_size, a.seed)
            got[side]["requests"] = requests(srv, side)
        o, s = got["ours"], got["saebench"]
        rows.append((o, s))
        if rep == 0:
            print(f"latents (ours drew them, SAEBench got them as override_latents): {latents}")
            print(f"ours timing keys: { {k: round(v, 2) for k, v in o['timing'].items()} }")
        o_work, s_work = o["wall"] - o["llm"], s["wall"] - s["llm"]
        st = o["stages"]
        fc, le, la = sum(st["fire_counts"]), sum(st["latent_examples"]), st["latent_acts"]
        n_ctx = ts.tokens.shape[0]
        print(
            f"  ours' examples: firing count {fc:.1f} s, example pass (top + importance buffers) "
            f"{le - (la[0] if la else 0):.1f} s, window re-encode {la[0] if la else 0:.1f} s, random windows "
            f"{sum(la[1:]):.1f} s; the SAE encoded {sum(st['encoded']):.0f} contexts = "
            f"{sum(st['encoded']) / n_ctx:.2f}x the token set ({[int(x) for x in st['encoded']]}); SAEBench: 2.00x "
            "(the sparsity pass and collect_sae_activations), each behind its own model pass"
        )
        print(
            f"repeat {rep + 1} ({' then '.join(order)}):\n"
            f"  ours     {o['wall']:6.1f} s = prefix-state model pass {o['model']:.1f} s + examples (firing count, "
            f"example pass, windows, random windows: SAE encodes) {o['examples']:.1f} s + LLM phase {o['llm']:.1f} s "
            f"+ run set-up and result {o['other']:.1f} s; requests {o['requests']}; latents scored {o['n_scored']}; "
            f"detection_accuracy {o['score']:.3f}\n"
            f"  SAEBench {s['wall']:6.1f} s = sparsity pass (model + SAE) {s['sparsity']:.1f} s + "
            f"collect_sae_activations (model + SAE) {s['collect']:.1f} s + example selection {s['select']:.1f} s + "
            f"LLM phase {s['llm']:.1f} s; requests {s['requests']}; latents scored {s['n_scored']}; "
            f"autointerp_score {s['score']:.3f}\n"
            f"  SAEBench / ours: wall {s['wall'] / o['wall']:.2f}x, CPU {s['cpu']:.1f} / {o['cpu']:.1f} s = "
            f"{s['cpu'] / o['cpu']:.2f}x; non-LLM work (model passes + example "
            f"collection) {s_work:.1f} / {o_work:.1f} s = {s_work / o_work:.2f}x; "
            f"LLM phase {s['llm']:.2f} / {o['llm']:.2f} s = {s['llm'] / max(o['llm'], 1e-9):.2f}x"
        )
    if a.warm:
        w = run_ours(model, native, ts, url, a.latents, a.batch_size, a.seed, warm=True)
        requests(srv, "ours")
        print(
            f"ours, prefix states from the activation cache: {w['wall']:.1f} s (model pass {w['model']:.1f} s, "
            f"examples {w['examples']:.1f} s, LLM phase {w['llm']:.1f} s); SAEBench / ours warm = "
            f"{statistics.median(s['wall'] for _, s in rows) / w['wall']:.2f}x wall, "
            f"{statistics.median(s['cpu'] for _, s in rows) / w['cpu']:.2f}x CPU (SAEBench has no activation cache)"
        )
    from openai import OpenAI

    t0 = time.perf_counter()
    for _ in range(8):
        OpenAI(api_key="stub", base_url=f"{url}/none/v1")
    per_client = (time.perf_counter() - t0) / 8
    print(
        f"OpenAI client construction: {per_client:.3f} s each (SAEBench builds one per request: "
        f"{2 * len(latents or []) * per_client:.1f} s of CPU for {2 * len(latents or [])} requests; ours builds one "
        "per endpoint and run)"
    )
    sel = saebench_selection_per_latent(a.selection_tokens, a.ctx_len, SIZES["window"])
    print(
        f"SAEBench's per-latent selection ops at {a.selection_tokens} tokens (its default total_tokens; synthetic "
        f"activations, no model pass): {sel:.2f} s per latent = {sel * 1000 / 60:.1f} min for its 1000 latents"
    )
    ow = statistics.median(o["wall"] for o, _ in rows)
    sw = statistics.median(s["wall"] for _, s in rows)
    oc = statistics.median(o["cpu"] for o, _ in rows)
    sc = statistics.median(s["cpu"] for _, s in rows)
    ratios = ", ".join(f"{s['wall'] / o['wall']:.2f}" for o, s in rows)
    print(
        f"median over {len(rows)} repeat(s): wall ours {ow:.1f} s, SAEBench {sw:.1f} s, "
        f"SAEBench / ours = {sw / ow:.2f} "
        f"(per repeat: {ratios}); CPU (this process, stub included) ours {oc:.1f} s, SAEBench {sc:.1f} s, "
        f"SAEBench / ours = {sc / oc:.2f}"
    )
    srv.shutdown()
    srv.server_close()


if __name__ == "__main__":
    main()
