"""Per-latent autointerp: explain each latent, then score the explanation.

1. Explanations (:func:`explain_latents`): an LLM explainer (chat completions, concurrently across
   latents; the explainer sees the explanation examples with activating tokens marked), the
   offline ``top-tokens`` baseline (:mod:`saebench.autointerp.explainers`), or explanations given
   by the caller (``LatentData.explanation``: the planted-latent tests' true and wrong ones).
2. Scores, by ``EngineSettings.scoring``:
   - ``judge`` / ``surprisal`` (:mod:`saebench.autointerp.logprob`): every latent's items are
     collected and handed to the scorer in one call (the in-process scorer batches them; the
     endpoint judge sends them ``concurrency`` at a time), then each latent's detection, fuzzing
     and simulation scores are computed from the log-probabilities. No reply is parsed;
   - ``text`` (the free-text scorers): the scorer names the activating examples and writes 0..10 per
     token; a reply that cannot be parsed is retried once with a stricter instruction (the bad reply
     and the instruction appended), then that step is ``unparseable``.

A request that fails after its retries marks the latent ``failed`` (no score, never 0). When the
budget is spent, latents not started are ``not_run`` and latents cut short ``partial`` (their
explanation and any finished score are kept).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from saebench.autointerp.client import BudgetExhausted, LLMClient, RequestFailed
from saebench.autointerp.explainers import TOP_TOKENS, top_tokens_explanation
from saebench.autointerp.logprob import JUDGE, SURPRISAL, Case, LatentCases, build_plan, finish, fuzzing_cases
from saebench.autointerp.parsing import parse_detection, parse_explanation, parse_simulation
from saebench.autointerp.prompts import (
    EXPLAIN_STRICT,
    Messages,
    TextExample,
    detection_messages,
    detection_strict,
    explanation_messages,
    simulation_messages,
    simulation_strict,
)
from saebench.autointerp.scoring import detection_scores, normalize_activations, simulation_score

T = TypeVar("T")


@dataclass
class LatentData:
    """The examples of one latent, ready for prompting."""

    latent: int
    explain: list[TextExample]  # strongest first
    detect: list[TextExample]  # shuffled held-out activating + non-activating
    simulate: list[TextExample]  # held-out examples for simulation
    threshold: float  # activation above which a token counts as active
    max_act: float
    n_active_tokens: int
    fuzz: list[TextExample] = field(default_factory=list)  # held-out activating examples to mark
    fuzz_random: list[TextExample] = field(default_factory=list)  # non-activating examples marked at random
    explanation: str | None = None  # given explanation (explainer "given")


@dataclass
class EngineSettings:
    """Explainer, scoring method, models and reply lengths; ``scores`` selects what is scored
    (``text`` scoring knows detection and simulation; the log-probability scorers add fuzzing)."""

    explainer_model: str = ""
    scorer_model: str = ""
    explainer: str = "llm"  # "llm", "top-tokens" or "given"
    scoring: str = "text"  # "text", "judge" or "surprisal"
    max_tokens_explanation: int = 60
    max_tokens_detection: int = 40
    max_tokens_simulation: int | None = None  # None: sized from the number of tokens to predict
    scores: tuple[str, ...] = ("detection", "simulation")
    concurrency: int = 4
    transcripts: bool = True
    seed: int = 0


def ask(
    client: LLMClient, model: str, messages: Messages, max_tokens: int, parse: Callable[[str], T | None], strict: str
) -> tuple[T | None, list[str]]:
    """One request; if its reply does not parse, once more with ``strict`` appended. (value, replies)."""
    reply = client.chat(model, messages, max_tokens)
    value = parse(reply)
    if value is not None:
        return value, [reply]
    retry = [*messages, {"role": "assistant", "content": reply}, {"role": "user", "content": strict}]
    reply2 = client.chat(model, retry, max_tokens)
    return parse(reply2), [reply, reply2]


def _row(data: LatentData) -> dict[str, Any]:
    return {
        "latent": data.latent,
        "status": "scored",
        "explanation": None,
        "n_active_tokens": data.n_active_tokens,
        "max_act": round(data.max_act, 6),
    }


def explain_latent(client: LLMClient | None, data: LatentData, st: EngineSettings) -> dict[str, Any]:
    """A latent's result row with its explanation (status ``unparseable`` / ``failed`` / ``not_run``
    when there is none)."""
    out = _row(data)
    if st.explainer == "given":
        out["explanation"] = data.explanation
        if data.explanation is None:
            out["status"] = "unparseable"
        return out
    if st.explainer == TOP_TOKENS:
        out["explanation"] = top_tokens_explanation(data.explain, data.threshold)
        if out["explanation"] is None:
            out["status"] = "unparseable"
        return out
    assert client is not None, "the llm explainer needs a client"
    t0 = time.perf_counter()
    replies: list[str] = []
    try:
        msgs = explanation_messages(data.explain, [data.threshold] * len(data.explain))
        explanation, replies = ask(
            client, st.explainer_model, msgs, st.max_tokens_explanation, parse_explanation, EXPLAIN_STRICT
        )
        if explanation is None:
            out["status"] = "unparseable"
        out["explanation"] = explanation
    except RequestFailed as exc:
        out["status"], out["error"] = "failed", str(exc)
    except BudgetExhausted:
        out["status"] = "not_run"
    out["wall_s"] = round(time.perf_counter() - t0, 3)
    if st.transcripts:
        out["replies"] = {"explanation": replies}
    return out


def score_text(client: LLMClient, data: LatentData, out: dict[str, Any], st: EngineSettings) -> dict[str, Any]:
    """The free-text scorers on one explained latent (fills ``out``)."""
    explanation = out["explanation"]
    replies: dict[str, list[str]] = out.setdefault("replies", {}) if st.transcripts else {}
    t0 = time.perf_counter()
    try:
        if "detection" in st.scores and data.detect:
            n = len(data.detect)
            picked, replies["detection"] = ask(
                client,
                st.scorer_model,
                detection_messages(explanation, data.detect),
                st.max_tokens_detection,
                lambda r: parse_detection(r, n),
                detection_strict(n),
            )
            if picked is None:
                out["detection"] = "unparseable"
            else:
                chosen = set(picked)
                pred = [i in chosen for i in range(1, n + 1)]
                out["detection"] = detection_scores(pred, [ex.active for ex in data.detect])
                out["detection"]["predicted"] = picked
        if "simulation" in st.scores and data.simulate:
            lengths = [len(ex.tokens) for ex in data.simulate]
            budget = st.max_tokens_simulation or (3 * sum(lengths) + 8 * len(lengths) + 16)
            sim, replies["simulation"] = ask(
                client,
                st.scorer_model,
                simulation_messages(explanation, data.simulate),
                budget,
                lambda r: parse_simulation(r, lengths),
                simulation_strict(lengths),
            )
            if sim is None:
                out["simulation"] = "unparseable"
            else:
                truth = [normalize_activations(ex.acts, data.max_act) for ex in data.simulate]
                out["simulation"] = {"r": simulation_score(sim, truth)}
    except RequestFailed as exc:
        out["status"], out["error"] = "failed", str(exc)
    except BudgetExhausted:
        out["status"] = "partial"
    out["wall_s"] = round(out.get("wall_s", 0.0) + time.perf_counter() - t0, 3)
    return out


def latent_cases(data: LatentData, seed: int) -> LatentCases:
    """Detection cases, fuzzing cases (seeded per latent) and simulation examples of one latent."""
    rng = random.Random(f"autointerp-fuzz-{seed}-{data.latent}")
    detect = [Case(ex, ex.active) for ex in data.detect]
    fuzz = fuzzing_cases(data.fuzz, data.fuzz_random, data.threshold, rng)
    return LatentCases(detect, fuzz, list(data.simulate), data.max_act)


class EndpointJudge:
    """The judge's backend on an endpoint: ``chat_logprobs`` for every prompt, ``concurrency`` at a time.

    A prompt whose request fails after retries, or is refused by the budget, gets the exception in
    place of its answer (the latent's score is then ``failed`` / ``not_run``); a SaebenchError (bad
    key, no log-probabilities, an endpoint that never answers sensibly) stops the run.
    """

    def __init__(self, client: LLMClient, model: str, top_k: int = 20, concurrency: int = 4) -> None:
        self.client, self.model, self.top_k, self.concurrency = client, model, top_k, max(1, concurrency)

    def top_logprobs(self, prompts: list[Messages]) -> list[Any]:
        def one(m: Messages) -> Any:
            try:
                return self.client.chat_logprobs(self.model, m, self.top_k)
            except (RequestFailed, BudgetExhausted) as exc:
                return exc

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(one, prompts))


def score_logprob(
    scorer: Any, latents: list[LatentData], rows: list[dict[str, Any]], st: EngineSettings
) -> list[dict[str, Any]]:
    """The log-probability scorers on every explained latent at once (fills ``rows``).

    ``scorer`` answers ``top_logprobs(prompts)`` (judge) or ``branch_logprobs`` and
    ``continuation_logprobs`` (surprisal): the in-process :class:`~saebench.autointerp.embedded.EmbeddedScorer`, or an
    :class:`EndpointJudge`.
    """
    jobs = []
    items: list[Any] = []
    tags: list[tuple[str, int, int]] = []
    for data, row in zip(latents, rows, strict=True):
        if row["explanation"] is None or row["status"] != "scored":
            continue
        cases = latent_cases(data, st.seed)
        plan, extra = build_plan(st.scoring, row["explanation"], cases, st.scores)
        jobs.append((row, cases, plan, extra, len(items)))
        items.extend(plan.items)
        tags.extend(plan.tags)
    if not items:
        return rows
    if st.scoring == JUDGE:
        answers = scorer.top_logprobs(items)
    elif st.scoring == SURPRISAL:
        answers = [None] * len(items)
        for branched in (True, False):  # every position of an example in one row / marked fuzzing texts
            idx = [k for k, t in enumerate(tags) if (t[0] == "positions") == branched]
            if idx:
                fn = scorer.branch_logprobs if branched else scorer.continuation_logprobs
                for k, a in zip(idx, fn([items[k] for k in idx]), strict=True):
                    answers[k] = a
    else:
        raise ValueError(f"unknown log-probability scoring {st.scoring!r}")
    for row, cases, plan, extra, start in jobs:
        got = answers[start : start + len(plan.items)]
        bad = {}
        for (what, _, _), a in zip(plan.tags, got, strict=True):
            if isinstance(a, Exception):
                bad.setdefault(what, a)
        if bad:
            first = next(iter(bad.values()))
            row["status"] = "partial" if isinstance(first, BudgetExhausted) else "failed"
            if isinstance(first, RequestFailed):
                row["error"] = str(first)
            for kind in st.scores:
                row[kind] = "not_run" if row["status"] == "partial" else "failed"
            continue
        row.update(finish(st.scoring, plan, extra, got, cases, st.scores))
    return rows


def run_latents(
    client: LLMClient | None,
    latents: list[LatentData],
    st: EngineSettings,
    progress: Callable[[int], None] | None = None,
    scorer: Any = None,
    text_client: LLMClient | None = None,
) -> list[dict[str, Any]]:
    """Explain and score every latent; results in input order.

    ``client`` explains (the LLM explainer); LLM requests run up to ``st.concurrency`` latents at a
    time. ``scorer`` is the log-probability backend for ``judge`` / ``surprisal`` scoring (see
    :func:`score_logprob`); ``text_client`` the free-text scorer's endpoint (default: ``client``).
    """
    if not latents:
        return []
    workers = max(1, st.concurrency)
    if st.explainer == "llm":
        with ThreadPoolExecutor(max_workers=workers) as pool:
            rows = list(pool.map(lambda d: explain_latent(client, d, st), latents))
    else:
        rows = [explain_latent(client, d, st) for d in latents]
    if st.scoring == "text":
        text = text_client or client
        assert text is not None, "text scoring needs a client"

        def one(pair: tuple[LatentData, dict[str, Any]]) -> dict[str, Any]:
            d, row = pair
            if row["explanation"] is not None and row["status"] == "scored":
                score_text(text, d, row, st)
            if progress is not None:
                progress(1)
            return row

        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, list(zip(latents, rows, strict=True))))
    out = score_logprob(scorer, latents, rows, st)
    if progress is not None:
        progress(len(latents))
    return out
