"""Per-latent autointerp: explain from activating examples, then score the explanation.

For each latent (concurrently across latents, sequentially within one):

1. explanation: the explainer model sees the explanation examples (activating tokens marked);
2. detection: the scorer names which of the shuffled held-out examples activate;
3. simulation: the scorer predicts 0..10 per token of the simulation examples; Pearson r.

A reply that cannot be parsed is retried once with a stricter instruction (the bad reply and the
instruction appended to the conversation), then that step is marked ``unparseable``. A request
that fails after its retries marks the latent ``failed`` (no score, never 0). When the budget is
spent, latents not started are ``not_run`` and latents cut short ``partial`` (their explanation
and any finished score are kept).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from saebench.autointerp.client import BudgetExhausted, LLMClient, RequestFailed
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


@dataclass
class EngineSettings:
    """Models and reply lengths; ``scores`` selects detection and/or simulation."""

    explainer_model: str
    scorer_model: str
    max_tokens_explanation: int = 60
    max_tokens_detection: int = 40
    max_tokens_simulation: int | None = None  # None: sized from the number of tokens to predict
    scores: tuple[str, ...] = ("detection", "simulation")
    concurrency: int = 4
    transcripts: bool = True


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


def score_latent(client: LLMClient, data: LatentData, st: EngineSettings) -> dict[str, Any]:
    """Explanation and scores of one latent, as a plain dict (see module doc for ``status``)."""
    out: dict[str, Any] = {
        "latent": data.latent,
        "status": "scored",
        "explanation": None,
        "n_active_tokens": data.n_active_tokens,
        "max_act": round(data.max_act, 6),
    }
    replies: dict[str, list[str]] = {}
    t0 = time.perf_counter()
    try:
        msgs = explanation_messages(data.explain, [data.threshold] * len(data.explain))
        explanation, replies["explanation"] = ask(
            client, st.explainer_model, msgs, st.max_tokens_explanation, parse_explanation, EXPLAIN_STRICT
        )
        if explanation is None:
            out["status"] = "unparseable"
            return out
        out["explanation"] = explanation
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
        out["status"] = "not_run" if out["explanation"] is None else "partial"
    finally:
        out["wall_s"] = round(time.perf_counter() - t0, 3)
        if st.transcripts:
            out["replies"] = replies
    return out


def run_latents(
    client: LLMClient, latents: list[LatentData], st: EngineSettings, progress: Callable[[int], None] | None = None
) -> list[dict[str, Any]]:
    """Score every latent with up to ``st.concurrency`` latents in flight; results in input order."""
    if not latents:
        return []

    def one(d: LatentData) -> dict[str, Any]:
        r = score_latent(client, d, st)
        if progress is not None:
            progress(1)
        return r

    with ThreadPoolExecutor(max_workers=max(1, st.concurrency)) as pool:
        return list(pool.map(one, latents))
