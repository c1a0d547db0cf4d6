"""Autointerp: scoring math on known inputs, parsers, and the machinery against a REAL local
OpenAI-compatible server (``transformers serve`` on the embedded SmolLM2 folder, 127.0.0.1 only).

The server's explanations are weak (135M parameters); these tests check prompts, parsing, caching,
retries, budget and error paths, not explanation quality (tests/test_autointerp_planted.py does
that). Completions are kept few (~2 s each). The log-probability scorers, the in-process scorer
and hostile endpoints are in tests/test_autointerp_logprob.py.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from saebench.autointerp.client import BudgetExhausted, LLMClient, LLMSettings, RequestFailed
from saebench.autointerp.engine import EngineSettings, LatentData, ask, run_latents
from saebench.autointerp.parsing import parse_detection, parse_explanation, parse_simulation
from saebench.autointerp.prompts import TextExample, detection_messages, explanation_messages, simulation_messages
from saebench.autointerp.scoring import detection_scores, normalize_activations, pearson, simulation_score
from saebench.errors import SaebenchError

# -- scoring math ------------------------------------------------------------------------------


def test_perfect_detector_has_balanced_accuracy_one():
    truth = [True, False, False, True, False, False, False]
    s = detection_scores(truth, truth)
    assert s["balanced_accuracy"] == 1.0 and s["precision"] == 1.0 and s["recall"] == 1.0


def test_detection_scores_on_known_counts():
    truth = [True, True, False, False, False, False]
    pred = [True, False, True, False, False, False]  # tp 1, fn 1, fp 1, tn 3
    s = detection_scores(pred, truth)
    assert (s["tp"], s["fn"], s["fp"], s["tn"]) == (1, 1, 1, 3)
    assert s["balanced_accuracy"] == pytest.approx((0.5 + 0.75) / 2)
    assert s["precision"] == 0.5 and s["recall"] == 0.5
    none = detection_scores([False] * 6, truth)  # predicts nothing: precision undefined, not NaN
    assert none["precision"] is None and none["balanced_accuracy"] == 0.5


def test_simulator_returning_truth_gives_r_one_and_constant_gives_none():
    acts = [[0.0, 0.3, 2.5, 0.0], [1.0, 0.0, 0.0, 4.0]]
    truth = [normalize_activations(a, 4.0) for a in acts]
    assert simulation_score(truth, truth) == pytest.approx(1.0)
    assert simulation_score(acts, truth) == pytest.approx(1.0)  # scale-free
    const = [[5.0] * 4, [5.0] * 4]
    r = simulation_score(const, truth)
    assert r is None and json.dumps({"r": r}, allow_nan=False) == '{"r": null}'
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


# -- parsing and prompts -----------------------------------------------------------------------


def test_parsers_accept_good_and_refuse_malformed_replies():
    assert parse_explanation('This latent fires on "the word cat".') == "the word cat"
    assert parse_explanation("Explanation: numbers in dates\nmore text") == "numbers in dates"
    assert parse_explanation("") is None and parse_explanation("x" * 400) is None
    assert parse_detection("2, 5 and 7.", 8) == [2, 5, 7]
    assert parse_detection("None", 8) == []
    assert parse_detection("I think 2 and maybe 3", 8) is None
    assert parse_detection("9", 8) is None  # out of range
    assert parse_simulation("1: 0, 0, 10\n2: 3, 4", [3, 2]) == [[0, 0, 10], [3, 4]]
    assert parse_simulation("1: 0, 0\n2: 3, 4", [3, 2]) is None  # wrong count
    assert parse_simulation("1: 0, 0, 11\n2: 3, 4", [3, 2]) is None  # out of 0..10
    assert parse_simulation("sure!", [3]) is None


def _ex(tokens: list[str], acts: list[float]) -> TextExample:
    return TextExample(tokens, acts, any(a > 0.1 for a in acts))


def test_prompts_mark_activating_tokens_only_for_the_explainer():
    ex = _ex([" the", " cat", "\n", " sat"], [0.0, 3.0, 0.0, 0.05])
    msgs = explanation_messages([ex], [0.1])
    assert "<< cat>>" in msgs[1]["content"] and "↵" in msgs[1]["content"] and "<< sat>>" not in msgs[1]["content"]
    det = detection_messages("cats", [ex, ex])
    assert "<<" not in det[1]["content"] and "1. " in det[1]["content"] and "2. " in det[1]["content"]
    sim = simulation_messages("cats", [ex])
    assert "(4 tokens)" in sim[1]["content"] and " cat | " in sim[1]["content"]


def test_missing_key_for_a_remote_endpoint_is_an_error(monkeypatch):
    monkeypatch.delenv("MY_LLM_KEY", raising=False)
    with pytest.raises(SaebenchError, match=r"no API key for https://api\.example\.invalid/v1: set \$MY_LLM_KEY"):
        LLMClient(LLMSettings(base_url="https://api.example.invalid/v1", api_key_env="MY_LLM_KEY"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_endpoint_is_one_line_naming_the_url():
    url = f"http://127.0.0.1:{_free_port()}/v1"
    with pytest.raises(SaebenchError) as err:
        LLMClient(LLMSettings(base_url=url)).check(timeout_s=2)
    assert url in str(err.value) and "\n" not in str(err.value)


def test_cli_refuses_unreachable_endpoint_before_loading_the_model(capsys):
    from saebench.cli import main

    url = f"http://127.0.0.1:{_free_port()}/v1"
    t0 = time.perf_counter()
    rc = main(
        [
            "run",
            "--sae",
            "reference",
            "--evals",
            "autointerp",
            "--llm-base-url",
            url,
            "--llm-model",
            "m",
            "--out",
            "/tmp/saebench-autointerp-never-written",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and url in err[0]
    assert time.perf_counter() - t0 < 15  # no model load happened


def test_llm_flags_map_onto_the_evaluator_config():
    from saebench.cli import _eval_config, build_parser
    from saebench.evaluators.autointerp import AutointerpConfig

    a = build_parser().parse_args(
        [
            "run",
            "--llm-base-url",
            "http://127.0.0.1:1/v1",
            "--llm-model",
            "ex",
            "--llm-scorer-model",
            "sc",
            "--llm-concurrency",
            "3",
            "--llm-max-tokens",
            "500",
            "--set",
            "autointerp.scores=detection",
        ]
    )
    cfg = AutointerpConfig.for_profile("quick", **_eval_config(a)["autointerp"])
    assert (cfg.base_url, cfg.explainer_model, cfg.scorer_model) == ("http://127.0.0.1:1/v1", "ex", "sc")
    assert (cfg.concurrency, cfg.max_tokens_budget, cfg.scores, cfg.n_latents) == (3, 500, ["detection"], 8)
    default = AutointerpConfig.for_profile(
        "quick", **_eval_config(build_parser().parse_args(["run"])).get("autointerp", {})
    )
    assert default.base_url == "embedded"  # no flags: offline
    hosted = _eval_config(build_parser().parse_args(["run", "--llm-model", "gpt-4o-mini", "--llm-max-cost", "2"]))
    assert hosted["autointerp"]["base_url"] == "https://api.openai.com/v1"  # not silently offline
    assert "base_url" not in _eval_config(build_parser().parse_args(["run", "--llm-concurrency", "2"]))["autointerp"]
    split = ["run", "--llm-scorer-model", "sc", "--set", "autointerp.scorer_base_url=http://127.0.0.1:1/v1"]
    assert "base_url" not in _eval_config(build_parser().parse_args(split))["autointerp"]  # offline explainer


# -- a real server -----------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    model: str


@pytest.fixture(scope="session")
def llm_server(tmp_path_factory):
    """``transformers serve`` on the dequantized SmolLM2 folder, on a free 127.0.0.1 port."""
    pytest.importorskip("fastapi", reason="needs transformers[serving] (in the dev extra)")
    pytest.importorskip("uvicorn", reason="needs transformers[serving] (in the dev extra)")
    from saebench.models import _hf_folder

    exe = Path(sys.executable).with_name("transformers")
    exe = str(exe) if exe.exists() else shutil.which("transformers")
    assert exe, "the transformers CLI is not installed"
    folder = str(_hf_folder())
    port = _free_port()
    log = tmp_path_factory.mktemp("llm") / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [exe, "serve", folder, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
        )
    import httpx

    deadline = time.time() + 180
    while True:
        if proc.poll() is not None:
            pytest.fail(f"transformers serve exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2, trust_env=False).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"transformers serve not healthy after 180 s: {log.read_text()[-2000:]}")
        time.sleep(0.5)
    yield Server(f"http://127.0.0.1:{port}/v1", folder)
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _client(url: str, cache: Path | None = None, **kw) -> LLMClient:
    return LLMClient(LLMSettings(base_url=url, cache_dir=cache, backoff_s=0.05, timeout_s=120, **kw))


HI = [{"role": "user", "content": "Name one colour. Reply with one word."}]


def test_real_server_reply_is_cached_and_a_rerun_sends_nothing(llm_server, tmp_path):
    c1 = _client(llm_server.url, tmp_path / "cache")
    c1.check()
    reply = c1.chat(llm_server.model, HI, 8)
    assert isinstance(reply, str) and reply.strip()
    assert c1.usage.requests == 1 and c1.usage.prompt_tokens > 0 and c1.usage.completion_tokens > 0
    c2 = _client(llm_server.url, tmp_path / "cache")
    assert c2.chat(llm_server.model, HI, 8) == reply
    assert c2.usage.requests == 0 and c2.usage.cached == 1 and c2.usage.prompt_tokens == 0


def test_unparseable_reply_is_retried_once_with_a_stricter_instruction(llm_server, tmp_path):
    c = _client(llm_server.url, tmp_path / "cache")
    value, replies = ask(c, llm_server.model, HI, 8, lambda r: None, "STRICTER: one word only.")
    assert value is None and len(replies) == 2 and c.usage.requests == 2
    entries = [json.loads(p.read_text()) for p in (tmp_path / "cache").rglob("*.json")]
    last = [e for e in entries if len(e["request"]["messages"]) == 3]
    assert last and last[0]["request"]["messages"][-1]["content"] == "STRICTER: one word only."
    assert last[0]["request"]["messages"][1] == {"role": "assistant", "content": replies[0]}
    value, replies = ask(c, llm_server.model, HI, 8, lambda r: r, "unused")  # well-formed: one request (cached)
    assert value == replies[0] and len(replies) == 1 and c.usage.requests == 2


class _DropFirst(socketserver.ThreadingTCPServer):
    """A 127.0.0.1 TCP proxy that closes its first ``drop`` connections unanswered, then forwards."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, upstream: tuple[str, int], drop: int) -> None:
        self.upstream, self.drop, self.seen = upstream, drop, 0
        super().__init__(("127.0.0.1", 0), _Pipe)


class _Pipe(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        srv = self.server
        srv.seen += 1
        if srv.seen <= srv.drop:
            self.request.close()
            return
        up = socket.create_connection(srv.upstream)

        def pump(a: socket.socket, b: socket.socket) -> None:
            try:
                while data := a.recv(65536):
                    b.sendall(data)
            except OSError:
                pass
            finally:
                for s in (a, b):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        t = threading.Thread(target=pump, args=(up, self.request), daemon=True)
        t.start()
        pump(self.request, up)
        t.join(timeout=30)
        up.close()


@pytest.fixture
def proxy(llm_server):
    from urllib.parse import urlparse

    u = urlparse(llm_server.url)
    servers = []

    def make(drop: int) -> str:
        srv = _DropFirst((u.hostname, u.port), drop)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/v1"

    yield make
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def test_dropped_request_is_retried(llm_server, proxy):
    c = _client(proxy(drop=1), max_retries=3)
    assert c.chat(llm_server.model, HI, 8).strip()
    assert c.usage.retries == 1 and c.usage.requests == 1


def _latent(i: int) -> LatentData:
    act = _ex([" a", f" cat{i}", " sat"], [0.0, 2.0, 0.0])
    off = _ex([" the", " dog", " ran"], [0.0, 0.0, 0.0])
    return LatentData(i, [act], [act, off], [act, off], 0.02, 2.0, 3)


def test_a_latent_whose_requests_keep_failing_is_failed_not_zero(llm_server, proxy):
    c = _client(proxy(drop=10), max_retries=1)
    st = EngineSettings(explainer_model=llm_server.model, scorer_model=llm_server.model, concurrency=1)
    (row,) = run_latents(c, [_latent(0)], st)
    assert row["status"] == "failed" and "retries" in row["error"] and "detection" not in row
    assert c.usage.failed_requests == 1 and c.usage.retries == 1
    with pytest.raises(RequestFailed):
        c.chat(llm_server.model, HI, 8)


def test_budget_stop_keeps_what_is_done(llm_server, tmp_path):
    from saebench.evaluators.autointerp import summarize

    c = _client(llm_server.url, tmp_path / "cache", max_tokens_budget=1)
    st = EngineSettings(
        explainer_model=llm_server.model,
        scorer_model=llm_server.model,
        concurrency=1,
        max_tokens_explanation=16,
        scores=("detection",),
    )
    rows = run_latents(c, [_latent(0), _latent(1), _latent(2)], st)
    assert c.usage.requests == 1  # the first request spends the budget; nothing else is sent (cache hits would be)
    assert [r["status"] for r in rows][1:] == ["not_run", "not_run"]
    assert rows[0]["status"] in ("partial", "not_run", "unparseable")
    s = summarize(rows)
    assert s["n_not_run_budget"] + s["n_partial_budget"] + s["n_unparseable_explanation"] == 3
    with pytest.raises(BudgetExhausted):
        c.chat(llm_server.model, [{"role": "user", "content": "another"}], 4)


def test_judge_scoring_on_an_endpoint_without_logprobs_is_one_line(llm_server, tmp_path):
    """``transformers serve`` 5.x ignores logprobs/top_logprobs: refused in preflight, naming the URL."""
    from saebench.evaluators.autointerp import AutointerpConfig, AutointerpEvaluator

    cfg = AutointerpConfig(base_url=llm_server.url, explainer_model=llm_server.model, cache=False)
    with pytest.raises(SaebenchError) as err:
        AutointerpEvaluator().preflight(cfg)
    msg = str(err.value)
    assert "\n" not in msg and llm_server.url in msg and "no log-probabilities" in msg and "scoring=text" in msg


def test_hosted_explainer_with_the_embedded_scorer(llm_server, cache_env, tmp_path):
    """Explanations from an endpoint (chat completions), scores in process: both named in the result."""
    import saebench

    cfg = {
        "autointerp": {
            "base_url": llm_server.url,
            "explainer_model": llm_server.model,
            "scorer_base_url": "embedded",
            "n_latents": 2,
            "n_top_explain": 2,
            "n_sampled_explain": 1,
            "n_top_score": 1,
            "n_sampled_score": 1,
            "n_random_score": 2,
            "n_random_simulation": 1,
            "n_random_fuzz": 1,
            "window": 2,
            "max_tokens_explanation": 16,
        }
    }
    kw = {"evals": ["autointerp"], "tokens": 1024, "ctx_len": 32, "batch_size": 8, "progress": False}
    run = saebench.evaluate("reference", eval_config=cfg, **kw)
    m, d = run.metrics["autointerp"], run.details["autointerp"]
    assert d["explainer"] == f"llm: {llm_server.model} at {llm_server.url}"
    assert d["scorer"].startswith("embedded smollm2-135m-instruct in process (surprisal")
    assert d["usage"]["requests"] >= 1 and d["embedded_usage"]["prompts"] > 0
    scored = [r for r in d["latents"] if r["status"] == "scored"]
    assert scored and all(isinstance(r["fuzzing"], dict) for r in scored)
    assert m["n_latents_run"] + m["n_skipped_few_examples"] == 2


def test_evaluate_end_to_end_and_rerun_costs_nothing(llm_server, cache_env, tmp_path):
    import saebench

    cfg = {
        "autointerp": {
            "base_url": llm_server.url,
            "explainer_model": llm_server.model,
            "scoring": "text",
            "n_latents": 2,
            "n_top_explain": 2,
            "n_sampled_explain": 1,
            "n_top_score": 1,
            "n_sampled_score": 1,
            "n_random_score": 2,
            "n_random_simulation": 1,
            "window": 2,
            "concurrency": 2,
            # room for a well-formed reply (at most 4 example numbers; 15 activations), no more: the
            # 135M server rambles to the cap, and each token costs ~0.1 s on CPU
            "max_tokens_explanation": 24,
            "max_tokens_detection": 16,
            "max_tokens_simulation": 48,
        }
    }
    kw = {
        "evals": ["autointerp"],
        "tokens": 1024,
        "ctx_len": 32,
        "batch_size": 8,
        "out": tmp_path / "out",
        "progress": False,
        "eval_config": cfg,
    }
    first = saebench.evaluate("reference", **kw)
    m = {**first.metrics["autointerp"], **first.details["autointerp"]}
    json.dumps(m, allow_nan=False)  # undefined values are null, never NaN
    assert m["n_latents_sampled"] == 2 and m["n_latents_run"] + m["n_skipped_few_examples"] == 2
    assert m["usage"]["requests"] >= 1 and m["usage"]["prompt_tokens"] > 0
    assert m["scores"] == ["detection", "simulation"] and m["scorer"].endswith("(free text: parsed replies)")
    for row in m["latents"]:
        assert row["status"] in ("scored", "unparseable")
        if row["status"] == "scored":
            assert isinstance(row["explanation"], str) and row["explanation"]
            for k in ("detection", "simulation"):
                assert row[k] == "unparseable" or isinstance(row[k], dict)
    for k in ("detection_balanced_accuracy", "simulation_r"):
        assert m[k] is None or math.isfinite(m[k])
    second = saebench.evaluate("reference", force=True, **kw)
    again = {**second.metrics["autointerp"], **second.details["autointerp"]}
    assert again["usage"]["requests"] == 0 and again["usage"]["cached_requests"] == m["usage"]["requests"]

    def same(metrics: dict) -> dict:
        out = {k: v for k, v in metrics.items() if k not in ("usage", "timing_s", "requests_per_latent")}
        out["latents"] = [{k: v for k, v in r.items() if k != "wall_s"} for r in metrics["latents"]]
        return out

    assert same(again) == same(m)


# -- offline (no flags): top-tokens explainer, in-process scorer --------------------------------

TINY = {
    "n_latents": 2,
    "n_top_explain": 2,
    "n_sampled_explain": 1,
    "n_top_score": 1,
    "n_sampled_score": 1,
    "n_random_score": 2,
    "n_random_simulation": 1,
    "n_random_fuzz": 1,
    "window": 2,
}


def test_offline_default_scores_end_to_end_and_a_rerun_computes_nothing(model, cache_env):
    """No endpoint: real detection, fuzzing and simulation scores; each run's scorer counts only its own
    work (the model is loaded once per process and shared), so a cached rerun reports zero tokens run."""
    import saebench
    from saebench.evaluators.autointerp import AutointerpConfig, embedded_scorer

    kw = {"model": model, "evals": ["autointerp"], "tokens": 1024, "ctx_len": 32, "batch_size": 8, "progress": False}
    first = saebench.evaluate("reference", eval_config={"autointerp": TINY}, **kw)
    res = next(iter(first.results.values()))["autointerp"]
    m, d = res.metrics, res.details
    json.dumps({**m, **d}, allow_nan=False)
    assert d["explainer"].startswith("top-tokens") and d["base_url"] == "embedded"
    assert d["scorer"].startswith("embedded smollm2-135m-instruct in process (surprisal")
    assert m["n_latents_run"] >= 1 and m["n_latents_run"] + m["n_skipped_few_examples"] == 2
    for k in ("detection_auroc", "fuzzing_auroc", "simulation_r"):
        assert m[k] is not None and math.isfinite(m[k]), k  # real scores, not unparseable
    assert m["n_unparseable_detection"] == m["n_unparseable_simulation"] == m["n_failed"] == 0
    assert m["requests_per_latent"] is None and d["usage"]["requests"] == 0  # no endpoint was asked anything
    eu = d["embedded_usage"]
    assert eu["prompts"] > 0 and eu["computed_tokens"] > 0 and eu["cached_prompts"] == 0
    assert set(res.timing) >= {"examples_s", "scorer_load_s", "llm_s"}

    again = saebench.evaluate("reference", force=True, eval_config={"autointerp": TINY}, **kw)
    res2 = next(iter(again.results.values()))["autointerp"]
    eu2 = res2.details["embedded_usage"]
    assert eu2["computed_tokens"] == 0 and eu2["forward_calls"] == 0 and eu2["cached_prompts"] == eu["prompts"]
    for k in ("detection_auroc", "fuzzing_auroc", "simulation_r"):
        assert res2.metrics[k] == m[k], k
    a, b = embedded_scorer(AutointerpConfig()), embedded_scorer(AutointerpConfig())
    assert a is not b and a.model is b.model and b.usage.prompts == 0  # one model, a fresh scorer per run
