"""``--evals n2g``: Neuron2Graph explainability of SAE latents (Foote et al. 2023; Gao et al. 2024, sec. 4.3).

For a seeded sample of latents whose firing density on the example contexts lies in the band
[``min_density``, ``max_density``] (default 0.2%-10%: rarer latents fire too seldom on the held-out
half to be scored, denser ones are not the sparse features the metric is about): collect
top-activating and random-activating examples from the first part of the evaluation token set
(``saebench.pipeline.examples.latent_examples``: one streamed encode pass over the cached prefix
states, a bounded top-k buffer per latent), build each latent's pattern trie
(``saebench.probes.n2g``: prune to the minimal suffix keeping ≥ 50% of the activation, wildcard
tokens whose replacement by a pad keeps > 50%, anchor at a BOS where the whole context is needed),
then predict the latent on the held-out contexts (the last ``heldout_frac`` of the token set) and
binarise truth and prediction at ``firing_threshold`` × the latent's max activation on the example
contexts. Metrics: token-level ``precision``, ``recall``, ``f1`` per latent and their means over
latents that fire on held-out text; each latent's explanation (its strongest patterns) is in
``latents``.

Which latents: each latent gets a random key from ``latent_seed`` (0 by default, *not* the run's
``--seed``) and the ``n_latents`` in-band latents with the smallest keys are explained; ``--seed``
resamples the token set, so the examples, the held-out text and (slightly) who is in the band, as
the probing seed resamples each task's examples but keeps the 61 tasks. The interval over
latents still carries the latent-sampling error; ``--set n2g.latent_seed=null`` ties the draw to
``--seed``.

Precision of a latent whose explanation predicts nothing on held-out text is 0, not undefined:
an explanation that never fires explains nothing, and leaving it out would reward SAEs whose
explanations stay silent (``n_latents_predict_nothing`` counts them). A latent that never fires
above the threshold on held-out text has no recall or F1 and is left out of every mean.

Cost: pruning/saliency rows run only up to the hook (``SubjectModel.prefix`` + ``hook_acts``),
batched by length into ``batch_size x ctx_len``-token calls; ``forward_calls`` vs
``naive_forward_calls`` (one call per pruning step / saliency test, as in N2G) is recorded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from saebench.errors import SaebenchError
from saebench.evaluators.base import EvalConfig, EvalContext, EvalOutput, Metric
from saebench.pipeline import ActivationPipeline, examples
from saebench.stats import Samples, mean_of


class N2GConfig(EvalConfig):
    """Settings of ``--evals n2g``; profiles set the sample sizes only."""

    n_latents: int = 192  # latents sampled (seeded) within the density band
    latents: list[int] | None = None  # explicit latent indices instead of a sample
    min_density: float = 0.002  # band of firing density on the example contexts a sampled latent lies in
    max_density: float = 0.1
    latent_seed: int | None = 0  # seed of the latent draw (None: the run's --seed); see the module doc
    n_tokens: int | None = 32768  # at least this many tokens (examples + held-out); None: the run's token set
    n_top: int = 8  # top-activating examples per latent
    n_random: int = 4  # random activating examples per latent (uniform over firing positions)
    max_prune_len: int = 12  # longest suffix tried when pruning (tokens, excl. BOS)
    keep_frac: float = 0.5  # pruning keeps >= keep_frac of the example's activation
    wildcard_frac: float = 0.5  # a token is a wildcard if padding it keeps > wildcard_frac
    firing_threshold: float = 0.5  # fraction of the latent's max activation that counts as firing
    heldout_frac: float = 0.5  # last fraction of the token set's contexts used for scoring
    pad_token: int | None = None  # saliency replacement; None: the tokenizer's pad token, else BOS
    n_patterns_reported: int = 5

    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": {"n_latents": 192, "n_top": 8, "n_random": 4, "max_prune_len": 12, "n_tokens": 32768},
        "standard": {"n_latents": 384, "n_top": 16, "n_random": 8, "max_prune_len": 16, "n_tokens": 131072},
        "paper": {"n_latents": 512, "n_top": 20, "n_random": 10, "max_prune_len": 24, "n_tokens": 409600},
    }


METRICS = (
    Metric(
        "n2g_f1",
        "mean token-level F1 of the latents' N2G pattern predictions on held-out text",
        "up",
        True,
        "",
        "N2G F1",
        0.02,
        mean_of("latent", "f1"),
    ),
    Metric(
        "n2g_precision",
        "mean token-level precision of the N2G predictions",
        "up",
        False,
        "",
        "",
        0.02,
        mean_of("latent", "precision"),
    ),
    Metric(
        "n2g_recall",
        "mean token-level recall of the N2G predictions",
        "up",
        False,
        "",
        "",
        0.02,
        mean_of("latent", "recall"),
    ),
    Metric(
        "n2g_base_rate",
        "mean fraction of held-out tokens on which a scored latent fires",
        "",
        False,
        "",
        "",
        0.0,
        mean_of("latent", "base_rate"),
    ),
    Metric("n_latents", "latents sampled"),
    Metric("n_latents_scored", "latents that fire above the threshold on held-out text"),
    Metric("n_latents_predict_nothing", "scored latents whose explanation predicts no held-out token (precision 0)"),
    Metric("n_live_latents_in_examples", "latents that fire on the example contexts"),
    Metric("n_latents_in_band", "latents whose firing density on the example contexts lies in the band"),
    Metric("n_examples", "examples explained"),
    Metric("n_patterns", "patterns in all tries"),
    Metric("n_examples_unpruned", "examples no suffix kept above keep_frac"),
    Metric("n_patterns_anchored", "patterns anchored at a BOS"),
    Metric("forward_calls", "model calls spent on pruning and saliency"),
    Metric("naive_forward_calls", "model calls one call per pruning step / saliency test would need"),
)


def token_pipeline(ctx: EvalContext, n_tokens: int | None) -> ActivationPipeline:
    """The run's pipeline, or (when it holds fewer than ``n_tokens`` tokens) one over a longer token
    set from the same corpus, split and seed: its first contexts are the run's own (the token stream
    is the same, cut later). Built once per run and hook (memoised on the run's pipeline); its prefix
    states are cached on disk like the run's. A token set that cannot be regrown (one handed in by
    the caller) is used as it is, with a note."""
    from saebench.data import build_token_set

    pipe = ctx.pipeline
    ts = pipe.tokens
    if n_tokens is None or ts.n_tokens >= n_tokens:
        return pipe

    def grow() -> ActivationPipeline | str:
        try:
            split = ts.split if ts.corpus == "sae-probes" else "eval"
            m = ctx.model
            more = build_token_set(m.tokenize, m.bos_id, n_tokens, ts.ctx_len, ts.seed, ts.corpus, split)
        except SaebenchError as exc:
            return str(exc)
        if not torch.equal(more.tokens[: ts.tokens.shape[0]], ts.tokens):
            return "the run's token set is not a prefix of its corpus stream"
        wide = ActivationPipeline(ctx.model, more, pipe.hook, pipe.batch_size, pipe.use_cache, progress=False)
        wide.counters = pipe.counters  # its model passes count as the run's
        return wide

    got = pipe.shared(f"n2g-tokens:{n_tokens}", grow)
    if isinstance(got, str):
        ctx.notes.append(f"n2g: kept the run's {ts.n_tokens} tokens instead of {n_tokens} ({got})")
        return pipe
    return got


@dataclass
class N2GSample:
    """What n2g reads and whom it explains: the token pipeline (:func:`token_pipeline`), the example
    contexts ``train`` and held-out contexts ``held`` (indices into its token set), the sampled
    ``latents`` (sorted), how many were in the density band, and the firing counts on ``train``
    (None for an explicit list)."""

    pipe: ActivationPipeline
    train: torch.Tensor
    held: torch.Tensor
    latents: torch.Tensor
    n_band: int | None
    counts: torch.Tensor | None


def sample_latents(ctx: EvalContext, cfg: N2GConfig) -> N2GSample:
    """The token set, split and latent sample of ``--evals n2g`` for this SAE (public so that other
    evaluators, the dashboard, show exactly n2g's latents): one firing-count pass over the example
    contexts, then the stable seeded draw within the density band."""
    pipe = token_pipeline(ctx, cfg.n_tokens)
    n_seq = pipe.tokens.tokens.shape[0]
    n_hold = max(1, round(n_seq * cfg.heldout_frac))
    if n_seq - n_hold < 1:
        raise SaebenchError(f"n2g needs at least 2 contexts (examples + held-out), got {n_seq}; raise --tokens")
    train, held = torch.arange(n_seq - n_hold), torch.arange(n_seq - n_hold, n_seq)
    counts = examples.fire_counts(pipe, ctx.sae, train) if cfg.latents is None else None
    latents, n_band = examples.choose_latents(
        pipe,
        ctx.sae,
        cfg.latents,
        cfg.n_latents,
        ctx.seed if cfg.latent_seed is None else cfg.latent_seed,
        "n2g",
        seqs=train,
        density=(cfg.min_density, cfg.max_density),
        counts=counts,
        stable=True,
    )
    return N2GSample(pipe, train, held, latents, n_band, counts)


class N2GEvaluator:
    """``--evals n2g``: see module doc."""

    name = "n2g"
    needs = frozenset({"states"})
    Config = N2GConfig
    metrics = METRICS

    def run(self, ctx: EvalContext, cfg: EvalConfig) -> EvalOutput:
        assert isinstance(cfg, N2GConfig)
        from saebench.probes.n2g import Example, explain_and_score

        if not 0 < cfg.heldout_frac < 1 or cfg.max_prune_len < 1 or cfg.n_top + cfg.n_random < 1:
            raise SaebenchError(
                "n2g: need 0 < heldout_frac < 1, max_prune_len >= 1 and n_top + n_random >= 1; fix the --set values"
            )
        if not 0 <= cfg.min_density <= cfg.max_density <= 1:
            raise SaebenchError("n2g: need 0 <= min_density <= max_density <= 1; fix the --set values")
        sae, model = ctx.sae, ctx.model
        seed = ctx.seed
        t0 = time.perf_counter()
        pick = sample_latents(ctx, cfg)
        pipe, train, held, latents, n_band, counts = (
            pick.pipe,
            pick.train,
            pick.held,
            pick.latents,
            pick.n_band,
            pick.counts,
        )
        n_live = int((counts > 0).sum()) if counts is not None else None
        ex = examples.latent_examples(pipe, sae, latents, n_top=cfg.n_top, n_random=cfg.n_random, seed=seed, seqs=train)
        t_collect = time.perf_counter() - t0

        toks = pipe.tokens.tokens
        found, max_act = [], {}
        for li, lat in enumerate(latents.tolist()):
            if ex.n_fire[li] == 0:
                continue  # an explicitly requested latent that never fires on the example contexts
            max_act[lat] = float(ex.max_act[li])
            seen = set()
            for es in (ex.top, ex.random):
                for j in es.valid[li].nonzero().squeeze(1).tolist():
                    s, p = int(es.seq[li, j]), int(es.pos[li, j])
                    if (s, p) not in seen:
                        seen.add((s, p))
                        found.append(Example(lat, toks[s, : p + 1].tolist(), float(es.act[li, j])))
        pad = cfg.pad_token
        if pad is None:
            pad = getattr(model.tokenizer, "pad_token_id", None)
            pad = model.bos_id if pad is None else int(pad)

        calls0, rows0 = pipe.counters.example_forward_batches, pipe.counters.example_forward_rows
        t0 = time.perf_counter()
        heldout = examples.latent_acts(pipe, sae, latents, held)
        truth = {lat: heldout[..., li] for li, lat in enumerate(latents.tolist())}
        rows, stats = explain_and_score(
            found,
            max_act,
            toks[held],
            truth,
            lambda r, lat: examples.latent_acts_at(pipe, sae, r, lat),
            pad,
            model.bos_id,
            lambda ids: model.tokenizer.decode(ids),
            cfg.max_prune_len,
            cfg.keep_frac,
            cfg.wildcard_frac,
            cfg.firing_threshold,
            cfg.n_patterns_reported,
        )
        t_explain = time.perf_counter() - t0
        calls = pipe.counters.example_forward_batches - calls0
        naive = pipe.counters.example_forward_rows - rows0
        scored = [r for r in rows if r["f1"] is not None]
        if len(max_act) < len(latents):
            ctx.notes.append(
                f"n2g: {len(latents) - len(max_act)} requested latent(s) never fire on the example contexts; skipped"
            )
        if len(scored) < len(rows):
            ctx.notes.append(
                f"n2g: {len(rows) - len(scored)} latent(s) never fire above the threshold on held-out text; left "
                "out of the means"
            )
        # means over the scored latents (f1 defined): n2g_f1, _precision, _recall, _base_rate follow from these
        samples = {
            "latent": Samples(
                "latent",
                [ctx.latent_id(r["latent"]) for r in rows],
                {
                    col: [r[col] if r["f1"] is not None else None for r in rows]
                    for col in ("f1", "precision", "recall", "base_rate")
                },
            )
        }
        metrics = {
            "n_latents": len(rows),
            "n_latents_scored": len(scored),
            "n_latents_predict_nothing": sum(r["n_pred"] == 0 for r in scored),
            "n_live_latents_in_examples": n_live,
            "n_latents_in_band": n_band,
            "n_examples": len(found),
            "n_patterns": sum(r["n_patterns"] for r in rows),
            "n_examples_unpruned": stats["n_unpruned"],
            "n_patterns_anchored": stats["n_anchored"],
            "forward_calls": calls,
            "naive_forward_calls": naive,
        }
        details = {
            "density_band": [cfg.min_density, cfg.max_density] if cfg.latents is None else None,
            "precision_rule": "a scored latent whose explanation predicts nothing has precision 0 (counted in the "
            "mean); a latent that never fires above the threshold on held-out text is left out of every mean",
            "firing_threshold": cfg.firing_threshold,
            "threshold_reference": "max activation of the latent on the example contexts",
            "n_tokens": int(pipe.tokens.n_tokens),
            "example_contexts": int(train.numel()),
            "heldout_contexts": int(held.numel()),
            "heldout_tokens_scored": int(held.numel() * (pipe.tokens.ctx_len - 1)),
            "pad_token": pad,
            "rows_prune": stats["rows_prune"],
            "rows_saliency": stats["rows_saliency"],
            "latents": rows,
        }
        timing = {"collect_s": t_collect, "explain_score_s": t_explain}
        return EvalOutput(metrics, details, samples=samples if rows else {}, timing=timing)
