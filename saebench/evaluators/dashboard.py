"""``--evals dashboard``: what a latent's dashboard shows, stored in a result for the web board.

For the latents that ``n2g`` and ``autointerp`` sample for this SAE (their own public selection
functions, :func:`saebench.evaluators.n2g.sample_latents` and
:func:`saebench.evaluators.autointerp.sample_latents`, at the run's profile and seed, so the latent
ids coincide with theirs; a run that changed their sample settings with ``--set n2g.X=...`` passes the
same to ``n2g_settings`` / ``autointerp_settings``), or an explicit ``latents`` list, store per latent:

- **top activating contexts**: the ``n_contexts`` largest activations on n2g's token set (the run's
  contexts first, grown to n2g's ``n_tokens``; the prefix states are the cached ones), one per
  non-overlapping window of ``left`` tokens before and ``right`` after the maximum (windows of one
  context never overlap, so five near-identical shifts of one phrase do not fill the list; the BOS
  is never shown), as token strings and this latent's activation at each token;
- **an activation histogram**: ``n_bins`` equal bins from 0 to the latent's maximum on that token
  set, counting the positions where it fires (activation > 0; zeros are ``n_positions - n_fire``);
- **promoted and suppressed output tokens** (the logit lens of the decoder row): the decoder row
  ``d_i = decode(e_i) - decode(0)`` (protocol members only: exact ``W_dec[i]`` for a linear
  decoder) times the final norm's elementwise gain, times the unembedding ``W_U``; the
  ``n_logit_tokens`` largest and smallest entries. The norm's 1/RMS scale is left out (one
  positive number per position: it rescales every logit alike and changes no ranking, and it
  belongs to the whole residual stream, not to the latent), as is the unembedding bias (the same
  for every latent); a LayerNorm model's centring is applied (it is linear). This is the direct
  path from the hook to the logits, the usual logit-lens reading (:meth:`SubjectModel.logit_lens`;
  transformer-lens folds the gain into ``W_U`` the same way); later layers are not run.

The result carries no headline metric (nothing here ranks SAEs): the markdown board is unchanged
by it, and the web board's latent pages show it next to n2g's patterns and autointerp's
explanation, joined by latent id. Cost: one firing-count pass per sampler (n2g's example contexts,
autointerp's token set) and one encode pass over n2g's token set, all over cached prefix states;
docs/web.md has the measured times and sizes.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import torch
from pydantic import field_validator

from saebench.errors import SaebenchError
from saebench.evaluators import autointerp, n2g
from saebench.evaluators.base import EvalConfig, EvalContext, EvalOutput, Metric
from saebench.pipeline import ActivationPipeline


class DashboardConfig(EvalConfig):
    """Settings of ``--evals dashboard``; the latents are n2g's and autointerp's at the run's profile."""

    latents: list[int] | None = None  # explicit latent ids instead of n2g's and autointerp's samples
    n2g_settings: dict[str, Any] = {}  # n2g settings a run changed from the profile's (so the samples coincide)
    autointerp_settings: dict[str, Any] = {}  # likewise for autointerp
    n_contexts: int = 5  # top activating contexts per latent (non-overlapping windows)
    left: int = 10  # tokens shown before the activating one
    right: int = 3  # tokens shown after it
    n_bins: int = 16  # histogram bins from 0 to the latent's maximum
    n_logit_tokens: int = 10  # promoted and suppressed output tokens each

    @field_validator("latents", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        """``--set dashboard.latents=3,17`` arrives as a string: split it on commas."""
        if isinstance(v, str):
            return [int(p) for p in v.split(",") if p.strip()]
        return v

    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": {"n_contexts": 5},
        "standard": {"n_contexts": 10},
        "paper": {"n_contexts": 10},
    }


METRICS = (
    Metric("n_latents", "latents recorded (the union of n2g's and autointerp's samples, or the explicit list)"),
    Metric("n_latents_n2g", "of them sampled by n2g"),
    Metric("n_latents_autointerp", "of them sampled by autointerp"),
    Metric("n_latents_silent", "recorded latents that never fire on the scanned token set (no context, no histogram)"),
    Metric("n_tokens_scanned", "positions scanned for contexts and histograms (BOS excluded)"),
)


def _sig(v: float) -> float | int:
    """4 significant digits (0 as the integer 0): the page shows 3, and the result stays compact."""
    x = float(f"{float(v):.4g}")
    return 0 if x == 0 else x


def scan(pipe: ActivationPipeline, sae: Any, latents: torch.Tensor) -> tuple[list[torch.Tensor], int]:
    """Every firing (activation > 0) of ``latents`` on the pipeline's token set, per latent as a
    ``[m, 3]`` float64 tensor of (context, position, activation) sorted by activation descending
    (ties: earlier first), and the number of positions scanned. One streamed encode pass: memory is
    one batch of latents plus the firings of the chosen latents, never ``[tokens x d_sae]``."""
    lat = latents.reshape(-1)
    parts: list[torch.Tensor] = []
    n_pos = 0
    for idx, z in pipe.encode_seqs(sae, None):
        a = z[..., lat.to(z.device)].float().cpu()  # [b, T-1, L]: position p + 1
        n_pos += a.shape[0] * a.shape[1]
        nz = (a > 0).nonzero()  # [m, 3] (row, position - 1, latent)
        parts.append(
            torch.stack(
                [nz[:, 2].double(), idx[nz[:, 0]].double(), (nz[:, 1] + 1).double(), a[nz[:, 0], nz[:, 1], nz[:, 2]]],
                1,
            )
        )
    allf = torch.cat(parts) if parts else torch.empty(0, 4, dtype=torch.float64)
    out = []
    for li in range(lat.numel()):
        rows = allf[allf[:, 0] == li, 1:]
        order = rows[:, 2].argsort(descending=True, stable=True)
        out.append(rows[order])
    return out, n_pos


def top_windows(fires: torch.Tensor, k: int, left: int, right: int, ctx_len: int) -> list[tuple[int, int, int, int]]:
    """Up to ``k`` (context, position, first, last) windows around the largest firings, in order,
    no two overlapping within a context; windows start after the BOS and end inside the context."""
    taken: dict[int, list[tuple[int, int]]] = {}
    out = []
    for s, p, _ in fires.tolist():
        if len(out) >= k:
            break
        s, p = int(s), int(p)
        a, b = max(1, p - left), min(ctx_len - 1, p + right)
        spans = taken.setdefault(s, [])
        if any(a <= y and x <= b for x, y in spans):
            continue
        spans.append((a, b))
        out.append((s, p, a, b))
    return out


def histogram(values: torch.Tensor, n_bins: int) -> dict[str, list[Any]]:
    """``n_bins`` equal bins from 0 to the largest value (the largest falls in the last bin)."""
    top = float(values.max()) if values.numel() else 0.0
    if top <= 0:
        return {"edges": [], "counts": []}
    counts = torch.histc(values.double(), bins=n_bins, min=0.0, max=top)
    edges = torch.linspace(0.0, top, n_bins + 1)
    return {"edges": [_sig(e) for e in edges.tolist()], "counts": [int(c) for c in counts.tolist()]}


def decoder_rows(sae: Any, latents: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``decode(e_i) - decode(0)`` for each latent: its decoder direction from the protocol's
    ``decode`` alone (exactly ``W_dec[i]`` for a linear decoder), float32 ``[L, d_in]``."""
    z = torch.zeros(latents.numel(), int(sae.d_sae), dtype=like.dtype, device=like.device)
    z[torch.arange(latents.numel()), latents.to(like.device)] = 1
    with torch.no_grad():
        return (sae.decode(z) - sae.decode(torch.zeros_like(z))).float().cpu()


class DashboardEvaluator:
    """``--evals dashboard``: contexts, histogram and output tokens of n2g's and autointerp's latents."""

    name = "dashboard"
    needs = frozenset({"states"})
    Config = DashboardConfig
    metrics = METRICS

    def run(self, ctx: EvalContext, cfg: EvalConfig) -> EvalOutput:
        assert isinstance(cfg, DashboardConfig)
        if cfg.n_contexts < 0 or cfg.left < 0 or cfg.right < 0 or cfg.n_bins < 1 or cfg.n_logit_tokens < 0:
            raise SaebenchError(
                "dashboard: need n_contexts, left, right, n_logit_tokens >= 0 and n_bins >= 1; fix the --set values"
            )
        sae, model = ctx.sae, ctx.model
        n2g_cfg = n2g.N2GConfig.for_profile(ctx.profile, **cfg.n2g_settings)
        assert isinstance(n2g_cfg, n2g.N2GConfig)
        t0 = time.perf_counter()
        by: dict[int, list[str]] = {}
        if cfg.latents is not None:
            bad = [i for i in cfg.latents if not 0 <= i < int(sae.d_sae)]
            if bad:
                raise SaebenchError(f"dashboard.latents {bad} are outside 0..{int(sae.d_sae) - 1}; pass valid indices")
            for i in cfg.latents:
                by[int(i)] = []
            pipe = n2g.token_pipeline(ctx, n2g_cfg.n_tokens)
        else:
            pick = n2g.sample_latents(ctx, n2g_cfg)
            pipe = pick.pipe
            ai_cfg = autointerp.AutointerpConfig.for_profile(ctx.profile, **cfg.autointerp_settings)
            assert isinstance(ai_cfg, autointerp.AutointerpConfig)
            ai_latents, _ = autointerp.sample_latents(ctx, ai_cfg)
            for i in pick.latents.tolist():
                by.setdefault(int(i), []).append("n2g")
            for i in ai_latents:
                by.setdefault(int(i), []).append("autointerp")
        latents = torch.tensor(sorted(by), dtype=torch.long)
        t_choose = time.perf_counter() - t0

        t0 = time.perf_counter()
        fires, n_pos = scan(pipe, sae, latents) if latents.numel() else ([], 0)
        t_scan = time.perf_counter() - t0

        t0 = time.perf_counter()
        vocab: dict[int, str] = {}

        def text(t: int) -> str:
            if t not in vocab:
                vocab[t] = model.tokenizer.decode([t])
            return vocab[t]

        lens_note = None
        logits = None
        if latents.numel() and cfg.n_logit_tokens > 0:
            if int(sae.d_in) != model.d_model:
                lens_note = (
                    f"dashboard: the SAE reads {int(sae.d_in)}-wide activations, not the {model.d_model}-wide residual "
                    "stream: no promoted/suppressed tokens"
                )
                ctx.notes.append(lens_note)
            else:
                params = list(sae.parameters()) if hasattr(sae, "parameters") else []
                like = params[0].detach() if params else torch.zeros(1, device=model.device)
                logits = model.logit_lens(decoder_rows(sae, latents, like))
        toks, ctx_len = pipe.tokens.tokens, pipe.tokens.ctx_len
        rows = []
        for li, lat in enumerate(latents.tolist()):
            f = fires[li]
            row: dict[str, Any] = {
                "latent": lat,
                "sampled_by": by[lat],
                "n_fire": int(f.shape[0]),
                "density": _sig(f.shape[0] / max(1, n_pos)),
                "max_act": _sig(f[0, 2]) if f.shape[0] else 0.0,
            }
            row["histogram"] = histogram(f[:, 2], cfg.n_bins)
            contexts = []
            for s, p, a, b in top_windows(f, cfg.n_contexts, cfg.left, cfg.right, ctx_len):
                acts: list[float | int] = [0] * (b - a + 1)
                inside = f[(f[:, 0] == s) & (f[:, 1] >= a) & (f[:, 1] <= b)]
                for _, q, v in inside.tolist():
                    acts[int(q) - a] = _sig(v)
                contexts.append(
                    {"seq": s, "pos": p, "tokens": [text(t) for t in toks[s, a : b + 1].tolist()], "acts": acts}
                )
            row["contexts"] = contexts
            if logits is not None:
                k = min(cfg.n_logit_tokens, logits.shape[1])
                for key, largest in (("promoted", True), ("suppressed", False)):
                    v, i = logits[li].topk(k, largest=largest)
                    row[key] = {"tokens": [text(t) for t in i.tolist()], "logits": [_sig(x) for x in v.tolist()]}
            rows.append(row)
        t_build = time.perf_counter() - t0

        metrics = {
            "n_latents": len(rows),
            "n_latents_n2g": sum("n2g" in by[r["latent"]] for r in rows),
            "n_latents_autointerp": sum("autointerp" in by[r["latent"]] for r in rows),
            "n_latents_silent": sum(r["n_fire"] == 0 for r in rows),
            "n_tokens_scanned": n_pos,
        }
        details = {
            "selection": "explicit list" if cfg.latents is not None else f"n2g and autointerp at profile {ctx.profile}",
            "token_set": {
                "contexts": int(toks.shape[0]),
                "ctx_len": int(ctx_len),
                "tokens": int(pipe.tokens.n_tokens),
                "positions_scanned": n_pos,
            },
            "window": {"left": cfg.left, "right": cfg.right},
            "histogram_rule": f"{cfg.n_bins} equal bins from 0 to the latent's maximum; positions where it fires",
            "logit_lens": lens_note
            or "decoder row (decode(e_i) - decode(0)) times the final norm's gain, times W_U; the norm's 1/RMS scale "
            "(changes no ranking) and the unembedding bias (not the latent's) left out",
            "latents": rows,
        }
        timing = {"choose_s": t_choose, "scan_s": t_scan, "build_s": t_build}
        return EvalOutput(metrics, details, timing=timing)
