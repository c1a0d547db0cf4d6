"""Spurious-correlation removal (SCR) and targeted probe perturbation (TPP): the math.

SAEBench (Karvonen et al. 2025, "SAEBench: A Comprehensive Benchmark for Sparse Autoencoders in
Dictionary Learning"; the SCR metric follows Marks et al. 2024, "Sparse Feature Circuits", SHIFT)
measures whether ablating a few SAE latents removes one concept from a linear probe's input and
leaves the others. Everything here follows SAEBench 0.6.0's ``evals/scr_and_tpp/main.py``:

- probes read the **mean-pooled** hook activation of an example, ``x̄ = mean_t x_t`` over its
  real tokens (BOS and padding excluded), and predict class 1 where ``w·x̄ + b > 0``;
- **node effects** of latent i for a probe ``(w, b)`` trained on a set with positives P and
  negatives N: ``Δ_i = mean_{e∈P} z̄_ei - mean_{e∈N} z̄_ei`` (z̄: mean-pooled latents),
  ``effect_i = Δ_i · (w · W_dec[i])``; SCR takes ``|effect_i|``; TPP clamps ``Δ_i ≥ 0`` first and
  keeps the sign (:func:`node_effects`);
- **selection**: the top ``N`` effects among ``k = min(N, #non-zero effects)`` (:func:`top_n_mask`;
  SAEBench's ``select_top_n_features``: ``torch.topk(effects, k)``; ties go to the lower index);
- **ablation**: zero the selected latents on every token and keep the SAE's error term,
  ``x'_t = decode(z_t with S zeroed) + (x_t - decode(z_t)) = x_t - [decode(z_t) - decode(z_t|S=0)]``,
  then mean-pool. For an affine decoder the probe logit moves by ``-Σ_{i∈S} z̄_i u_i`` with
  ``u = ∂(w·decode(z))/∂z`` (:func:`decoder_directions` checks affinity on real tokens and
  :func:`ablated_logits_linear` applies it); otherwise every token is decoded twice per ablation
  set (:func:`ablated_shifts_exact`). Both give SAEBench's number;
- **SCR** (:func:`scr_scores`): three probes on a dataset with two binary attributes, the
  *intended* one (SAEBench's "professor / nurse") and the *spurious* one ("male / female"), plus
  a *biased* probe trained where the two coincide ("male_professor / female_nurse"). Direction 1
  ablates the spurious probe's top-N latents and scores the biased probe on intended-attribute
  data, direction 2 the converse: ``scr_dirK = (A_abl - A_bias) / (A_clean - A_bias)`` where
  ``A_bias`` is the biased probe's clean accuracy on that data and ``A_clean`` the matching
  single-attribute probe's (0 where ``A_clean - A_bias < 0.001``); ``scr_metric`` is direction 1
  when the biased probe is worse on intended data than on spurious data (it learned the spurious
  attribute), direction 2 when it is better, undefined when equal;
- **TPP** (:func:`tpp_scores`): one-vs-rest probes for the classes of a dataset; ablating class
  c's top-N latents should hurt probe c (``intended = A_c - A_c|abl``) and not the others
  (``unintended = mean_{c'≠c} (A_c' - A_c'|abl)``); ``tpp_total = intended - unintended``.

The probes themselves are fit here with :func:`saebench.probes.ksparse.fit_cv` (L2, C chosen by
validation AUC on train only) instead of SAEBench's AdamW loop whose epoch is picked by *test*
accuracy; ``docs/scr_tpp.md`` lists this and the other deliberate differences.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from saebench.errors import SaebenchError


@dataclass
class LinearProbe:
    """``predict 1 where w·x + b > 0`` on raw (un-standardized) pooled activations."""

    w: torch.Tensor  # [d] float64
    b: float
    c: float = 1.0  # the inverse L2 strength chosen by CV

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return x.double() @ self.w + self.b


def fit_probe(x_train: torch.Tensor, y_train: torch.Tensor, seed: int, cs: tuple[float, ...]) -> LinearProbe:
    """L2 logistic probe, C by validation AUC on train only (:func:`saebench.probes.ksparse.fit_cv`)."""
    from saebench.probes.ksparse import fit_cv

    f = fit_cv(x_train, y_train, cs=cs, seed=seed)
    return LinearProbe(f.w, f.b, f.c)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """SAEBench's ``test_probe_gpu``: mean of ``(logit > 0) == y``."""
    return float(((logits > 0).long() == y.long()).double().mean())


def node_effects(z_pos_mean: torch.Tensor, z_neg_mean: torch.Tensor, dot: torch.Tensor, scr: bool) -> torch.Tensor:
    """SAEBench's ``get_effects_per_class_precomputed_acts`` (see module doc), float32."""
    diff = (z_pos_mean - z_neg_mean).float()
    if not scr:
        diff = diff.clamp(min=0.0)
    eff = diff * dot.float()
    return eff.abs() if scr else eff


def top_n_mask(effects: torch.Tensor, n: int) -> torch.Tensor:
    """Boolean mask of the top ``min(n, #non-zero)`` effects (SAEBench's ``select_top_n_features``)."""
    if n > effects.numel():
        raise SaebenchError(f"scr/tpp: cannot ablate {n} latents of an SAE with {effects.numel()}; lower n_values")
    k = min(n, int((effects != 0).sum()))
    mask = torch.zeros(effects.numel(), dtype=torch.bool)
    if k > 0:
        mask[torch.argsort(effects, descending=True, stable=True)[:k]] = True
    return mask


def decoder_directions(
    sae: Any,
    z_sample: torch.Tensor,
    probe_w: torch.Tensor,
    rtol: float = 1e-4,
) -> tuple[torch.Tensor | None, str]:
    """``U [d_sae, P]``: column p is ``∂(w_p · decode(z))/∂z`` when ``decode`` is affine in z.

    ``z_sample`` are latents of real tokens (their encode call must be the SAE's last, for SAEs
    whose decode uses per-token statistics of the encode). Affinity is checked two ways on the
    sample: the gradient is the same on every token, and zeroing a random half of the latents
    moves ``w·decode(z)`` by exactly ``(removed z) · u``. Returns ``(None, reason)`` otherwise.
    """
    w = probe_w.to(z_sample.device, torch.float64)
    z = z_sample.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            proj = sae.decode(z).double() @ w  # [m, P]
            n_p = w.shape[1]
            grads = [torch.autograd.grad(proj[:, p].sum(), z, retain_graph=p + 1 < n_p)[0] for p in range(n_p)]
    except (RuntimeError, TypeError, AttributeError) as exc:
        return None, f"decode is not differentiable ({type(exc).__name__})"
    g = torch.stack(grads).double()  # [P, m, d_sae]
    u = g[:, 0]  # [P, d_sae]
    scale = u.abs().amax().clamp_min(1e-30)
    if float((g - u[:, None]).abs().amax()) > rtol * float(scale):
        return None, "the decoder's gradient differs between tokens (not affine in the latents)"
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        drop = torch.rand(z.shape, generator=gen) < 0.5
        kept = z.detach().masked_fill(drop.to(z.device), 0.0)
        moved = (sae.decode(z.detach()).double() - sae.decode(kept).double()) @ w  # [m, P]
        predicted = (z.detach().double() - kept.double()) @ u.T
    tol = rtol * float(moved.abs().amax().clamp_min(1e-12)) + 1e-6
    if float((moved - predicted).abs().amax()) > tol:
        return None, "zeroing latents does not move the decoder output linearly (not affine in the latents)"
    return u.T.contiguous().cpu(), "linear"


def ablated_logits_linear(
    zbar: torch.Tensor, base_logits: torch.Tensor, u: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Probe logits after ablating ``mask`` on every token, for an affine decoder:
    ``base - z̄[:, S] @ U[S]`` (``zbar [n, d_sae]``, ``base_logits [n, P]``, ``u [d_sae, P]``)."""
    if not bool(mask.any()):
        return base_logits.clone()
    return base_logits - zbar[:, mask].double() @ u[mask].double()


def ablated_shifts_exact(
    acts: torch.Tensor,
    lengths: torch.Tensor,
    encode: Callable[[torch.Tensor], torch.Tensor],
    decode: Callable[[torch.Tensor], torch.Tensor],
    probe_w: torch.Tensor,
    masks: torch.Tensor,
    token_chunk: int = 1024,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``[M, n, P]``: ``w_p · mean_t [decode(z_t) - decode(z_t with masks[j] zeroed)]`` per example,
    decoding every token once plus once per mask (any decoder; SAEBench's own procedure).
    ``acts`` are the examples' tokens back to back, ``lengths`` their counts."""
    n = lengths.numel()
    seg = torch.repeat_interleave(torch.arange(n), lengths)
    w = probe_w.double()
    out = torch.zeros(masks.shape[0], n, w.shape[1], dtype=torch.float64)
    with torch.no_grad():
        for s in range(0, acts.shape[0], token_chunk):
            x = acts[s : s + token_chunk].to(device)
            z = encode(x)
            base = decode(z).double().cpu()
            for j in range(masks.shape[0]):
                if not bool(masks[j].any()):
                    continue
                ablated = decode(z.masked_fill(masks[j].to(z.device), 0.0)).double().cpu()
                out[j].index_add_(0, seg[s : s + token_chunk], (base - ablated) @ w)
    return out / lengths.clamp_min(1).double()[None, :, None]


def scr_scores(
    clean: dict[str, float],
    ablated: dict[str, dict[int, float]],
) -> dict[str, float | None]:
    """SAEBench's ``get_scr_plotting_dict``.

    ``clean``: ``intended`` (intended probe on intended data), ``spurious`` (spurious probe on
    spurious data), ``biased_on_intended``, ``biased_on_spurious`` (the biased probe's clean
    accuracies). ``ablated[dir][N]``: the biased probe's accuracy after ablating the top-N
    latents: ``dir1`` ablates the spurious probe's latents and reads intended data, ``dir2`` the
    converse. Returns ``scr_dir1_threshold_N``, ``scr_dir2_threshold_N`` and ``scr_metric_threshold_N``.
    """
    out: dict[str, float | None] = {}
    d1, d2 = clean["biased_on_intended"], clean["biased_on_spurious"]
    for key, clean_acc, original in (
        ("dir1", clean["intended"], d1),
        ("dir2", clean["spurious"], d2),
    ):
        for n, changed in ablated[key].items():
            score = 0.0 if (clean_acc - original) < 0.001 else (changed - original) / (clean_acc - original)
            out[f"scr_{key}_threshold_{n}"] = score
    for n in ablated["dir1"]:
        out[f"scr_metric_threshold_{n}"] = (
            out[f"scr_dir1_threshold_{n}"] if d1 < d2 else out[f"scr_dir2_threshold_{n}"] if d1 > d2 else None
        )
    return out


def tpp_scores(clean: dict[str, float], ablated: dict[str, dict[int, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """SAEBench's ``create_tpp_plotting_dict``, per class.

    ``clean[c]``: probe c's clean accuracy on class c's test data; ``ablated[c][N][c']``: probe
    c''s accuracy on its own data after ablating class c's top-N latents.
    """
    per_class: dict[str, dict[str, float]] = {}
    for c, by_n in ablated.items():
        row: dict[str, float] = {}
        for n, accs in by_n.items():
            intended = clean[c] - accs[c]
            others = [clean[o] - accs[o] for o in clean if o != c]
            unintended = sum(others) / len(others)
            row[f"tpp_threshold_{n}_total_metric"] = intended - unintended
            row[f"tpp_threshold_{n}_intended_diff_only"] = intended
            row[f"tpp_threshold_{n}_unintended_diff_only"] = unintended
        per_class[c] = row
    return per_class


def token_rows(acts: torch.Tensor, lengths: torch.Tensor, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens of examples ``ids`` (back to back) and their lengths, from all examples' ``acts``."""
    starts = lengths.cumsum(0) - lengths
    idx = torch.cat([torch.arange(int(starts[i]), int(starts[i] + lengths[i])) for i in ids])
    return acts[idx], lengths[torch.as_tensor(ids)]


class SaeAblation:
    """One SAE on one dataset's examples: pooled latents, node-effect directions and probe logits
    after latent ablations, by the linear shortcut when the decoder is affine (checked) or by
    decoding every token (``exact``). ``probe_w [d_in, P]`` and ``probe_b [P]`` are the probes."""

    def __init__(
        self,
        sae: Any,
        encode: Callable[[torch.Tensor], torch.Tensor],
        acts: torch.Tensor,
        lengths: torch.Tensor,
        xbar: torch.Tensor,
        probe_w: torch.Tensor,
        probe_b: torch.Tensor,
        path: str = "auto",
        token_chunk: int = 1024,
        device: torch.device | str = "cpu",
        masks: torch.Tensor | None = None,
    ) -> None:
        from saebench.probes.sparse_probing import pool

        self.sae, self.encode, self.acts, self.lengths = sae, encode, acts, lengths
        self.w, self.b = probe_w.double(), probe_b.double()
        self.token_chunk, self.device = token_chunk, device
        self.pad_counts: torch.Tensor | None = None
        self.z_pad: torch.Tensor | None = None
        if masks is None:
            self.zbar = pool(acts, lengths, "mean", encode, token_chunk, device)  # [n, d_sae] float32
            self.zbar_ablated = self.zbar
        else:  # SAEBench's rows (module doc): its pool, and its ablation of the masked positions too
            from saebench.probes.saebench_probes import pool_mean

            self.zbar = pool_mean(acts, masks, fn=encode, device=device)
            with torch.no_grad():
                self.z_pad = encode(torch.zeros(1, acts.shape[1], dtype=acts.dtype, device=device)).float().cpu()[0]
            self.pad_counts = (masks.shape[1] - masks.sum(dim=1)).float()
            self.zbar_ablated = self.zbar + (self.pad_counts / lengths.float())[:, None] * self.z_pad[None]
        self.base = xbar.double() @ self.w + self.b  # [n, P] clean probe logits
        sample = acts[: min(64, acts.shape[0])].to(device)
        with torch.no_grad():
            z_s = encode(sample)
        u, why = decoder_directions(sae, z_s, self.w)
        self.u = u
        self.path = "linear" if (u is not None and path == "auto") else "exact"
        self.reason = why if u is None else ("forced by ablation=exact" if path == "exact" else "decoder is affine")
        w_dec = getattr(sae, "W_dec", None)
        d_sae = self.zbar.shape[1]
        if isinstance(w_dec, torch.Tensor) and tuple(w_dec.shape) == (d_sae, self.w.shape[0]):
            self.dots = w_dec.detach().double().cpu() @ self.w  # SAEBench: probe weight · W_dec rows
            self.dots_from = "W_dec"
        elif u is not None:
            self.dots = u.double()
            self.dots_from = "decode gradient"
        else:
            with torch.enable_grad():
                z = z_s.detach().clone().requires_grad_(True)
                proj = sae.decode(z).double() @ self.w.to(z.device)
                cols = [
                    torch.autograd.grad(proj[:, p].sum(), z, retain_graph=True)[0].double().mean(0)
                    for p in range(self.w.shape[1])
                ]
            self.dots = torch.stack(cols, 1).cpu()
            self.dots_from = "decode gradient averaged over tokens"

    def effects(self, pos: list[int], neg: list[int], p: int, scr: bool) -> torch.Tensor:
        """Node effects of every latent for probe ``p`` trained on ``pos`` vs ``neg`` (module doc)."""
        zp = self.zbar[torch.as_tensor(pos)].float().mean(0)
        zn = self.zbar[torch.as_tensor(neg)].float().mean(0)
        return node_effects(zp, zn, self.dots[:, p], scr)

    def ablated_logits(self, ids: list[int], masks: torch.Tensor) -> torch.Tensor:
        """``[M, len(ids), P]`` probe logits on examples ``ids`` after each mask's ablation."""
        idx = torch.as_tensor(ids)
        base = self.base[idx]
        if self.path == "linear":
            assert self.u is not None
            return torch.stack([ablated_logits_linear(self.zbar_ablated[idx], base, self.u, m) for m in masks])
        rows, lens = token_rows(self.acts, self.lengths, ids)
        shifts = ablated_shifts_exact(
            rows, lens, self.encode, self.sae.decode, self.w, masks, self.token_chunk, self.device
        )
        if self.z_pad is not None and self.pad_counts is not None:  # SAEBench ablates masked positions too
            z0 = self.z_pad.to(self.device)[None]
            with torch.no_grad():
                pad = torch.stack(
                    [
                        (
                            self.sae.decode(z0).double()
                            - self.sae.decode(z0.masked_fill(m.to(z0.device), 0.0)).double()
                        ).cpu()[0]
                        @ self.w
                        for m in masks
                    ]
                )  # [M, P]
            shifts = shifts + (self.pad_counts[idx] / self.lengths[idx].float()).double()[None, :, None] * pad[:, None]
        return base[None] - shifts
