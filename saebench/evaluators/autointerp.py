"""``--evals autointerp``: explain sampled latents with an LLM and score the explanations.

Bills et al. (2023), SAEBench's autointerp and EleutherAI's delphi, through any OpenAI-compatible
endpoint (OpenAI, hosted APIs, vLLM, llama.cpp, ``transformers serve``) with the ``openai``
package. Steps:

1. a seeded sample of ``n_latents`` live latents (firing on ≥ ``min_active_tokens`` tokens of the
   token set; one encode pass counts them);
2. the pipeline's streamed example pass (:meth:`ActivationPipeline.latent_examples`: bounded
   top-k and importance-sampling buffers, no [tokens x d_sae] matrix) gives each latent's top
   and importance-sampled positions with ``window`` tokens either side; windows overlapping an
   already chosen one in the same context are dropped (SAEBench's ``no_overlap``), so the
   pass asks for 4x as many candidates as it keeps; random *non-activating* windows (the
   latent is 0 on every token) come from a seeded sample of contexts (:func:`random_windows`);
3. the top windows are split at random into explanation and held-out scoring examples (as are
   the sampled ones); a latent with fewer non-overlapping top windows than ``n_top_explain +
   n_top_score`` is skipped and counted (``n_skipped_few_examples``);
4. per latent: explanation, detection (balanced accuracy, precision, recall on a shuffled mix of
   held-out activating and random examples) and simulation (Pearson r of predicted vs. true
   per-token activations, Bills et al.), see :mod:`saebench.autointerp.engine`.

Headline numbers are means over latents where the score is defined; failed, unparseable,
skipped and budget-cut latents are counted, never scored 0. Every explanation sits next to its
scores in ``latents``. Token counts and (with a price table) cost are in ``usage``.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import field_validator

from saebench.errors import SaebenchError
from saebench.evaluators.base import EvalConfig, EvalContext, EvalOutput, Metric, mean_defined
from saebench.pipeline import ActivationPipeline, examples

PAPER = {
    "n_latents": 1000,
    "n_top_explain": 10,
    "n_sampled_explain": 5,
    "n_top_score": 2,
    "n_sampled_score": 2,
    "n_random_score": 10,
    "n_random_simulation": 2,
    "window": 10,
}


class AutointerpConfig(EvalConfig):
    """Settings of ``--evals autointerp``. Profiles set sample sizes; the endpoint comes from flags."""

    base_url: str = "https://api.openai.com/v1"
    explainer_model: str = "gpt-4o-mini"
    scorer_model: str | None = None  # None: the explainer model
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8  # latents in flight at once
    max_tokens_budget: int | None = None  # prompt + completion tokens actually sent
    max_cost: float | None = None  # USD; needs the two prices below
    price_prompt_per_mtok: float | None = None
    price_completion_per_mtok: float | None = None
    n_latents: int = 16
    latents: list[int] | None = None  # explicit latent ids instead of a sample
    min_active_tokens: int = 1
    n_top_explain: int = 10  # SAEBench: 10 top + 5 importance-sampled to explain
    n_sampled_explain: int = 5
    n_top_score: int = 2  # SAEBench: 2 top + 2 sampled + 10 random to score
    n_sampled_score: int = 2
    n_random_score: int = 10
    n_random_simulation: int = 2  # random windows among the simulation examples
    window: int = 10  # tokens each side of the maximum (21-token examples)
    act_threshold_frac: float = 0.01  # token "active" above this fraction of the latent's max
    scores: list[Literal["detection", "simulation"]] = ["detection", "simulation"]
    max_tokens_explanation: int = 60
    max_tokens_detection: int = 40
    max_tokens_simulation: int | None = None  # None: 3 per predicted token + overhead
    temperature: float = 0.0
    timeout_s: float = 120.0
    max_retries: int = 5
    backoff_s: float = 1.0
    cache: bool = True  # on-disk response cache ($SAEBENCH_CACHE/autointerp)
    transcripts: bool = True  # keep the raw replies in the result

    @field_validator("scores", "latents", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        """``--set autointerp.scores=detection`` arrives as a string: split it on commas."""
        if isinstance(v, str):
            return [int(p) if p.strip().isdigit() else p.strip() for p in v.split(",") if p.strip()]
        return v

    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": {
            "n_latents": 8,
            "n_top_explain": 5,
            "n_sampled_explain": 2,
            "n_top_score": 2,
            "n_sampled_score": 1,
            "n_random_score": 4,
            "n_random_simulation": 1,
            "window": 6,
        },
        "standard": {**PAPER, "n_latents": 100},
        "paper": PAPER,
    }


@dataclass
class Window:
    """One example: ``token_ids`` at positions ``start ..`` of context ``seq`` and the latent's activations."""

    seq: int
    start: int
    token_ids: list[int]
    acts: list[float]

    @property
    def max_act(self) -> float:
        return max(self.acts) if self.acts else 0.0

    @property
    def end(self) -> int:
        return self.start + len(self.token_ids) - 1


@dataclass
class Collected:
    """What the example pass gave one latent."""

    latent: int
    n_active_tokens: int
    max_act: float
    top: list[Window]
    sampled: list[Window]
    random: list[Window]


def _windows(es: Any, row: int) -> list[Window]:
    """The valid windows of one latent row of an ``ExampleSet`` (BOS and out-of-context slots dropped)."""
    out = []
    left = None
    for j in range(es.seq.shape[1]):
        if not bool(es.valid[row, j]):
            continue
        seq, pos = int(es.seq[row, j]), int(es.pos[row, j])
        toks, acts = es.tokens[row, j].tolist(), es.acts[row, j].tolist()
        left = left if left is not None else (len(toks) - 1) // 2
        first = pos - left
        keep = [i for i, t in enumerate(toks) if t >= 0 and first + i >= 1]
        if keep:
            out.append(Window(seq, first + keep[0], [toks[i] for i in keep], [float(acts[i]) for i in keep]))
    return out


def _disjoint(cands: list[Window], k: int, taken: dict[int, list[tuple[int, int]]]) -> list[Window]:
    """Up to ``k`` of ``cands`` (in order) overlapping no window in ``taken``; updates ``taken``."""
    out = []
    for w in cands:
        if len(out) >= k:
            break
        spans = taken.setdefault(w.seq, [])
        if any(w.start <= b and a <= w.end for a, b in spans):
            continue
        spans.append((w.start, w.end))
        out.append(w)
    return out


def random_windows(
    pipe: ActivationPipeline, sae: Any, latents: list[int], n: int, window: int, seed: int
) -> dict[int, list[Window]]:
    """Up to ``n`` random windows per latent on which the latent is 0 on every token.

    A seeded sample of ``max(16, 2n)`` contexts is encoded once (``pipe.latent_acts``: dense in
    the selected latents only); per latent, contexts are visited in a seeded random order and one
    uniformly random all-zero window is taken from each until ``n`` are found.
    """
    tokens = pipe.tokens.tokens
    n_ctx, ctx = tokens.shape
    width = min(2 * window + 1, ctx - 1)
    if n <= 0 or not latents or width < 1:
        return {lat: [] for lat in latents}
    g = torch.Generator().manual_seed(seed * 1_000_003 + 17)
    seqs = torch.randperm(n_ctx, generator=g)[: min(n_ctx, max(16, 2 * n))].sort().values
    acts = examples.latent_acts(pipe, sae, latents, seqs)  # [R, T, L]; position 0 reads 0
    zero = ~(acts[:, 1:] != 0).unfold(1, width, 1).any(-1)  # [R, T-width, L]: window from pos 1+i is all 0
    out: dict[int, list[Window]] = {}
    for li, lat in enumerate(latents):
        found: list[Window] = []
        for r in torch.randperm(len(seqs), generator=g).tolist():
            starts = zero[r, :, li].nonzero().flatten()
            if starts.numel() == 0:
                continue
            i = int(starts[int(torch.randint(starts.numel(), (1,), generator=g))])
            s, p = int(seqs[r]), 1 + i
            found.append(Window(s, p, tokens[s, p : p + width].tolist(), [0.0] * width))
            if len(found) >= n:
                break
        out[lat] = found
    return out


def gather_examples(
    pipe: ActivationPipeline, sae: Any, latents: list[int], cfg: AutointerpConfig, seed: int
) -> dict[int, Collected]:
    """Top, importance-sampled (disjoint from top) and non-activating windows per latent."""
    n_top = cfg.n_top_explain + cfg.n_top_score
    n_imp = cfg.n_sampled_explain + cfg.n_sampled_score
    ex = examples.latent_examples(
        pipe, sae, latents, n_top=4 * n_top, n_importance=4 * n_imp + n_top, seed=seed, window=(cfg.window, cfg.window)
    )
    rand = random_windows(pipe, sae, latents, max(cfg.n_random_score, cfg.n_random_simulation), cfg.window, seed)
    out = {}
    for row, lat in enumerate(latents):
        taken: dict[int, list[tuple[int, int]]] = {}
        top = _disjoint(_windows(ex.top, row), n_top, taken)
        imp = _windows(ex.importance, row)
        random.Random(f"autointerp-iw-{seed}-{lat}").shuffle(imp)
        sampled = _disjoint(imp, n_imp, taken)
        out[lat] = Collected(lat, int(ex.n_fire[row]), float(ex.max_act[row]), top, sampled, rand[lat])
    return out


def llm_client(cfg: AutointerpConfig) -> Any:
    """The configured :class:`~saebench.autointerp.client.LLMClient` (raises on a missing key)."""
    from saebench.autointerp.client import LLMClient, LLMSettings
    from saebench.io import cache_dir

    for name in ("concurrency", "max_retries", "n_latents"):
        if getattr(cfg, name) < (0 if name == "max_retries" else 1):
            raise SaebenchError(f"autointerp.{name} must be positive, got {getattr(cfg, name)}")
    settings = LLMSettings(
        base_url=cfg.base_url,
        api_key_env=cfg.api_key_env,
        timeout_s=cfg.timeout_s,
        max_retries=cfg.max_retries,
        backoff_s=cfg.backoff_s,
        temperature=cfg.temperature,
        max_tokens_budget=cfg.max_tokens_budget,
        max_cost=cfg.max_cost,
        price_prompt_per_mtok=cfg.price_prompt_per_mtok,
        price_completion_per_mtok=cfg.price_completion_per_mtok,
        cache_dir=(cache_dir() / "autointerp") if cfg.cache else None,
    )
    return LLMClient(settings)


def build_latent_data(ex: Any, cfg: AutointerpConfig, decode: Any, seed: int) -> Any | None:
    """Split one latent's collected windows into explanation / detection / simulation examples.

    None when the latent has fewer activating contexts than ``n_top_explain + n_top_score``.
    """
    from saebench.autointerp.engine import LatentData
    from saebench.autointerp.prompts import TextExample

    need = cfg.n_top_explain + cfg.n_top_score
    if len(ex.top) < need or ex.max_act <= 0:
        return None
    threshold = cfg.act_threshold_frac * ex.max_act
    rng = random.Random(f"autointerp-{seed}-{ex.latent}")

    def text(w: Any) -> TextExample:
        return TextExample([decode(t) for t in w.token_ids], w.acts, any(a > threshold for a in w.acts))

    top = list(ex.top)
    rng.shuffle(top)
    sampled = list(ex.sampled)
    rng.shuffle(sampled)
    explain = top[cfg.n_top_score : need] + sampled[: cfg.n_sampled_explain]
    explain.sort(key=lambda w: -w.max_act)
    held = top[: cfg.n_top_score] + sampled[cfg.n_sampled_explain : cfg.n_sampled_explain + cfg.n_sampled_score]
    detect = [text(w) for w in held + ex.random[: cfg.n_random_score]]
    rng.shuffle(detect)
    simulate = [text(w) for w in held + ex.random[: cfg.n_random_simulation]]
    rng.shuffle(simulate)
    return LatentData(
        ex.latent, [text(w) for w in explain], detect, simulate, threshold, ex.max_act, ex.n_active_tokens
    )


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Headline means over defined scores and the counts of every outcome."""
    det = [r["detection"] for r in rows if isinstance(r.get("detection"), dict)]
    sim = [r["simulation"] for r in rows if isinstance(r.get("simulation"), dict)]
    status = [r["status"] for r in rows]
    return {
        "detection_balanced_accuracy": mean_defined([d["balanced_accuracy"] for d in det]),
        "detection_accuracy": mean_defined([d["accuracy"] for d in det]),
        "detection_precision": mean_defined([d["precision"] for d in det]),
        "detection_recall": mean_defined([d["recall"] for d in det]),
        "simulation_r": mean_defined([s["r"] for s in sim]),
        "n_detection_scored": len(det),
        "n_simulation_scored": sum(s["r"] is not None for s in sim),
        "n_simulation_r_undefined": sum(s["r"] is None for s in sim),
        "n_failed": status.count("failed"),
        "n_unparseable_explanation": status.count("unparseable"),
        "n_unparseable_detection": sum(r.get("detection") == "unparseable" for r in rows),
        "n_unparseable_simulation": sum(r.get("simulation") == "unparseable" for r in rows),
        "n_not_run_budget": status.count("not_run"),
        "n_partial_budget": status.count("partial"),
    }


METRICS = (
    Metric(
        "detection_balanced_accuracy",
        "mean balanced accuracy of the scorer telling activating from "
        "non-activating held-out examples given the explanation",
        "up",
        True,
        "",
        "detection",
    ),
    Metric("detection_accuracy", "mean detection accuracy", "up"),
    Metric("detection_precision", "mean detection precision", "up"),
    Metric("detection_recall", "mean detection recall", "up"),
    Metric(
        "simulation_r", "mean Pearson r of simulated and true per-token activations", "up", True, "", "simulation r"
    ),
    Metric("n_detection_scored", "latents with a detection score"),
    Metric("n_simulation_scored", "latents with a defined simulation r"),
    Metric("n_simulation_r_undefined", "latents whose simulation r is undefined (constant prediction)"),
    Metric("n_failed", "latents whose requests failed after retries"),
    Metric("n_unparseable_explanation", "latents whose explanation reply could not be parsed"),
    Metric("n_unparseable_detection", "detection replies that could not be parsed"),
    Metric("n_unparseable_simulation", "simulation replies that could not be parsed"),
    Metric("n_not_run_budget", "latents not started when the budget ran out"),
    Metric("n_partial_budget", "latents cut short by the budget"),
    Metric("n_latents_requested", "latents asked for"),
    Metric("n_latents_live", "live latents to sample from"),
    Metric("n_latents_sampled", "latents sampled"),
    Metric("n_skipped_few_examples", "latents with too few activating windows"),
    Metric("n_latents_run", "latents sent to the LLM"),
    Metric("budget_exhausted", "whether the token/cost budget ran out"),
    Metric("requests_per_latent", "LLM requests per latent run"),
)


class AutointerpEvaluator:
    """``--evals autointerp``: LLM explanations, detection and simulation scores (see module doc)."""

    name = "autointerp"
    needs = frozenset({"states"})
    Config = AutointerpConfig
    metrics = METRICS

    def preflight(self, cfg: EvalConfig) -> None:
        """Refuse a missing key or an unreachable endpoint before the model is even loaded."""
        assert isinstance(cfg, AutointerpConfig)
        llm_client(cfg).check()

    def run(self, ctx: EvalContext, cfg: EvalConfig) -> EvalOutput:
        assert isinstance(cfg, AutointerpConfig)
        from saebench.autointerp.engine import EngineSettings, run_latents

        client = llm_client(cfg)
        client.check()
        seed = ctx.seed
        pipe, sae = ctx.pipeline, ctx.sae
        t0 = time.perf_counter()
        chosen, n_live = examples.choose_latents(
            pipe, sae, cfg.latents, cfg.n_latents, seed, "autointerp", min_count=cfg.min_active_tokens
        )
        latents = chosen.tolist()
        if cfg.latents is None:
            if len(latents) < cfg.n_latents:
                ctx.notes.append(f"autointerp: only {len(latents)} live latents, fewer than n_latents={cfg.n_latents}")
        n_top = cfg.n_top_explain + cfg.n_top_score
        collected = gather_examples(pipe, sae, latents, cfg, seed)
        t_examples = time.perf_counter() - t0

        vocab: dict[int, str] = {}

        def decode(t: int) -> str:
            if t not in vocab:
                vocab[t] = ctx.model.tokenizer.decode([t])
            return vocab[t]

        data, skipped = [], []
        for lat in latents:
            d = build_latent_data(collected[lat], cfg, decode, seed)
            if d is None:
                skipped.append(lat)
            else:
                data.append(d)
        if skipped:
            ctx.notes.append(
                f"autointerp: skipped {len(skipped)} latent(s) with fewer than {n_top} non-overlapping activating "
                "windows"
            )

        st = EngineSettings(
            explainer_model=cfg.explainer_model,
            scorer_model=cfg.scorer_model or cfg.explainer_model,
            max_tokens_explanation=cfg.max_tokens_explanation,
            max_tokens_detection=cfg.max_tokens_detection,
            max_tokens_simulation=cfg.max_tokens_simulation,
            scores=tuple(cfg.scores),
            concurrency=cfg.concurrency,
            transcripts=cfg.transcripts,
        )
        t0 = time.perf_counter()
        rows = run_latents(client, data, st)
        t_llm = time.perf_counter() - t0
        summary = summarize(rows)
        budget_hit = summary["n_not_run_budget"] + summary["n_partial_budget"] > 0
        if budget_hit:
            ctx.notes.append(
                "autointerp: the budget was spent before every latent was scored; "
                "rerun with a larger budget (cached replies cost nothing)"
            )
        if summary["n_failed"]:
            first = next(r["error"] for r in rows if r["status"] == "failed")
            ctx.notes.append(f"autointerp: {summary['n_failed']} latent(s) failed after retries (first: {first})")
        usage = client.usage.as_dict()
        metrics = {
            **summary,
            "n_latents_requested": len(cfg.latents) if cfg.latents is not None else cfg.n_latents,
            "n_latents_live": n_live,
            "n_latents_sampled": len(latents),
            "n_skipped_few_examples": len(skipped),
            "n_latents_run": len(rows),
            "budget_exhausted": budget_hit,
            "requests_per_latent": round(usage["requests"] / len(rows), 3) if rows else None,
        }
        details = {
            "explainer_model": st.explainer_model,
            "scorer_model": st.scorer_model,
            "base_url": cfg.base_url,
            "usage": usage,
            "skipped_latents": skipped,
            "latents": rows,
        }
        return EvalOutput(metrics, details, timing={"examples_s": t_examples, "llm_s": t_llm})
