"""``--evals splitting``: decoder geometry of one SAE, and how its latents map onto SAEs of other
widths at the same hook (feature splitting, Bricken et al. 2023, "Towards Monosemanticity";
novel vs reconstruction latents, Leask et al. 2024, "Stitching Sparse Autoencoders of Different
Sizes"; mean max cosine similarity, Sharkey et al. 2022, "Taking features out of superposition
with sparse autoencoders").

All quantities are per latent of the evaluated SAE (the sampling unit: ``ctx.latent_id(i)``), so
every metric is a mean over latents with a bootstrap interval. Cosines use decoder rows in model
units (``d_i = decode(e_i) - decode(0)``, :func:`saebench.probes.geometry.decoder_directions`).

Geometry (no other SAE needed; SAEBench's core "misc" metrics, same definitions):

- ``average_max_decoder_cosine_sim`` — mean over latents of ``max_{j≠i} cos(d_i, d_j)``;
- ``average_max_encoder_cosine_sim`` — the same for encoder directions (``W_enc`` columns);
- ``average_encoder_decoder_cosine_sim`` — mean of ``cos(e_i, d_i)`` (SAEBench's per-feature
  ``encoder_decoder_cosine_sim``, averaged).

Across widths (``--set splitting.reference='["zoo/topk-1152-k32","zoo/topk-4608-k32"]'``: SAE specs
at the same hook; the evaluated SAE itself is skipped when listed). The *parent* reference is the
widest one no wider than this SAE, the *child* reference the narrowest one no narrower (a
same-width reference, e.g. another seed, plays both roles). With ``τ = threshold`` (0.5: the
trough between the two modes of the max-cosine histogram across the zoo's TopK widths, see
docs/splitting.md):

- vs the parent P: ``mmcs_parent`` = mean over latents of ``max_p cos(d_i, p)`` (how well the
  narrower SAE already has each latent); ``novel_frac`` = fraction with that maximum below τ
  (latents the narrower SAE lacks: Leask et al.'s novel latents, for which low max decoder cosine
  to the smaller SAE is their cheap proxy);
- vs the child C: every child latent c is assigned to its nearest latent of this SAE,
  ``argmax_i cos(c, d_i)``, when that cosine is ≥ τ; ``children_per_latent`` = mean number of
  children, ``split_frac`` = fraction of latents with ≥ 2 children (the latent splits),
  ``absent_frac`` = fraction with none; ``mmcs_child`` = mean over latents of
  ``max_c cos(d_i, c)`` (Sharkey et al.'s MMCS of the smaller dictionary against the larger).

Oracle: a copy of the SAE with its latents permuted gives MMCS 1 both ways and no splits, no
novel and no absent latents. Memory: similarities are computed in ``[chunk, n]`` blocks of at most
``block_elements`` floats; no ``d_sae x d_sae`` matrix is built. No model pass is needed.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import torch
from pydantic import field_validator

from saebench.errors import SaebenchError
from saebench.evaluators.base import EvalConfig, EvalContext, EvalOutput, Metric
from saebench.stats import Samples, mean_of


class SplittingConfig(EvalConfig):
    """Settings of ``--evals splitting``."""

    reference: list[str] = []  # SAE specs at the same hook (other widths); [] = geometry only
    threshold: float = 0.5  # cosine at which a latent counts as matched (child / not novel)
    block_elements: int = 1 << 24  # floats per similarity block (memory ~4 bytes x this)
    n_report: int = 10  # split latents listed in details

    @field_validator("reference", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        """``--set splitting.reference=a,b`` arrives as a string: split it on commas."""
        return [p.strip() for p in v.split(",") if p.strip()] if isinstance(v, str) else v

    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}


def _m(name: str, meaning: str, direction: str = "", headline: bool = False, title: str = "") -> Metric:
    return Metric(name, meaning, direction, headline, "", title, 0.0, mean_of("latent", name))  # type: ignore[arg-type]


METRICS = (
    _m(
        "average_max_decoder_cosine_sim",
        "mean over latents of the largest cosine between its decoder row and any other latent's",
        headline=True,
        title="max dec cos",
    ),
    _m("average_max_encoder_cosine_sim", "mean over latents of the largest cosine between encoder directions"),
    _m("average_encoder_decoder_cosine_sim", "mean over latents of cos(encoder direction, decoder row)"),
    _m("mmcs_parent", "mean over latents of the max decoder cosine with the narrower reference SAE"),
    _m(
        "novel_frac",
        "fraction of latents whose max decoder cosine with the narrower reference is below the threshold",
        headline=True,
        title="novel",
    ),
    _m("mmcs_child", "mean over latents of the max decoder cosine with the wider reference SAE"),
    _m(
        "split_frac",
        "fraction of latents that 2 or more latents of the wider reference map onto (cos >= threshold)",
        headline=True,
        title="split",
    ),
    _m("children_per_latent", "mean number of wider-reference latents mapped onto each latent"),
    _m("absent_frac", "fraction of latents no wider-reference latent maps onto"),
)


def _histogram(v: torch.Tensor, bins: int = 10) -> dict[str, int]:
    """Counts of cosines in ``bins`` equal bins over [-1, 1] (keys are bin left edges), zero bins left out."""
    counts = torch.histc(v.float(), bins=2 * bins, min=-1.0, max=1.0)
    return {f"{-1 + 2 * k / (2 * bins):.1f}": int(c) for k, c in enumerate(counts.tolist()) if c}


def _round(t: torch.Tensor) -> list[float]:
    return [round(float(v), 6) for v in t]


class SplittingEvaluator:
    """``--evals splitting``: see module doc."""

    name = "splitting"
    needs: frozenset[str] = frozenset()
    Config = SplittingConfig
    metrics = METRICS

    def preflight(self, cfg: EvalConfig) -> None:
        assert isinstance(cfg, SplittingConfig)
        if not 0.0 < cfg.threshold <= 1.0 or cfg.block_elements < 1:
            raise SaebenchError("splitting: need 0 < threshold <= 1 and block_elements >= 1; fix the --set values")

    def run(self, ctx: EvalContext, cfg: EvalConfig) -> EvalOutput:
        assert isinstance(cfg, SplittingConfig)
        from saebench.probes.geometry import decoder_directions, encoder_directions, max_cos, row_cos, unit_rows

        self.preflight(cfg)
        t0 = time.perf_counter()
        sae, d_sae = ctx.sae, int(ctx.sae.d_sae)
        if d_sae < 2:
            raise SaebenchError(f"splitting needs an SAE with at least 2 latents, {ctx.sae_name} has {d_sae}")
        dec, dec_source = decoder_directions(sae)
        u = unit_rows(dec).to(ctx.model.device)  # similarity blocks run on the run's device
        cols: dict[str, list[Any]] = {}
        best, _ = max_cos(u, block_elements=cfg.block_elements)
        cols["average_max_decoder_cosine_sim"] = _round(best)
        enc = encoder_directions(sae)
        if enc is not None:
            cols["average_max_encoder_cosine_sim"] = _round(
                max_cos(unit_rows(enc).to(u.device), block_elements=cfg.block_elements)[0]
            )
            cols["average_encoder_decoder_cosine_sim"] = _round(row_cos(enc, dec.cpu()))
        else:
            ctx.notes.append("splitting: the SAE has no W_enc; encoder geometry is not reported")
        t_geom = time.perf_counter() - t0

        t0 = time.perf_counter()
        refs = [r for r in (_reference(ctx, spec) for spec in cfg.reference) if r is not None]
        parent = max((r for r in refs if r["d_sae"] <= d_sae), key=lambda r: r["d_sae"], default=None)
        child = min((r for r in refs if r["d_sae"] >= d_sae), key=lambda r: r["d_sae"], default=None)
        details: dict[str, Any] = {
            "decoder_source": dec_source,
            "threshold": cfg.threshold,
            "references": [
                {k: r[k] for k in ("spec", "name", "d_sae", "fingerprint", "decoder_source")}
                | {"role": " and ".join(x for x, y in (("parent", parent), ("child", child)) if y is r) or "unused"}
                for r in refs
            ],
        }
        if parent is not None:
            p_best, p_arg = max_cos(u, parent["unit"], cfg.block_elements)
            cols["mmcs_parent"] = _round(p_best)
            cols["novel_frac"] = [int(v) for v in (p_best < cfg.threshold)]
            details["parent"] = {
                "name": parent["name"],
                "d_sae": parent["d_sae"],
                "n_novel": int((p_best < cfg.threshold).sum()),
                "max_cos_histogram": _histogram(p_best),
            }
        if child is not None:
            c_best, _ = max_cos(u, child["unit"], cfg.block_elements)
            back, back_arg = max_cos(child["unit"].to(u.device), u, cfg.block_elements)  # child's nearest latent
            matched = back >= cfg.threshold
            n_children = torch.bincount(back_arg[matched], minlength=d_sae)
            cols["mmcs_child"] = _round(c_best)
            cols["children_per_latent"] = [int(v) for v in n_children]
            cols["split_frac"] = [int(v) for v in (n_children >= 2)]
            cols["absent_frac"] = [int(v) for v in (n_children == 0)]
            top = n_children.argsort(descending=True, stable=True)[: cfg.n_report]
            details["child"] = {
                "name": child["name"],
                "d_sae": child["d_sae"],
                "n_child_latents_matched": int(matched.sum()),
                "n_child_latents_unmatched": int((~matched).sum()),
                "child_max_cos_histogram": _histogram(back),
                "children_histogram": {str(k): int(v) for k, v in enumerate(torch.bincount(n_children).tolist()) if v},
                "most_split": [
                    {
                        "latent": int(i),
                        "n_children": int(n_children[i]),
                        "children": [int(c) for c in (matched & (back_arg == i)).nonzero().squeeze(1).tolist()],
                    }
                    for i in top
                    if int(n_children[i]) >= 2
                ],
            }
        if cfg.reference and parent is None and child is None:
            ctx.notes.append(
                "splitting: no usable reference SAE (all were this SAE itself); cross-width metrics omitted"
            )
        samples = Samples("latent", [ctx.latent_id(i) for i in range(d_sae)], cols)
        metrics: dict[str, Any] = {"d_sae": d_sae, "n_references": len(refs)}
        timing = {"geometry_s": t_geom, "cross_width_s": time.perf_counter() - t0}
        return EvalOutput(metrics, details, samples={"latent": samples}, timing=timing)


def _reference(ctx: EvalContext, spec: str) -> dict[str, Any] | None:
    """A reference SAE's unit decoder rows and identity, loaded once per hook (pipeline memo);
    None for the evaluated SAE itself. Refuses a reference of another width of input or hook."""
    from saebench.loading import load_sae
    from saebench.probes.geometry import decoder_directions, unit_rows

    def load() -> dict[str, Any]:
        ls = load_sae(spec)
        if int(ls.sae.d_in) != int(ctx.sae.d_in):
            raise SaebenchError(
                f"splitting reference {spec} has d_in={ls.sae.d_in} but the evaluated SAE has d_in={ctx.sae.d_in}; "
                "pass references trained at the same hook"
            )
        hook = ctx.pipeline.hook
        if ls.hook_name and ls.hook_name != hook:
            raise SaebenchError(
                f"splitting reference {spec} was trained at {ls.hook_name}, not {hook}; pass references from one hook"
            )
        dec, source = decoder_directions(ls.sae)
        return {
            "spec": spec,
            "name": ls.name,
            "d_sae": int(ls.sae.d_sae),
            "fingerprint": ls.fingerprint,
            "decoder_source": source,
            "unit": unit_rows(dec),
        }

    ref = ctx.pipeline.shared(f"splitting:reference:{spec}", load)
    if ref["fingerprint"] == ctx.fingerprint:
        return None
    return ref
