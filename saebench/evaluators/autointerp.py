"""``--evals autointerp``: explain sampled latents and score the explanations.

Bills et al. (2023), SAEBench's autointerp and EleutherAI's delphi (Paulo et al. 2024). Offline by
default: with no flags the explanations come from the ``top-tokens`` baseline (no language model,
:mod:`saebench.autointerp.explainers`) and the scores from the embedded SmolLM2-135M in process
(``base_url="embedded"``: no server, no network), read from its log-probabilities with the
``surprisal`` method. With ``--llm-base-url URL`` an OpenAI-compatible endpoint writes the
explanations (chat completions) and scores them with the ``judge`` method (yes/no and 0..9
answers read from ``logprobs``/``top_logprobs``); ``--set autointerp.scoring=text`` keeps the
free-text scorers for endpoints without log-probabilities; ``scorer_base_url`` scores with another
endpoint (or ``embedded``) than the one that explains. See :mod:`saebench.autointerp.logprob` and
docs/autointerp.md. Steps:

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
4. per latent: explanation; detection (held-out activating vs random non-activating examples),
   fuzzing (held-out activating examples marked at their activating tokens vs marked at random
   ones, and random non-activating examples marked at random) and simulation (per-token
   prediction vs the true activations, Pearson r), see :mod:`saebench.autointerp.engine`.

Headline numbers are means over latents where the score is defined, each with a bootstrap
interval over latents (per-latent samples, unit "latent"); failed, undefined, skipped and
budget-cut latents are counted, never scored 0. Every explanation sits next to its scores in
``latents``; ``explainer`` and ``scorer`` say what produced them. Endpoint token counts and (with a
price table) cost are in ``usage``, the in-process scorer's work in ``embedded_usage``.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import field_validator

from saebench.autointerp.embedded import EMBEDDED
from saebench.errors import SaebenchError
from saebench.evaluators.base import EvalConfig, EvalContext, EvalOutput, Metric, mean_defined
from saebench.pipeline import ActivationPipeline, examples
from saebench.stats import Samples, mean_of

PAPER = {
    "n_latents": 1000,
    "n_top_explain": 10,
    "n_sampled_explain": 5,
    "n_top_score": 2,
    "n_sampled_score": 2,
    "n_random_score": 10,
    "n_random_simulation": 2,
    "n_random_fuzz": 2,
    "window": 10,
}

Scoring = Literal["auto", "surprisal", "judge", "text"]


class AutointerpConfig(EvalConfig):
    """Settings of ``--evals autointerp``. Profiles set sample sizes; the endpoint comes from flags."""

    base_url: str = EMBEDDED  # "embedded": offline (top-tokens explainer, in-process scorer); else an endpoint
    explainer_model: str = "gpt-4o-mini"
    scorer_model: str | None = None  # None: the explainer model
    scorer_base_url: str | None = None  # None: base_url; "embedded" scores in process whatever explains
    explainer: Literal["auto", "llm", "top-tokens"] = "auto"  # auto: llm on an endpoint, else top-tokens
    explanations: dict[int, str] | None = None  # score these explanations (latent -> text) instead of explaining
    scoring: Scoring = "auto"  # auto: surprisal in process, judge on an endpoint
    top_logprobs: int = 20  # candidates read per answer (OpenAI and vLLM allow up to 20)
    embedded_batch_size: int = 16  # prompts per forward of the in-process scorer
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8  # latents (or scoring requests) in flight at once
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
    n_random_fuzz: int = 2  # random non-activating windows marked at random (fuzzing negatives)
    window: int = 10  # tokens each side of the maximum (21-token examples)
    act_threshold_frac: float = 0.01  # token "active" above this fraction of the latent's max
    scores: list[Literal["detection", "fuzzing", "simulation"]] = ["detection", "fuzzing", "simulation"]
    max_tokens_explanation: int = 60
    max_tokens_detection: int = 40
    max_tokens_simulation: int | None = None  # None: 3 per predicted token + overhead
    temperature: float = 0.0
    timeout_s: float = 120.0
    max_retries: int = 5
    backoff_s: float = 1.0
    cache: bool = True  # on-disk response cache ($SAEBENCH_CACHE/autointerp), in-process scorer too
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
            "n_random_fuzz": 2,
            "window": 6,
        },
        "standard": {**PAPER, "n_latents": 100},
        "paper": PAPER,
    }


@dataclass(frozen=True)
class Setup:
    """What a config resolves to: who explains, who scores, and how."""

    explainer: str  # "llm", "top-tokens" or "given"
    scorer_url: str  # "embedded" or an endpoint URL
    scoring: str  # "surprisal", "judge" or "text"
    scores: tuple[str, ...]

    @property
    def embedded(self) -> bool:
        return self.scorer_url == EMBEDDED


def resolve(cfg: AutointerpConfig) -> Setup:
    """Fill in the ``auto`` choices and refuse combinations that cannot work (one line each)."""
    for name in ("concurrency", "max_retries", "n_latents", "top_logprobs", "embedded_batch_size"):
        if getattr(cfg, name) < (0 if name == "max_retries" else 1):
            raise SaebenchError(f"autointerp.{name} must be positive, got {getattr(cfg, name)}")
    if cfg.top_logprobs > 20:
        raise SaebenchError(f"autointerp.top_logprobs is {cfg.top_logprobs}; OpenAI-compatible endpoints allow 1..20")
    explainer = cfg.explainer
    if cfg.explanations is not None:
        explainer = "given"
    elif explainer == "auto":
        explainer = "top-tokens" if cfg.base_url == EMBEDDED else "llm"
    if explainer == "llm" and cfg.base_url == EMBEDDED:
        raise SaebenchError(
            "autointerp: the llm explainer needs an endpoint (the embedded scorer does not write explanations); "
            "pass --llm-base-url URL, or --set autointerp.explainer=top-tokens"
        )
    scorer_url = cfg.scorer_base_url or cfg.base_url
    scoring = cfg.scoring
    if scoring == "auto":
        scoring = "surprisal" if scorer_url == EMBEDDED else "judge"
    if scoring == "surprisal" and scorer_url != EMBEDDED:
        raise SaebenchError(
            "autointerp: surprisal scoring needs every token's log-probability, which chat endpoints do not return; "
            "use --set autointerp.scorer_base_url=embedded or autointerp.scoring=judge"
        )
    if scoring == "text" and scorer_url == EMBEDDED:
        raise SaebenchError(
            "autointerp: the free-text scorers need an endpoint; use --llm-base-url URL, or scoring=surprisal/judge "
            "for the embedded scorer"
        )
    scores = tuple(dict.fromkeys(cfg.scores))
    if scoring == "text":
        scores = tuple(k for k in scores if k != "fuzzing")  # fuzzing is a log-probability scorer only
    return Setup(explainer, scorer_url, scoring, scores)


def describe_scorer(setup: Setup, cfg: AutointerpConfig) -> str:
    """One line for the result: which model scored, where, and how."""
    how = {
        "surprisal": "surprisal: log-likelihood gain of the example tokens given the explanation",
        "judge": "judge: yes/no and 0-9 answers read from next-token log-probabilities",
        "text": "free text: parsed replies",
    }[setup.scoring]
    if setup.embedded:
        return f"embedded smollm2-135m-instruct in process ({how})"
    return f"{cfg.scorer_model or cfg.explainer_model} at {setup.scorer_url} ({how})"


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


def sample_latents(ctx: EvalContext, cfg: AutointerpConfig) -> tuple[list[int], int | None]:
    """The latents ``--evals autointerp`` explains for this SAE (sorted) and how many were live: the
    explicit list, else a seeded draw (the run's ``--seed``) among latents firing on at least
    ``min_active_tokens`` tokens of the run's token set. Public so that other evaluators (the
    dashboard) show exactly autointerp's latents."""
    chosen, n_live = examples.choose_latents(
        ctx.pipeline, ctx.sae, cfg.latents, cfg.n_latents, ctx.seed, "autointerp", min_count=cfg.min_active_tokens
    )
    return chosen.tolist(), n_live


def gather_examples(
    pipe: ActivationPipeline, sae: Any, latents: list[int], cfg: AutointerpConfig, seed: int
) -> dict[int, Collected]:
    """Top, importance-sampled (disjoint from top) and non-activating windows per latent."""
    n_top = cfg.n_top_explain + cfg.n_top_score
    n_imp = cfg.n_sampled_explain + cfg.n_sampled_score
    ex = examples.latent_examples(
        pipe, sae, latents, n_top=4 * n_top, n_importance=4 * n_imp + n_top, seed=seed, window=(cfg.window, cfg.window)
    )
    n_rand = max(cfg.n_random_score, cfg.n_random_simulation, cfg.n_random_fuzz)
    rand = random_windows(pipe, sae, latents, n_rand, cfg.window, seed)
    out = {}
    for row, lat in enumerate(latents):
        taken: dict[int, list[tuple[int, int]]] = {}
        top = _disjoint(_windows(ex.top, row), n_top, taken)
        imp = _windows(ex.importance, row)
        random.Random(f"autointerp-iw-{seed}-{lat}").shuffle(imp)
        sampled = _disjoint(imp, n_imp, taken)
        out[lat] = Collected(lat, int(ex.n_fire[row]), float(ex.max_act[row]), top, sampled, rand[lat])
    return out


def llm_client(cfg: AutointerpConfig, base_url: str | None = None) -> Any:
    """The :class:`~saebench.autointerp.client.LLMClient` of ``base_url`` (default: the explainer's
    endpoint); raises on a missing key."""
    from saebench.autointerp.client import LLMClient, LLMSettings
    from saebench.io import cache_dir

    settings = LLMSettings(
        base_url=base_url or cfg.base_url,
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


_EMBEDDED_MODEL: list[Any] = []  # (model, tokenizer, model id), loaded once per process


def embedded_scorer(cfg: AutointerpConfig) -> Any:
    """A fresh in-process scorer (its own usage counters) on the embedded model, which is loaded once
    per process and shared by every SAE of a run and every run of a session."""
    from saebench.autointerp.embedded import EmbeddedScorer
    from saebench.io import cache_dir
    from saebench.models import _hf_folder, load_embedded_hf

    if not _EMBEDDED_MODEL:
        model, tok = load_embedded_hf()
        _EMBEDDED_MODEL.extend([model, tok, f"{EMBEDDED}:{_hf_folder().name}"])
    model, tok, model_id = _EMBEDDED_MODEL
    return EmbeddedScorer(
        top_k=cfg.top_logprobs,
        batch_size=cfg.embedded_batch_size,
        cache_dir=(cache_dir() / "autointerp") if cfg.cache else None,
        model=model,
        tokenizer=tok,
        model_id=model_id,
    )


def build_latent_data(ex: Any, cfg: AutointerpConfig, decode: Any, seed: int) -> Any | None:
    """Split one latent's collected windows into explanation / detection / fuzzing / simulation examples.

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
        ex.latent,
        [text(w) for w in explain],
        detect,
        simulate,
        threshold,
        ex.max_act,
        ex.n_active_tokens,
        fuzz=[text(w) for w in held],
        fuzz_random=[text(w) for w in ex.random[: cfg.n_random_fuzz]],
        explanation=(cfg.explanations or {}).get(int(ex.latent)),
    )


def latent_columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Per-latent score columns (None where undefined or not scored): the samples behind the means."""

    def get(row: dict[str, Any], kind: str, key: str) -> Any:
        v = row.get(kind)
        return v.get(key) if isinstance(v, dict) else None

    return {
        "detection_auroc": [get(r, "detection", "auroc") for r in rows],
        "detection_balanced_accuracy": [get(r, "detection", "balanced_accuracy") for r in rows],
        "detection_accuracy": [get(r, "detection", "accuracy") for r in rows],
        "detection_precision": [get(r, "detection", "precision") for r in rows],
        "detection_recall": [get(r, "detection", "recall") for r in rows],
        "fuzzing_auroc": [get(r, "fuzzing", "auroc") for r in rows],
        "fuzzing_balanced_accuracy": [get(r, "fuzzing", "balanced_accuracy") for r in rows],
        "simulation_r": [get(r, "simulation", "r") for r in rows],
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Headline means over defined scores and the counts of every outcome."""
    cols = latent_columns(rows)
    status = [r["status"] for r in rows]

    def scored(kind: str) -> int:
        return sum(isinstance(r.get(kind), dict) for r in rows)

    return {
        **{k: mean_defined(v) for k, v in cols.items()},
        "n_detection_scored": scored("detection"),
        "n_detection_auroc_undefined": sum(
            isinstance(r.get("detection"), dict) and "auroc" in r["detection"] and r["detection"]["auroc"] is None
            for r in rows
        ),
        "n_fuzzing_scored": scored("fuzzing"),
        "n_fuzzing_auroc_undefined": sum(
            isinstance(r.get("fuzzing"), dict) and r["fuzzing"]["auroc"] is None for r in rows
        ),
        "n_simulation_scored": sum(v is not None for v in cols["simulation_r"]),
        "n_simulation_r_undefined": sum(
            isinstance(r.get("simulation"), dict) and r["simulation"]["r"] is None for r in rows
        ),
        "n_items_undefined": sum(
            int(r[k].get("n_undefined", 0))
            for r in rows
            for k in ("detection", "fuzzing", "simulation")
            if isinstance(r.get(k), dict)
        ),
        "n_failed": status.count("failed"),
        "n_unparseable_explanation": status.count("unparseable"),
        "n_unparseable_detection": sum(r.get("detection") == "unparseable" for r in rows),
        "n_unparseable_simulation": sum(r.get("simulation") == "unparseable" for r in rows),
        "n_not_run_budget": status.count("not_run"),
        "n_partial_budget": status.count("partial"),
    }


def _score_metric(name: str, meaning: str, headline: bool = False, title: str = "") -> Metric:
    return Metric(name, meaning, "up", headline, "", title, estimator=mean_of("latent", name))


METRICS = (
    _score_metric(
        "detection_auroc",
        "mean over latents of the AUROC with which the scorer, given the explanation, tells held-out activating "
        "examples from non-activating ones (0.5 is chance)",
        True,
        "detection AUROC",
    ),
    _score_metric(
        "fuzzing_auroc",
        "mean over latents of the AUROC with which the scorer tells examples marked at the latent's activating "
        "tokens from examples marked at random tokens (0.5 is chance)",
        True,
        "fuzzing AUROC",
    ),
    _score_metric(
        "simulation_r",
        "mean over latents of the Pearson r between simulated and true per-token activations",
        True,
        "simulation r",
    ),
    _score_metric("fuzzing_balanced_accuracy", "mean fuzzing balanced accuracy at P(correctly marked) = 0.5"),
    _score_metric(
        "detection_balanced_accuracy",
        "mean detection balanced accuracy (judge: at P(yes) = 0.5; text: of the named examples; surprisal: None)",
    ),
    _score_metric(
        "detection_accuracy",
        "mean detection accuracy, the fraction of scoring examples classified correctly (free-text scorer only; "
        "SAEBench's per-latent score: with --profile paper, scoring=text and gpt-4o-mini this is the counterpart "
        "of SAEBench's autointerp_score, see docs/autointerp.md)",
    ),
    _score_metric("detection_precision", "mean detection precision (free-text scorer)"),
    _score_metric("detection_recall", "mean detection recall (free-text scorer)"),
    Metric("n_detection_scored", "latents with a detection score"),
    Metric("n_detection_auroc_undefined", "latents whose detection AUROC is undefined (a class without scores)"),
    Metric("n_fuzzing_scored", "latents with a fuzzing score"),
    Metric("n_fuzzing_auroc_undefined", "latents whose fuzzing AUROC is undefined"),
    Metric("n_simulation_scored", "latents with a defined simulation r"),
    Metric("n_simulation_r_undefined", "latents whose simulation r is undefined (constant prediction)"),
    Metric(
        "n_items_undefined", "examples / tokens whose score was undefined (no yes/no or digit among the top tokens)"
    ),
    Metric("n_failed", "latents whose requests failed after retries"),
    Metric("n_unparseable_explanation", "latents with no explanation (unparseable reply, or nothing fired)"),
    Metric("n_unparseable_detection", "detection replies that could not be parsed (free-text scorer)"),
    Metric("n_unparseable_simulation", "simulation replies that could not be parsed (free-text scorer)"),
    Metric("n_not_run_budget", "latents not started when the budget ran out"),
    Metric("n_partial_budget", "latents cut short by the budget"),
    Metric("n_latents_requested", "latents asked for"),
    Metric("n_latents_live", "live latents to sample from"),
    Metric("n_latents_sampled", "latents sampled"),
    Metric("n_skipped_few_examples", "latents with too few activating windows"),
    Metric("n_latents_run", "latents explained and scored"),
    Metric("budget_exhausted", "whether the token/cost budget ran out"),
    Metric("requests_per_latent", "LLM endpoint requests per latent run (None without an endpoint)"),
)


class AutointerpEvaluator:
    """``--evals autointerp``: explanations and their detection, fuzzing and simulation scores (see module doc)."""

    name = "autointerp"
    needs = frozenset({"states"})
    Config = AutointerpConfig
    metrics = METRICS

    def preflight(self, cfg: EvalConfig) -> None:
        """Refuse bad settings, a missing key, an unreachable endpoint or one without log-probabilities
        (judge scoring), and a missing embedded model, before the subject model is even loaded."""
        assert isinstance(cfg, AutointerpConfig)
        setup = resolve(cfg)
        if setup.explainer == "llm":
            llm_client(cfg).check()
        if setup.embedded:
            from saebench.models import embedded_gguf_path, embedded_hf_ready

            if not embedded_hf_ready():
                embedded_gguf_path()
        else:
            client = llm_client(cfg, setup.scorer_url)
            if setup.explainer != "llm" or setup.scorer_url != cfg.base_url:
                client.check()
            if setup.scoring == "judge":
                client.check_logprobs(cfg.scorer_model or cfg.explainer_model, cfg.top_logprobs)

    def run(self, ctx: EvalContext, cfg: EvalConfig) -> EvalOutput:
        assert isinstance(cfg, AutointerpConfig)
        from saebench.autointerp.engine import EndpointJudge, EngineSettings, run_latents
        from saebench.autointerp.explainers import TOP_TOKENS_ABOUT

        setup = resolve(cfg)
        explainer_client = llm_client(cfg) if setup.explainer == "llm" else None
        if explainer_client is not None:
            explainer_client.check()
        scorer_client = None
        if not setup.embedded:
            same = explainer_client is not None and setup.scorer_url == cfg.base_url
            scorer_client = explainer_client if same else llm_client(cfg, setup.scorer_url)
            if not same:
                scorer_client.check()
        seed = ctx.seed
        pipe, sae = ctx.pipeline, ctx.sae
        t0 = time.perf_counter()
        latents, n_live = sample_latents(ctx, cfg)
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
            explainer=setup.explainer,
            scoring=setup.scoring,
            max_tokens_explanation=cfg.max_tokens_explanation,
            max_tokens_detection=cfg.max_tokens_detection,
            max_tokens_simulation=cfg.max_tokens_simulation,
            scores=setup.scores,
            concurrency=cfg.concurrency,
            transcripts=cfg.transcripts,
            seed=seed,
        )
        scorer: Any = None
        t0 = time.perf_counter()
        if setup.embedded:
            scorer = embedded_scorer(cfg)
        elif setup.scoring == "judge":
            scorer = EndpointJudge(scorer_client, st.scorer_model, cfg.top_logprobs, cfg.concurrency)
        t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        rows = run_latents(explainer_client, data, st, scorer=scorer, text_client=scorer_client)
        t_llm = time.perf_counter() - t0
        summary = summarize(rows)
        budget_hit = summary["n_not_run_budget"] + summary["n_partial_budget"] > 0
        if budget_hit:
            ctx.notes.append(
                "autointerp: the budget was spent before every latent was scored; "
                "rerun with a larger budget (cached replies cost nothing)"
            )
        if summary["n_failed"]:
            first = next(r.get("error", "") for r in rows if r["status"] == "failed")
            ctx.notes.append(f"autointerp: {summary['n_failed']} latent(s) failed after retries (first: {first})")
        clients = [c for c in (explainer_client, scorer_client) if c is not None]
        usage = _merge_usage([c.usage.as_dict() for c in dict.fromkeys(clients)])
        embedded_usage = scorer.usage.as_dict() if setup.embedded else None
        samples = Samples("latent", [ctx.latent_id(r["latent"]) for r in rows], latent_columns(rows))
        estimated = set(latent_columns([]))
        metrics = {
            **{k: v for k, v in summary.items() if k not in estimated},
            "n_latents_requested": len(cfg.latents) if cfg.latents is not None else cfg.n_latents,
            "n_latents_live": n_live,
            "n_latents_sampled": len(latents),
            "n_skipped_few_examples": len(skipped),
            "n_latents_run": len(rows),
            "budget_exhausted": budget_hit,
            "requests_per_latent": round(usage["requests"] / len(rows), 3) if rows and clients else None,
        }
        details = {
            "explainer": {
                "top-tokens": TOP_TOKENS_ABOUT,
                "given": "given: the explanations passed in autointerp.explanations",
            }.get(setup.explainer, f"llm: {cfg.explainer_model} at {cfg.base_url}"),
            "scorer": describe_scorer(setup, cfg),
            "scoring": setup.scoring,
            "scores": list(setup.scores),
            "explainer_model": cfg.explainer_model if setup.explainer == "llm" else None,
            "scorer_model": "smollm2-135m-instruct (embedded)" if setup.embedded else st.scorer_model,
            "base_url": cfg.base_url,
            "scorer_base_url": setup.scorer_url,
            "usage": usage,
            "embedded_usage": embedded_usage,
            "skipped_latents": skipped,
            "latents": rows,
        }
        return EvalOutput(
            metrics,
            details,
            samples={"latent": samples},
            timing={"examples_s": t_examples, "scorer_load_s": t_load, "llm_s": t_llm},
        )


def _merge_usage(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Endpoint usage summed over the explainer's and the scorer's clients (zeros when none was used)."""
    from saebench.autointerp.client import Usage

    out = Usage().as_dict()
    for p in parts:
        for k, v in p.items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                out[k] = (out.get(k) or 0) + v
            elif v is not None:
                out[k] = v
    if parts and all(p.get("cost_usd") is not None for p in parts):
        out["cost_usd"] = round(sum(p["cost_usd"] for p in parts), 6)
    return out
