"""Log-probability scorers: the math on known answers, the in-process scorer against plain forwards,
the endpoint judge against a local OpenAI-compatible server that returns log-probabilities (a
round trip to the in-process numbers), and hostile endpoints (200 with garbage bodies).
"""

from __future__ import annotations

import itertools
import json
import math
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from saebench.autointerp import logprob as L
from saebench.autointerp.client import LLMClient, LLMSettings
from saebench.autointerp.engine import EndpointJudge, EngineSettings, LatentData, latent_cases, run_latents
from saebench.autointerp.explainers import top_tokens_explanation
from saebench.autointerp.prompts import TextExample, mark_tokens
from saebench.autointerp.scoring import auroc, balanced_accuracy_at, expected_digit, p_yes, sigmoid
from saebench.errors import SaebenchError

# -- math --------------------------------------------------------------------------------------


def test_auroc_matches_pairwise_counting_and_handles_ties_and_missing():
    assert auroc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.2, 0.9, 0.8], [True, True, False, False]) == 0.0
    assert auroc([0.5, 0.5, 0.5], [True, False, False]) == 0.5
    assert auroc([0.3, None, 0.1], [True, False, False]) == 1.0  # None left out
    assert auroc([0.3, 0.2], [True, True]) is None and auroc([None, 0.2], [True, False]) is None
    rng = random.Random(0)
    for _ in range(20):
        s = [rng.choice([0.1, 0.2, 0.3, rng.random()]) for _ in range(15)]
        y = [rng.random() < 0.4 for _ in range(15)]
        pos, neg = [a for a, b in zip(s, y, strict=True) if b], [a for a, b in zip(s, y, strict=True) if not b]
        if pos and neg:
            pairs = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
            assert auroc(s, y) == pytest.approx(pairs / (len(pos) * len(neg)))


def test_yes_probability_digit_expectation_and_balanced_accuracy():
    top = [("Yes", math.log(0.6)), (" yes", math.log(0.1)), ("No", math.log(0.2)), ("Maybe", math.log(0.1))]
    assert p_yes(top) == pytest.approx(0.7 / 0.9)
    assert p_yes([("Maybe", 0.0)]) is None
    assert expected_digit([("0", math.log(0.5)), ("9", math.log(0.25)), ("x", math.log(0.25))]) == pytest.approx(3.0)
    assert expected_digit([("10", 0.0)]) is None  # outside 0..9
    assert balanced_accuracy_at([0.9, 0.4, 0.6, 0.1], [True, True, False, False]) == pytest.approx(0.5)
    assert sigmoid(0.0) == 0.5 and sigmoid(-1000.0) == 0.0 and sigmoid(1000.0) == 1.0


def _ex(tokens: list[str], acts: list[float]) -> TextExample:
    return TextExample(tokens, acts, any(a > 0.05 for a in acts))


def test_top_tokens_explainer_names_the_firing_tokens():
    exs = [
        _ex([" in", " the", " house"], [0.0, 2.0, 0.0]),
        _ex([" of", " the", " day"], [0.0, 1.5, 0.0]),
        _ex([" on", " the", " hill"], [0.0, 1.0, 0.1]),
    ]
    assert top_tokens_explanation(exs, 0.05) == 'the token "the"'
    ctx = [_ex(["<", "span", ">"], [0.0, 1.0, 0.0])] * 3
    assert top_tokens_explanation(ctx, 0.05) == 'the token "span" after "<"'
    mixed = [_ex([" 1", " 2", " 3", " x"], [1.0, 1.0, 1.0, 0.0])]
    assert top_tokens_explanation(mixed, 0.05) == 'the tokens "1", "2" and "3"'
    assert top_tokens_explanation([_ex([" a"], [0.0])], 0.05) is None


def test_fuzzing_cases_mark_true_and_random_positions():
    act = [_ex([" a", " dog", " ran", " far"], [0.0, 2.0, 0.0, 0.0]) for _ in range(3)]
    off = [_ex([" x", " y", " z"], [0.0, 0.0, 0.0])]
    cases = L.fuzzing_cases(act, off, 0.05, random.Random(0))
    pos = [c for c in cases if c.label]
    neg = [c for c in cases if not c.label]
    assert len(pos) == 3 and len(neg) == 4 and all(c.marked == (1,) for c in pos)
    assert all(c.marked != (1,) and len(c.marked) == 1 for c in neg)
    assert mark_tokens([" The", " old", " dog"], [2]) == " The old <<dog>>"
    pieces, index = L._pieces([" The", " old", " dog", " ran"], [2, 3])
    assert "".join(pieces) == " The old <<dog ran>>" and [pieces[i] for i in index] == ["dog", " ran"]


def test_config_resolution_defaults_offline_and_refuses_impossible_combinations():
    from saebench.evaluators.autointerp import AutointerpConfig, resolve

    s = resolve(AutointerpConfig())
    assert (s.explainer, s.scorer_url, s.scoring) == ("top-tokens", "embedded", "surprisal")
    s = resolve(AutointerpConfig(base_url="http://127.0.0.1:1/v1"))
    assert (s.explainer, s.scorer_url, s.scoring) == ("llm", "http://127.0.0.1:1/v1", "judge")
    s = resolve(AutointerpConfig(base_url="http://127.0.0.1:1/v1", scoring="text"))
    assert s.scores == ("detection", "simulation")  # fuzzing needs log-probabilities
    for bad, match in (
        ({"explainer": "llm"}, "llm explainer needs an endpoint"),
        ({"base_url": "http://127.0.0.1:1/v1", "scoring": "surprisal"}, "surprisal scoring needs"),
        ({"scoring": "text"}, "free-text scorers need an endpoint"),
        ({"top_logprobs": 50}, "1..20"),
    ):
        with pytest.raises(SaebenchError, match=match) as err:
            resolve(AutointerpConfig(**bad))
        assert "\n" not in str(err.value)


# -- the in-process scorer ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf():
    from saebench.models import load_embedded_hf

    return load_embedded_hf()


def _scorer(hf, **kw):
    from saebench.autointerp.embedded import EmbeddedScorer

    return EmbeddedScorer(model=hf[0], tokenizer=hf[1], model_id="embedded:test", **kw)


def test_shared_prefix_and_branch_rows_equal_plain_forwards(hf):
    shared, plain = _scorer(hf, batch_size=4), _scorer(hf, batch_size=4, share_prefix=False)
    msgs = [
        [{"role": "system", "content": "Answer Yes or No."}, {"role": "user", "content": f"Is {w} red?"}]
        for w in ("a tomato", "the sky", "snow", "blood", "grass")
    ]
    a, b = shared.top_logprobs(msgs), plain.top_logprobs(msgs)
    assert [[t for t, _ in r] for r in a] == [[t for t, _ in r] for r in b]
    assert max(abs(x[1] - y[1]) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True)) < 1e-4
    assert shared.usage.computed_tokens < plain.usage.computed_tokens  # the system turn ran once
    items, flat = [], []
    for e in ('the word "the"', "something"):
        for toks in ([" in", " the", " house", "\n", " the"], ["It", " was", " 2", "5"]):
            pieces, _ = L._pieces(toks)
            items.append((L.surprisal_context(e), pieces, [L._marked_at(pieces, i)[i:] for i in range(len(pieces))]))
            flat += [(L.surprisal_context(e), L._marked_at(pieces, i)) for i in range(len(pieces))]
    tree = [v for row in shared.branch_logprobs(items) for v in row]  # one row per example
    one_each = [row[-1] for row in plain.continuation_logprobs(flat)]  # one sequence per position
    assert len(tree) == len(one_each) and max(abs(x - y) for x, y in zip(tree, one_each, strict=True)) < 1e-4
    assert shared.usage.forward_calls < plain.usage.forward_calls


def test_scorer_cache_makes_a_rerun_free(hf, tmp_path):
    msgs = [[{"role": "user", "content": "Is water wet? Yes or No."}]]
    first = _scorer(hf, cache_dir=tmp_path)
    a = first.top_logprobs(msgs)
    again = _scorer(hf, cache_dir=tmp_path)
    assert again.top_logprobs(msgs) == a and again.usage.computed_tokens == 0 and again.usage.cached == 1


# -- a local endpoint that returns log-probabilities -------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """OpenAI-shaped answers: ``/logprobs/v1`` from the in-process scorer, the other paths garbage."""

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._send(200, b'{"data": []}', "application/json")

    def do_POST(self) -> None:  # noqa: N802
        srv = self.server
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        mode = self.path.strip("/").split("/")[0]
        srv.hits[mode] = srv.hits.get(mode, 0) + 1
        srv.systems.setdefault(mode, []).append(req["messages"][0]["content"])
        if mode == "flaky" and srv.hits[mode] % 2 == 1:
            mode = "nonjson"
        if mode == "nonjson":
            return self._send(200, b"this is not json", "text/plain")
        if mode == "binary":
            return self._send(200, b"\xff\xfe\xfa\x00\x9c{", "application/json")
        if mode == "html":
            return self._send(200, b"<html><body><h1>Welcome to nginx!</h1></body></html>", "text/html")
        if mode == "schema":
            return self._send(200, json.dumps({"result": "ok", "choices": "none"}).encode(), "application/json")
        top = srv.scorer.top_logprobs([req["messages"]])[0][: req.get("top_logprobs", 5)]
        n_prompt = len(srv.scorer.render(req["messages"]))
        choice = {"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": top[0][0]}}
        if req.get("logprobs"):
            alts = [{"token": t, "logprob": lp, "bytes": None} for t, lp in top]
            choice["logprobs"] = {"content": [{**alts[0], "top_logprobs": alts}]}
        body = {
            "id": "x",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req["model"],
            "choices": [choice],
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": 1, "total_tokens": n_prompt + 1},
        }
        self._send(200, json.dumps(body).encode(), "application/json")


@pytest.fixture(scope="module")
def endpoint(hf):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.scorer, srv.hits, srv.systems = _scorer(hf, top_k=20), {}, {}
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", srv
    srv.shutdown()
    srv.server_close()


def _client(url: str, **kw) -> LLMClient:
    return LLMClient(LLMSettings(base_url=url, backoff_s=0.01, timeout_s=30, **kw))


def _latent() -> LatentData:
    act = [_ex([" the", " dog", " ran"], [0.0, 2.0, 0.0]), _ex([" a", " big", " dog"], [0.0, 0.0, 1.5])]
    off = [_ex([" it", " rained", " today"], [0.0, 0.0, 0.0]), _ex([" we", " ate", " soup"], [0.0, 0.0, 0.0])]
    return LatentData(7, act, act + off, act[:1] + off[:1], 0.02, 2.0, 3, fuzz=act, fuzz_random=off, explanation="dogs")


def test_endpoint_judge_round_trip_equals_the_in_process_judge(hf, endpoint):
    url, srv = endpoint
    st = EngineSettings(explainer="given", scoring="judge", scores=("detection", "fuzzing", "simulation"))
    client = _client(url + "/logprobs/v1")
    client.check_logprobs("m")
    via_http = run_latents(None, [_latent()], st, scorer=EndpointJudge(client, "m", 20, concurrency=2))[0]
    in_process = run_latents(None, [_latent()], st, scorer=_scorer(hf))[0]
    for kind in ("detection", "fuzzing"):
        assert via_http[kind]["scores"] == pytest.approx(in_process[kind]["scores"], abs=1e-5)
        assert via_http[kind]["auroc"] == in_process[kind]["auroc"]
    assert via_http["simulation"]["r"] == pytest.approx(in_process["simulation"]["r"], abs=1e-4)
    n_items = len(latent_cases(_latent(), 0).detect) + len(latent_cases(_latent(), 0).fuzz) + 6
    assert client.usage.requests == n_items + 1 and client.usage.completion_tokens == n_items + 1
    assert client.usage.malformed_replies == 0 and client.usage.prompt_tokens > 0


def test_free_text_scoring_asks_the_scorer_endpoint_and_explaining_the_explainer(endpoint, model, cache_env):
    """``scorer_base_url`` with ``scoring=text``: every explanation request goes to the explainer's
    endpoint, every detection / simulation request to the scorer's (none crosses over)."""
    import saebench
    from saebench.autointerp.prompts import EXPLAIN_SYSTEM

    url, srv = endpoint
    cfg = {
        "base_url": f"{url}/explain/v1",
        "scorer_base_url": f"{url}/score/v1",
        "explainer_model": "ex",
        "scorer_model": "sc",
        "scoring": "text",
        "n_latents": 2,
        "n_top_explain": 2,
        "n_sampled_explain": 1,
        "n_top_score": 1,
        "n_sampled_score": 1,
        "n_random_score": 1,
        "n_random_simulation": 1,
        "window": 2,
        "max_retries": 0,
    }
    kw = {"model": model, "evals": ["autointerp"], "tokens": 1024, "ctx_len": 32, "batch_size": 8, "progress": False}
    run = saebench.evaluate("reference", eval_config={"autointerp": cfg}, **kw)
    res = next(iter(run.results.values()))["autointerp"]
    assert res.details["explainer"] == f"llm: ex at {url}/explain/v1"
    assert res.details["scorer"] == f"sc at {url}/score/v1 (free text: parsed replies)"
    scored = [r for r in res.details["latents"] if r["status"] == "scored"]
    assert scored, res.details["latents"]  # one-token replies parse as explanations
    assert set(srv.systems["explain"]) == {EXPLAIN_SYSTEM}
    assert len(srv.systems["explain"]) >= res.metrics["n_latents_run"]
    detect, simulate = "You are testing an explanation of a latent", "You simulate a latent"
    assert srv.systems.get("score") and all(s.startswith((detect, simulate)) for s in srv.systems["score"])
    assert any(s.startswith(detect) for s in srv.systems["score"])
    assert any(s.startswith(simulate) for s in srv.systems["score"])
    assert res.metrics["requests_per_latent"] == pytest.approx(
        (len(srv.systems["explain"]) + len(srv.systems["score"])) / res.metrics["n_latents_run"], abs=1e-3
    )


@pytest.mark.parametrize("mode", ["nonjson", "binary", "html", "schema"])
def test_garbage_endpoint_is_counted_retried_then_one_line_naming_the_url(endpoint, mode):
    url, srv = endpoint
    base = f"{url}/{mode}/v1"
    c = _client(base, max_retries=2)
    before = srv.hits.get(mode, 0)
    with pytest.raises(SaebenchError) as err:
        c.chat("m", [{"role": "user", "content": "hi"}], 4)
    msg = str(err.value)
    assert "\n" not in msg and base in msg and "never answered with a chat completion" in msg
    assert c.usage.malformed_replies == 3 and c.usage.retries == 2 and srv.hits[mode] - before == 3
    if mode == "html":
        assert "HTML page" in msg


def test_intermittent_garbage_is_retried_and_counted(endpoint):
    url, srv = endpoint
    c = _client(f"{url}/flaky/v1", max_retries=3)
    top = c.chat_logprobs("m", [{"role": "user", "content": "Is water wet? Yes or No."}], 5)
    assert len(top) == 5 and c.usage.malformed_replies == 1 and c.usage.retries == 1 and c.usage.requests == 1


def test_cli_with_a_garbage_endpoint_exits_2_with_one_line(endpoint, capsys, tmp_path):
    from saebench.cli import main

    url, _ = endpoint
    base = f"{url}/html/v1"
    t0 = time.perf_counter()
    rc = main(
        ["run", "--sae", "reference", "--evals", "autointerp", "--llm-base-url", base, "--llm-model", "m"]
        + ["--set", "autointerp.backoff_s=0.01", "--set", "autointerp.max_retries=1"]
        + ["--out", str(tmp_path / "out"), "--quiet"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and base in err[0] and "Traceback" not in err[0]
    assert time.perf_counter() - t0 < 15  # refused in preflight, before the model loads
