"""``--evals matryoshka``: each prefix of a Matryoshka SAE evaluated as an SAE of its own width.

A Matryoshka SAE (Bussmann, Nabeshima, Karvonen & Nanda 2025, "Learning Multi-Level Features with
Matryoshka SAEs"; Nabeshima 2024) is trained so that its first m latents, for each declared width
m_1 < ... < m_n, reconstruct the input on their own: the prefix is an SAE of width m. The trade-off
a researcher wants to see is how much reconstruction and downstream loss each smaller prefix gives
up. The prefix widths come from the SAE (``matryoshka_widths``: cfg.json's key, an attribute of a
Python SAE, or ``cfg.matryoshka_widths``; the SAELens and dictionary_learning loaders keep theirs);
the full width d_sae is always evaluated too.

The prefix-m SAE (:class:`Prefix`): ``encode`` is the SAE's own encoding restricted to latents
``[0, m)`` (the same selection: a thresholded BatchTopK or JumpReLU latent does not depend on the
others, so this equals an SAE built from the first m encoder columns and decoder rows; for a
per-token TopK encoding it is the full selection, masked, as in training), ``decode`` the SAE's
decoder with the other latents zero (b_dec + z[:, :m] W_dec[:m], then the SAE's own output
scaling). Every prefix is spliced in one pass of the shared splice loop: the clean side shared with
core (cached), one spliced suffix per prefix.

Per prefix: FVU, ΔCE (nats), KL(clean ‖ spliced), L0, and the fraction of the prefix's latents that
never fire (the core definitions and special-position conventions; see
:mod:`saebench.evaluators.core`). Reported as curves against the prefix width
(``details["curves"]``, plotted on the board) and as metrics at the smallest prefix with a
bootstrap interval over contexts (resampling source documents, as core): ``fvu_smallest``,
``delta_ce_smallest``, ``kl_smallest``, ``l0_smallest``, and the paired costs of using the smallest
prefix instead of the whole SAE (``fvu_cost_smallest``, ``delta_ce_cost_smallest``: the same
tokens, so the interval is on the difference itself). An SAE without prefix widths gets undefined
metrics and a note.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from saebench.errors import SaebenchError
from saebench.evaluators.base import EvalConfig, EvalContext, EvalOutput, Metric
from saebench.evaluators.core import core_samples
from saebench.pipeline.splice import splice_stats
from saebench.sae import check_prefix_widths, copy_transcoder_members, output_width
from saebench.stats import Ratio, Samples, estimate


class MatryoshkaConfig(EvalConfig):
    """No settings: the prefix widths are the SAE's own."""

    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}


class Prefix:
    """The first ``width`` latents of an SAE as an SAE of that width (see the module doc)."""

    def __init__(self, sae: Any, width: int) -> None:
        self.sae, self.width = sae, int(width)
        self.d_in, self.d_sae = int(sae.d_in), int(width)
        copy_transcoder_members(sae, self)  # a transcoder's prefix writes its output hook
        self.full = int(sae.d_sae)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z = self.sae.encode(x)
        return z if self.width == self.full else z[..., : self.width]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.width != self.full:
            z = torch.nn.functional.pad(z, (0, self.full - self.width))
        return self.sae.decode(z)


def prefix_widths(sae: Any) -> list[int] | None:
    """The SAE's declared prefix widths with d_sae appended when missing (None: not a Matryoshka
    SAE). A declared list that is not strictly increasing or exceeds d_sae is a one-line error."""
    widths = getattr(sae, "matryoshka_widths", None)
    if widths is None:
        widths = getattr(getattr(sae, "cfg", None), "matryoshka_widths", None)
    if widths is None:
        return None
    d_sae = int(sae.d_sae)
    try:
        out = check_prefix_widths(list(widths) if isinstance(widths, (list, tuple)) else widths, d_sae, "the SAE")
    except ValueError as exc:
        raise SaebenchError(str(exc)) from None
    return out if out[-1] == d_sae else [*out, d_sae]


def _col(tag: str, col: str) -> str:
    return f"{tag}.{col}"


S, F = "smallest", "full"
METRICS = (
    Metric("fvu_smallest", "FVU of the smallest prefix alone (an SAE of that width)", "down", True, "", "FVU@m₁",
           0.002, Ratio("sequence", {_col(S, "sq_err"): 1.0}, {_col(S, "var"): 1.0})),
    Metric("delta_ce_smallest", "ΔCE with the smallest prefix spliced in", "down", False, "nats", "", 0.005,
           Ratio("sequence", {_col(S, "ce_spliced"): 1.0, _col(S, "ce_clean"): -1.0}, {_col(S, "n_ce"): 1.0})),
    Metric("kl_smallest", "mean KL(clean ‖ spliced) with the smallest prefix", "down", False, "nats", "", 0.005,
           Ratio("sequence", {_col(S, "kl_spliced"): 1.0}, {_col(S, "n_kl"): 1.0})),
    Metric("l0_smallest", "mean non-zero latents per token within the smallest prefix", "", False, "latents", "",
           0.0, Ratio("sequence", {_col(S, "l0"): 1.0}, {_col(S, "n_rec"): 1.0})),
    Metric("fvu_cost_smallest", "FVU(smallest prefix) − FVU(full SAE), paired on the same tokens", "down", False, "",
           "", 0.002, Ratio("sequence", {_col(S, "sq_err"): 1.0, _col(F, "sq_err"): -1.0}, {_col(F, "var"): 1.0})),
    Metric("delta_ce_cost_smallest", "ΔCE(smallest prefix) − ΔCE(full SAE), paired on the same tokens", "down",
           False, "nats", "", 0.005,
           Ratio("sequence", {_col(S, "ce_spliced"): 1.0, _col(F, "ce_spliced"): -1.0}, {_col(F, "n_ce"): 1.0})),
    Metric("smallest_width", "width of the smallest declared prefix"),
    Metric("n_prefixes", "number of widths evaluated (the declared prefixes and d_sae)"),
)  # fmt: skip

_ONE = {
    "fvu": Ratio("sequence", {"sq_err": 1.0}, {"var": 1.0}),
    "delta_ce": Ratio("sequence", {"ce_spliced": 1.0, "ce_clean": -1.0}, {"n_ce": 1.0}),
    "kl": Ratio("sequence", {"kl_spliced": 1.0}, {"n_kl": 1.0}),
    "l0": Ratio("sequence", {"l0": 1.0}, {"n_rec": 1.0}),
}
_LABELS = {"fvu": "FVU", "delta_ce": "ΔCE (nats)", "l0": "L0 (latents per token)"}


class MatryoshkaEvaluator:
    """``--evals matryoshka``: the prefix sweep of a Matryoshka SAE (see module doc)."""

    name = "matryoshka"
    needs = frozenset({"states"})
    Config = MatryoshkaConfig
    metrics = METRICS

    def run(self, ctx: EvalContext, cfg: EvalConfig) -> EvalOutput:
        assert isinstance(cfg, MatryoshkaConfig)
        widths = prefix_widths(ctx.sae)
        if widths is None:
            ctx.notes.append(
                "matryoshka: the SAE declares no matryoshka_widths (not a Matryoshka SAE): nothing to sweep"
            )
            return EvalOutput({m.name: None for m in METRICS})
        st = splice_stats(ctx.pipeline, {f"m={w}": Prefix(ctx.sae, w) for w in widths})
        d_out = output_width(ctx.sae)  # the reconstructed activation's width (d_in for an SAE)
        per = {w: core_samples(st[f"m={w}"], d_out) for w in widths}
        columns: dict[str, list[Any]] = {}
        for tag, w in ((S, widths[0]), (F, widths[-1])):
            columns.update({_col(tag, c): v for c, v in per[w].columns.items()})
        first = per[widths[0]]
        samples = {"sequence": Samples("sequence", first.ids, columns, first.clusters, first.cluster_unit)}
        sweep: dict[str, list[Any]] = {"width": widths, **{k: [] for k in _ONE}, "dead_frac": []}
        for w in widths:
            for k, est in _ONE.items():
                sweep[k].append(estimate(est, {"sequence": per[w]}))
            sweep["dead_frac"].append(float((st[f"m={w}"].fire_count == 0).double().mean()))
        details = {
            "widths": widths,
            "sweep": sweep,
            "curves": {
                k: {"x": widths, "y": sweep[k], "x_label": "prefix width (latents)", "y_label": label,
                    "direction": "" if k == "l0" else "down", "reference": f"core.{k}"}
                for k, label in _LABELS.items()
            },
        }  # fmt: skip
        spliced_s = sum(v.timing.get("spliced_s", 0.0) for v in st.values())
        values = {"smallest_width": widths[0], "n_prefixes": len(widths)}
        return EvalOutput(values, details, samples=samples, timing={"spliced_s": spliced_s})
