"""``--evals ksweep``: a TopK SAE evaluated at test-time sparsity k' ≠ k (Gao et al. 2024, sec. 5.3).

Gao et al. train TopK SAEs at one k and ask how they behave when the number of active latents is
changed at test time (their Multi-TopK trains for several k at once so that larger k' keeps
improving the reconstruction). For a TopK or BatchTopK SAE (any SAE with ``k`` and
``encode_pre``), each variant keeps its pre-activations and replaces the activation by
``TopK_{k'}(ReLU(pre))`` per token (for BatchTopK too: its per-token inference form at k'),
decoding with the same decoder. All variants are spliced in one pass of the shared splice loop:
the clean side shared with core (cached: no clean suffix of its own), one spliced suffix per k'.

Per k': FVU, ΔCE (nats), KL(clean ‖ spliced), L0, CE-loss score (the core definitions, same
special-position conventions; see :mod:`saebench.evaluators.core`). Reported as curves
(``details["curves"]``: FVU and ΔCE against k', plotted on the board) and as metrics at fixed
multiples of the trained k (``fvu_k_div2``, ``fvu_k_x2``, ``fvu_k_x4``, the same for ΔCE), each with
a bootstrap interval over contexts. An SAE without a k gets undefined metrics and a note.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from saebench.evaluators.base import EvalConfig, EvalContext, EvalOutput, Metric
from saebench.evaluators.core import core_samples
from saebench.pipeline.splice import splice_stats
from saebench.sae import copy_transcoder_members, output_width, topk_relu
from saebench.stats import Ratio, Samples, estimate

MULTIPLES = {"k_div2": 0.5, "k": 1.0, "k_x2": 2.0, "k_x4": 4.0}


class KSweepConfig(EvalConfig):
    """``ks``: the k' values of the curve (the multiples of the trained k are always added)."""

    ks: list[int] = [8, 16, 32, 64, 128]
    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "standard": {"ks": [4, 8, 16, 32, 64, 128, 256]},
        "paper": {"ks": [4, 8, 16, 32, 64, 128, 256, 512]},
    }


class AtK:
    """An SAE's decoder with per-token TopK_{k'} on its pre-activations."""

    def __init__(self, sae: Any, k: int) -> None:
        self.sae, self.k = sae, int(k)
        self.d_in, self.d_sae = int(sae.d_in), int(sae.d_sae)
        copy_transcoder_members(sae, self)  # a transcoder's view writes its output hook

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return topk_relu(self.sae.encode_pre(x), min(self.k, self.d_sae))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.sae.decode(z)


def _col(tag: str, col: str) -> str:
    return f"{tag}.{col}"


def _fvu(tag: str) -> Ratio:
    return Ratio("sequence", {_col(tag, "sq_err"): 1.0}, {_col(tag, "var"): 1.0})


def _dce(tag: str) -> Ratio:
    return Ratio("sequence", {_col(tag, "ce_spliced"): 1.0, _col(tag, "ce_clean"): -1.0}, {_col(tag, "n_ce"): 1.0})


METRICS = tuple(
    m
    for tag, mult in MULTIPLES.items()
    if tag != "k"
    for m in (
        Metric(f"fvu_{tag}", f"FVU with TopK at k' = {mult:g}·k", "down", tag == "k_x2", "", f"FVU@{mult:g}k", 0.002,
               _fvu(tag)),
        Metric(f"delta_ce_{tag}", f"ΔCE with TopK at k' = {mult:g}·k", "down", False, "nats", "", 0.005, _dce(tag)),
    )
) + (Metric("k", "the SAE's trained k"),)  # fmt: skip


def trained_k(sae: Any) -> int | None:
    """The k a TopK-like SAE was trained with (None when it has none or no pre-activations)."""
    k = getattr(sae, "k", None)
    if k is None:
        k = getattr(getattr(sae, "cfg", None), "k", None)
    return int(k) if k and callable(getattr(sae, "encode_pre", None)) else None


class KSweepEvaluator:
    """``--evals ksweep``: test-time sparsity sweep of a TopK SAE (see module doc)."""

    name = "ksweep"
    needs = frozenset({"states"})
    Config = KSweepConfig
    metrics = METRICS

    def run(self, ctx: EvalContext, cfg: EvalConfig) -> EvalOutput:
        assert isinstance(cfg, KSweepConfig)
        k = trained_k(ctx.sae)
        if k is None:
            ctx.notes.append("ksweep: the SAE has no k and encode_pre (not TopK-like): nothing to sweep")
            return EvalOutput({m.name: None for m in METRICS})
        d_sae = int(ctx.sae.d_sae)
        tags = {tag: max(1, min(d_sae, round(mult * k))) for tag, mult in MULTIPLES.items()}
        ks = sorted({min(int(x), d_sae) for x in cfg.ks if int(x) >= 1} | set(tags.values()))
        variants = {f"k={kk}": AtK(ctx.sae, kk) for kk in ks}
        st = splice_stats(ctx.pipeline, variants)
        d_out = output_width(ctx.sae)  # the reconstructed activation's width (d_in for an SAE)
        per_k = {kk: core_samples(st[f"k={kk}"], d_out) for kk in ks}
        columns: dict[str, list[Any]] = {}
        for tag, kk in tags.items():
            columns.update({_col(tag, c): v for c, v in per_k[kk].columns.items()})
        first = per_k[ks[0]]
        samples = {"sequence": Samples("sequence", first.ids, columns, first.clusters, first.cluster_unit)}
        curve: dict[str, list[Any]] = {"k": ks, "fvu": [], "delta_ce": [], "kl": [], "l0": []}
        for kk in ks:
            one = {"sequence": per_k[kk]}
            curve["fvu"].append(estimate(Ratio("sequence", {"sq_err": 1.0}, {"var": 1.0}), one))
            curve["delta_ce"].append(estimate(Ratio("sequence", {"ce_spliced": 1.0, "ce_clean": -1.0},
                                                    {"n_ce": 1.0}), one))  # fmt: skip
            curve["kl"].append(estimate(Ratio("sequence", {"kl_spliced": 1.0}, {"n_kl": 1.0}), one))
            curve["l0"].append(estimate(Ratio("sequence", {"l0": 1.0}, {"n_rec": 1.0}), one))
        details = {
            "trained_k": k,
            "k_at": tags,
            "sweep": curve,
            "curves": {
                "fvu": {"x": ks, "y": curve["fvu"], "x_label": "test-time k'", "y_label": "FVU", "direction": "down"},
                "delta_ce": {"x": ks, "y": curve["delta_ce"], "x_label": "test-time k'", "y_label": "ΔCE (nats)",
                             "direction": "down"},
            },
        }  # fmt: skip
        spliced_s = sum(v.timing.get("spliced_s", 0.0) for v in st.values())
        return EvalOutput({"k": k}, details, samples=samples, timing={"spliced_s": spliced_s})
