"""``--evals mdl``: SAEBench's description length of the codes (MDL-SAEs, Ayonrinde et al. 2024).

For each ``num_bins`` in ``num_bins_values`` (SAEBench 0.6.0's ``MDLEvalConfig`` defaults: 4, 6, 8,
12, 16, 32) the codes of every kept token of the token set are described in bits per token
(:mod:`probes.mdl`):

    DL = Σ_f [ H_b(p_f) + p_f · H_f ]

``p_f`` the fraction of tokens on which latent f fires (z > 0), ``H_b`` the binary entropy and
``H_f`` the entropy of f's values in a ``num_bins``-bin histogram on ``[0, max(100, max z_f)]``
(zeros included in the first bin). Reported per setting under SAEBench's record names
(``eval_results`` rows ``{num_bins, k, description_length, within_threshold, mse_loss}``) as
flat metrics:

- ``description_length_bins{B}``: DL at B bins (SAEBench's ``description_length``; it does not
  depend on k, which SAEBench passes to its DL function and never uses);
- ``mse_loss_bins{B}_k{K}``: ``sqrt(mean((x̂_q - x)²)) / d_in`` with the codes TopK(K)-ed and
  quantised to bin midpoints (SAEBench's ``mse_loss``), ``within_threshold_bins{B}_k{K}`` whether
  it is below ``mse_epsilon_threshold`` (SAEBench's ``within_threshold``); K ``None`` (``knone``)
  skips the TopK, as SAEBench's command-line entry does;
- ``description_length_min_viable`` (our name): SAEBench's ``pick_minimum_viable`` rule (present
  but unused in its code): the smallest DL among the settings within the threshold, else the
  smallest DL; ``details["selected"]`` names the setting.

The codes are read through the shared pipeline: the prefix states of the token set (cached, shared
with every evaluator at the hook), the hook activation at every position but 0 whose token is not
the BOS id, encoded by the SAE (SAEBench encodes its activation store's batches with special
tokens filtered out). Two passes over the states: codes first (the histogram range needs their
maximum), then the quantised reconstructions. Differences from SAEBench's sampling: SAEBench
takes the maximum, the MSE check and the DL each on a separate buffer of its activation store
(64 batches of 64 × 128 tokens); we use the one token set for all three, so no token lies outside
its histogram range (where every code is below 100 the range is [0, 100] either way).

Intervals: a delete-one-document jackknife (contexts of one document are not independent) of each
DL and MSE, covering the value on a fresh token sample of the same size; ``within_threshold`` is a
yes/no and has none.
"""

from __future__ import annotations

import math
import time
from typing import Any, ClassVar

import numpy as np
import torch

from saebench.errors import SaebenchError
from saebench.evaluators.base import EvalConfig, EvalContext, EvalOutput, Metric
from saebench.probes.mdl import SparseCodes, bin_edges, quantize, topk_codes
from saebench.stats import jackknife_interval

NUM_BINS = [4, 6, 8, 12, 16, 32]
K_VALUES: list[int | None] = [16, 24, 32]
TARGET = "expected value on a fresh token sample of the same size from the same corpus"


class MdlConfig(EvalConfig):
    """SAEBench 0.6.0's ``MDLEvalConfig`` defaults (its sampling fields do not apply: the tokens are
    the run's token set)."""

    num_bins_values: list[int] = NUM_BINS
    k_values: list[int | None] = K_VALUES
    mse_epsilon_threshold: float = 0.01
    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}


def ktag(k: int | None) -> str:
    return "knone" if k is None else f"k{int(k)}"


def dl_name(nb: int) -> str:
    return f"description_length_bins{nb}"


def mse_name(nb: int, k: int | None) -> str:
    return f"mse_loss_bins{nb}_{ktag(k)}"


def thr_name(nb: int, k: int | None) -> str:
    return f"within_threshold_bins{nb}_{ktag(k)}"


METRICS = (
    (Metric("description_length_min_viable", "smallest DL (bits/token) among settings within the MSE threshold, "
            "else the smallest (SAEBench's pick_minimum_viable)", "down", True, "bits", "DL", 0.0,
            min_rel_effect=0.01),)
    + tuple(Metric(dl_name(b), f"description length of the codes at {b} bins, bits per token (SAEBench)", "down",
                   False, "bits", "", 0.0, min_rel_effect=0.01) for b in NUM_BINS)
    + tuple(m for b in NUM_BINS for k in K_VALUES for m in (
        Metric(mse_name(b, k), f"sqrt(MSE)/d_in with TopK({k}) codes quantised to {b} bins (SAEBench)", "down"),
        Metric(thr_name(b, k), f"mse_loss_bins{b}_{ktag(k)} below mse_epsilon_threshold (SAEBench)"),
    ))
    + (Metric("n_tokens", "kept tokens the codes were counted on"),)
)  # fmt: skip


def check(cfg: MdlConfig) -> None:
    if not cfg.num_bins_values or min(cfg.num_bins_values) < 1:
        raise SaebenchError(
            "mdl: num_bins_values must be a non-empty list of integers >= 1; fix --set mdl.num_bins_values"
        )
    if not cfg.k_values or any(k is not None and k < 1 for k in cfg.k_values):
        raise SaebenchError("mdl: k_values must be a non-empty list of integers >= 1 (or null for no TopK); fix --set")
    if not math.isfinite(cfg.mse_epsilon_threshold) or cfg.mse_epsilon_threshold <= 0:
        raise SaebenchError("mdl: mse_epsilon_threshold must be a positive number; fix --set mdl.mse_epsilon_threshold")


def kept_batches(ctx: EvalContext) -> Any:
    """``(x [n, d], doc labels [n])`` per batch of contexts: hook activations at the kept positions."""
    pipe = ctx.pipeline
    states, toks, bos = pipe.states(), pipe.tokens.tokens, pipe.model.bos_id
    labels = pipe.tokens.doc_ids if pipe.tokens.doc_ids is not None else pipe.tokens.seq_ids()
    for s in range(0, toks.shape[0], pipe.batch_size):
        acts = pipe.acts_batch(states[s : s + pipe.batch_size])[:, 1:]
        keep = toks[s : s + pipe.batch_size, 1:] != bos
        rows = keep.nonzero()[:, 0] + s
        yield acts[keep.to(acts.device)], [labels[int(r)] for r in rows]


def doc_jackknife(value: float, loo: np.ndarray, n_tok: float) -> Any:
    """The delete-one-document jackknife interval of a value from its leave-one-out values."""
    return jackknife_interval(value, loo, int(n_tok), "token", "document", TARGET, bounds=(0.0, math.inf))


def encode(sae: Any, x: torch.Tensor) -> torch.Tensor:
    """The SAE's codes for ``x [n, d_in]``, checked: ``[n, d_sae]`` and finite."""
    with torch.no_grad():
        z = sae.encode(x)
    if z.shape != (x.shape[0], int(sae.d_sae)):
        raise SaebenchError(f"SAE encode gave shape {list(z.shape)}; expected [{x.shape[0]}, {sae.d_sae}]")
    if not bool(torch.isfinite(z).all()):
        raise SaebenchError("SAE produced NaN/Inf latents; check its weights")
    return z


class MdlEvaluator:
    """``--evals mdl``: SAEBench's description length of the codes (see module doc)."""

    name = "mdl"
    #: refused for a transcoder (reads one hook, writes another) before the model loads (runner)
    transcoder_refusal = "its description length is measured against the reconstruction of the SAE's own input"
    needs = frozenset({"states"})
    Config = MdlConfig
    metrics = METRICS

    def preflight(self, cfg: EvalConfig) -> None:
        assert isinstance(cfg, MdlConfig)
        check(cfg)

    def run(self, ctx: EvalContext, cfg: EvalConfig) -> EvalOutput:
        assert isinstance(cfg, MdlConfig)
        check(cfg)
        sae, d_sae, d_in = ctx.sae, int(ctx.sae.d_sae), int(ctx.sae.d_in)
        t0 = time.perf_counter()
        codes = SparseCodes(d_sae)
        for x, labels in kept_batches(ctx):
            codes.add(encode(sae, x), torch.tensor([codes.doc(lab) for lab in labels], dtype=torch.long))
        codes.finish()
        if codes.n_docs == 0:
            raise SaebenchError("mdl: the token set has no kept token (every position is the BOS id); raise --tokens")
        hist_max = codes.hist_max()
        nbs, ks = list(dict.fromkeys(cfg.num_bins_values)), list(dict.fromkeys(cfg.k_values))
        edges = {nb: bin_edges(hist_max, nb) for nb in nbs}
        t_codes = time.perf_counter() - t0

        t0 = time.perf_counter()
        metrics: dict[str, Any] = {}
        uncertainty: dict[str, Any] = {}
        n_tok = 0.0
        for nb in nbs:
            value, loo, info = codes.dl(edges[nb])
            n_tok = info["n_tokens"]
            metrics[dl_name(nb)] = value
            uncertainty[dl_name(nb)] = doc_jackknife(value, loo, n_tok)
        t_dl = time.perf_counter() - t0

        t0 = time.perf_counter()
        combos = [(nb, k) for nb in nbs for k in ks]
        sq = np.zeros((len(combos), codes.n_docs))
        for x, labels in kept_batches(ctx):
            doc = torch.tensor([codes.doc(lab) for lab in labels], dtype=torch.long)
            z = encode(sae, x)
            for k in ks:
                zk = topk_codes(z, k)
                for nb in nbs:
                    with torch.no_grad():
                        err = ((sae.decode(quantize(zk, edges[nb])).float() - x.float()) ** 2).double().sum(-1)
                    sq[combos.index((nb, k))] += np.bincount(
                        doc.numpy(), weights=err.cpu().numpy(), minlength=codes.n_docs
                    )
        t_mse = time.perf_counter() - t0
        tok_doc = codes.tokens_per_doc()
        rows = []

        def mse_of(s: float, n: float) -> float:
            return math.sqrt(s / max(n * d_in, 1.0)) / d_in

        for i, (nb, k) in enumerate(combos):
            value = mse_of(float(sq[i].sum()), n_tok)
            loo = np.array([mse_of(float(sq[i].sum() - sq[i][d]), n_tok - tok_doc[d]) for d in range(codes.n_docs)])
            metrics[mse_name(nb, k)] = value
            uncertainty[mse_name(nb, k)] = doc_jackknife(value, loo, n_tok)
            within = bool(value < cfg.mse_epsilon_threshold)
            metrics[thr_name(nb, k)] = within
            rows.append({"num_bins": nb, "bins": [], "k": k, "description_length": metrics[dl_name(nb)],
                         "within_threshold": within, "mse_loss": value})  # fmt: skip
        viable = [r for r in rows if r["within_threshold"]] or rows
        best = min(viable, key=lambda r: r["description_length"])
        metrics["description_length_min_viable"] = best["description_length"]
        uncertainty["description_length_min_viable"] = uncertainty[dl_name(best["num_bins"])]
        metrics["n_tokens"] = int(n_tok)
        details = {
            "eval_results": rows,  # SAEBench's record layout (its `bins` are emptied on output too)
            "selected": {
                "num_bins": best["num_bins"],
                "k": best["k"],
                "any_within_threshold": any(r["within_threshold"] for r in rows),
            },
            "hist_max": {"floor": 100.0, "latents_above_floor": int((hist_max > 100.0).sum())},
            "n_documents": codes.n_docs,
            "unit": "bits per token",
        }
        return EvalOutput(metrics, details, uncertainty=uncertainty,
                          timing={"codes_s": t_codes, "dl_s": t_dl, "mse_check_s": t_mse})  # fmt: skip
