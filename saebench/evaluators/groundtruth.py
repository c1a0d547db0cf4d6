"""``groundtruth``: an SAE trained on a synthetic source, scored against the known dictionary.

Only SAEs whose config records a synthetic source (:mod:`saebench.synthetic`, trained by
``saebench synthetic zoo``) can be scored; the source is rebuilt from that record and a fresh
``eval`` stream of ``n_tokens`` tokens is drawn from it (the SAE was trained on the ``train``
stream). Run it with ``saebench groundtruth --sae DIR`` (``saebench run`` refuses synthetic SAEs:
they have no language model). Definitions (docs/groundtruth.md has the decisions):

- ``mcc`` — SAELens' MCC: decoder rows (model units) and true features matched one-to-one by the
  Hungarian algorithm on ``|cos|``; the mean ``|cos|`` over the ``min(N, d_sae)`` matched pairs.
  Unit: true feature (unmatched features are left out).
- ``recovery`` — fraction of true features whose best latent has (signed) ``cos >= recovery_cos``
  (0.9). Unit: true feature; exact binomial interval.
- ``gt_absorption`` — for every child feature that fires at least ``min_fires`` times: the
  fraction of its firings on which its parent's latent (the latent with the largest cosine to the
  parent feature) is silent, although the parent fires too (a child fires only with its parent).
  Mean over children. ``parent_miss_alone`` is the same rate on tokens where the parent fires
  with no child (a dead or weak parent latent misses those too); ``gt_absorption_excess`` the
  mean per-child difference: what the child takes beyond the parent latent's ordinary misses.
- ``split_frac`` / ``merge_frac`` — at cosine ``split_cos`` (0.5): true features with two or more
  latents assigned (each latent to its best feature) / live latents at ``>= split_cos`` with two
  or more features (:func:`saebench.probes.groundtruth.split_merge`).
- ``magnitude_ratio`` — for every recovered feature, the matched latent's contribution along the
  feature, ``Σ a_j (d_j · f_i)``, over the feature's true magnitude ``Σ m_i`` on the tokens where
  it fires: 1 is no shrinkage, below 1 shrinkage. Mean over recovered features.
- ``dead_frac`` — latents that never fire on the eval stream (unit: latent).
- ``eval_l0`` and ``fvu`` on the eval stream, over blocks of ``block_tokens`` tokens (tokens are
  independent draws); FVU's variance is around the source's exact mean activation.
"""

from __future__ import annotations

import math
import time
from typing import Any, ClassVar

import torch

from saebench.errors import SaebenchError
from saebench.evaluators.base import EvalConfig, EvalContext, EvalOutput, Metric
from saebench.stats import Ratio, Samples, mean_of, proportion_of


class GroundTruthConfig(EvalConfig):
    """Settings of the ``groundtruth`` evaluator."""

    n_tokens: int = 32_768  # tokens of the source's eval stream
    batch_size: int = 4096
    block_tokens: int = 512  # tokens per sampling unit of l0 / fvu
    recovery_cos: float = 0.9
    split_cos: float = 0.5
    min_fires: int = 10  # a child (or recovered feature) needs this many firings to be scored
    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "standard": {"n_tokens": 131_072},
        "paper": {"n_tokens": 524_288},
    }


#: the smallest change the gate treats as real, per directional metric (fractions and cosines)
MIN_EFFECT = {"mcc": 0.01, "recovery": 0.01, "gt_absorption": 0.02, "gt_absorption_excess": 0.02, "fvu": 0.002}


def _m(name: str, meaning: str, estimator: Any, direction: str = "", headline: bool = False, title: str = "") -> Metric:
    return Metric(
        name,
        meaning,
        direction=direction,  # type: ignore[arg-type]
        headline=headline,
        title=title,
        estimator=estimator,
        min_effect=MIN_EFFECT.get(name, 0.01 if direction else 0.0),
    )


MCC = "SAELens' MCC: mean |cos| of Hungarian-matched decoder rows and true features"
METRICS: tuple[Metric, ...] = (
    _m("mcc", MCC, mean_of("feature", "matched_cos"), "up", True, "MCC"),
    _m(
        "recovery",
        "fraction of true features with a latent at cos >= recovery_cos (0.9)",
        proportion_of("feature", "recovered"),
        "up",
        True,
        "recovered",
    ),
    _m(
        "gt_absorption",
        "mean over child features of P(parent's latent silent | child fires)",
        mean_of("child", "absorption"),
        "down",
        True,
        "true absorption",
    ),
    _m(
        "gt_absorption_excess",
        "gt_absorption minus the parent latent's miss rate when the parent fires alone",
        Ratio("child", {"absorption": 1.0, "parent_miss_alone": -1.0}),
        "down",
    ),
    _m(
        "parent_miss_alone",
        "mean over children of P(parent's latent silent | parent fires without a child)",
        mean_of("child", "parent_miss_alone"),
    ),
    _m(
        "split_frac",
        "fraction of true features with >= 2 latents assigned at cos >= split_cos",
        proportion_of("feature", "split"),
        "down",
    ),
    _m(
        "merge_frac",
        "fraction of live latents at cos >= split_cos with >= 2 true features",
        proportion_of("latent", "merged"),
        "down",
    ),
    _m(
        "magnitude_ratio",
        "matched latent's contribution along a recovered feature / its true magnitude (1: no shrinkage)",
        mean_of("feature", "magnitude_ratio"),
    ),
    _m("dead_frac", "fraction of latents never firing on the eval stream", proportion_of("latent", "dead"), "down"),
    _m("eval_l0", "mean active latents per token on the eval stream", Ratio("block", {"l0_sum": 1.0}, {"tokens": 1.0})),
    _m(
        "fvu",
        "fraction of variance unexplained on the eval stream",
        Ratio("block", {"sq_err": 1.0}, {"sq_dev": 1.0}),
        "down",
        title="FVU",
    ),
)


class GroundTruthEvaluator:
    """Scores a synthetic SAE against its source's known dictionary (module doc)."""

    name = "groundtruth"
    needs: frozenset[str] = frozenset()
    Config = GroundTruthConfig
    metrics = METRICS

    def preflight(self, cfg: EvalConfig) -> None:
        raise SaebenchError(
            "groundtruth scores SAEs trained on a synthetic source, which have no language model: run "
            "`saebench groundtruth --sae DIR` instead of `saebench run`"
        )

    def run(self, ctx: EvalContext, cfg: EvalConfig) -> EvalOutput:
        assert isinstance(cfg, GroundTruthConfig)
        from saebench.probes.geometry import decoder_directions
        from saebench.probes.groundtruth import cosines, matched_abs_cos, split_merge
        from saebench.synthetic import source_of

        t0 = time.perf_counter()
        source = source_of(ctx.sae)
        if source is None:
            raise SaebenchError(
                f"SAE {ctx.sae_name} was not trained on a synthetic source (its config has no 'synthetic' record); "
                "groundtruth scores only SAEs from `saebench synthetic zoo`"
            )
        if int(ctx.sae.d_in) != source.d:
            raise SaebenchError(f"SAE {ctx.sae_name} has d_in={ctx.sae.d_in} but its synthetic source has d={source.d}")
        fp = source.cfg.fingerprint()
        n, m = source.n_features, int(ctx.sae.d_sae)
        dec, dec_source = decoder_directions(ctx.sae)
        feats = source.features
        cos = cosines(dec, feats)  # [m, N]
        matched = matched_abs_cos(cos)
        best_cos, best_latent = cos.max(0)  # per feature
        recovered = best_cos >= cfg.recovery_cos
        per_feature, per_latent = split_merge(cos, cfg.split_cos)
        proj = dec.double() @ feats.double().T  # [m, N]: d_j · f_i in model units
        t_geom = time.perf_counter() - t0

        t0 = time.perf_counter()
        parent = source.parent
        kids = (parent >= 0).nonzero().squeeze(1)
        p_lat = best_latent[parent[kids]]  # parent's latent, per child
        parents = parent[kids].unique()
        fires = torch.zeros(n, dtype=torch.float64)
        true_mag = torch.zeros(n, dtype=torch.float64)
        got_mag = torch.zeros(n, dtype=torch.float64)
        latent_fires = torch.zeros(m, dtype=torch.float64)
        child_miss = torch.zeros(kids.numel(), dtype=torch.float64)
        alone = torch.zeros(n, dtype=torch.float64)  # per parent: fires with no child
        alone_miss = torch.zeros(n, dtype=torch.float64)
        mean_x = (source.firing_prob() * source.magnitude_mean.double()) @ feats.double()
        blocks: dict[str, list[float]] = {"l0_sum": [], "tokens": [], "sq_err": [], "sq_dev": []}
        rows_r = torch.arange(n)
        for bt in source.batches(cfg.n_tokens, cfg.batch_size, "eval"):
            with torch.no_grad():
                z = ctx.sae.encode(bt.x).float()
                xhat = ctx.sae.decode(z).float()
            if not bool(torch.isfinite(z).all()):
                raise SaebenchError(f"SAE {ctx.sae_name} produced NaN/Inf latents on the synthetic eval stream")
            on = z > 0
            f_on = bt.acts > 0
            latent_fires += on.sum(0).double()
            fires += f_on.sum(0).double()
            true_mag += bt.acts.sum(0).double()
            # contribution of each feature's best latent along the feature: a_j (d_j · f_i)
            got_mag += (z[:, best_latent].double() * proj[best_latent, rows_r] * f_on).sum(0)
            child_on = f_on[:, kids]
            p_silent = ~on[:, p_lat]
            child_miss += (child_on & p_silent).sum(0).double()
            any_child = torch.zeros(f_on.shape).index_add_(1, parent[kids], child_on.float()) > 0
            par_alone = f_on[:, parents] & ~any_child[:, parents]
            alone[parents] += par_alone.sum(0).double()
            alone_miss[parents] += (par_alone & ~on[:, best_latent[parents]]).sum(0).double()
            err = (bt.x - xhat).double().pow(2).sum(1)
            dev = (bt.x.double() - mean_x).pow(2).sum(1)
            l0 = on.sum(1).double()
            for s in range(0, bt.x.shape[0], cfg.block_tokens):
                blocks["l0_sum"].append(float(l0[s : s + cfg.block_tokens].sum()))
                blocks["tokens"].append(float(min(cfg.block_tokens, bt.x.shape[0] - s)))
                blocks["sq_err"].append(float(err[s : s + cfg.block_tokens].sum()))
                blocks["sq_dev"].append(float(dev[s : s + cfg.block_tokens].sum()))
        t_stream = time.perf_counter() - t0

        def num(v: float) -> float | None:
            return None if not math.isfinite(v) else round(v, 8)

        child_fires = fires[kids]
        scored = child_fires >= cfg.min_fires
        absorption = child_miss / child_fires.clamp_min(1)
        miss_alone = alone_miss / alone.clamp_min(1)
        ratio = got_mag / true_mag.clamp_min(1e-12)
        ratio_ok = recovered & (fires >= cfg.min_fires)
        feature = Samples(
            "feature",
            [f"{fp}:f{i}" for i in range(n)],
            {
                "matched_cos": [num(float(v)) for v in matched],
                "recovered": [int(v) for v in recovered],
                "split": [int(v >= 2) for v in per_feature],
                "magnitude_ratio": [num(float(ratio[i])) if ratio_ok[i] else None for i in range(n)],
            },
        )
        live = latent_fires > 0
        latent = Samples(
            "latent",
            [ctx.latent_id(j) for j in range(m)],
            {
                "dead": [int(not v) for v in live],
                "merged": [int(per_latent[j] >= 2) if live[j] else None for j in range(m)],
            },
        )
        child_ids = [f"{fp}:c{int(c)}" for c, ok in zip(kids, scored, strict=True) if ok]
        child = Samples(
            "child",
            child_ids,
            {
                "absorption": [num(float(a)) for a, ok in zip(absorption, scored, strict=True) if ok],
                "parent_miss_alone": [
                    num(float(miss_alone[parent[c]])) for c, ok in zip(kids, scored, strict=True) if ok
                ],
            },
        )
        n_blocks = len(blocks["tokens"])
        block = Samples("block", [f"{fp}:eval{cfg.n_tokens}:b{i}" for i in range(n_blocks)], dict(blocks))
        samples = {"feature": feature, "latent": latent, "block": block}
        if child_ids:
            samples["child"] = child
        else:
            ctx.notes.append(f"groundtruth: no child feature fired {cfg.min_fires} times; raise n_tokens")
        metrics: dict[str, Any] = {
            "n_features": n,
            "n_recovered": int(recovered.sum()),
            "n_split": int((per_feature >= 2).sum()),
            "n_merged": int(((per_latent >= 2) & live).sum()),
            "n_dead": int((~live).sum()),
            "n_children_scored": len(child_ids),
            "d_sae": m,
        }
        details = {
            "source": source.record(),
            "decoder_source": dec_source,
            "eval_stream": {"stream": "eval", "n_tokens": cfg.n_tokens, "batch_size": cfg.batch_size},
            "best_cos_histogram": torch.histc(best_cos, bins=10, min=0, max=1).long().tolist(),
            "children": [
                {
                    "child": int(c),
                    "parent": int(parent[c]),
                    "parent_latent": int(p_lat[i]),
                    "parent_latent_cos": round(float(best_cos[parent[c]]), 4),
                    "fires": int(child_fires[i]),
                    "absorption": round(float(absorption[i]), 4),
                    "parent_miss_alone": round(float(miss_alone[parent[c]]), 4),
                }
                for i, c in enumerate(kids.tolist())
            ],
            "best_latent": best_latent.tolist(),
            "latents_per_feature": per_feature.tolist(),
            "best_cos": [round(float(v), 4) for v in best_cos],
        }
        return EvalOutput(metrics, details, samples=samples, timing={"geometry_s": t_geom, "stream_s": t_stream})
