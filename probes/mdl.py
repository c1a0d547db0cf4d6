"""Description length of SAE codes (SAEBench's ``mdl`` evaluation; Ayonrinde et al. 2024, MDL-SAEs).

SAEBench 0.6.0 (``sae_bench/evals/mdl/main.py``) codes each latent ``f`` of every token in two
parts: *whether* it fires (a Bernoulli with ``p_f = P(z_f > 0)``) and *its value* (a histogram of
``num_bins`` equal bins on ``[0, M_f]``). The description length per token is, in bits,

    DL = Σ_f [ H_b(p_f) + p_f · H_f ],   H_b(p) = -p log2 p - (1-p) log2 (1-p),
    H_f = -Σ_b q_fb log2 q_fb,           q_fb = c_fb / Σ_b c_fb

with ``c_fb`` the count of tokens whose ``z_f`` lies in bin ``b`` of ``torch.histogram`` with edges
``linspace(0, M_f, num_bins + 1)`` (bins ``[e_b, e_b+1)``, the last one closed; values outside
``[0, M_f]`` are not counted). As in SAEBench: the histogram takes *every* token, so the zeros of
a latent that did not fire fill the first bin; probabilities equal to 0 or 1 are left out of the
sum; ``M_f = max(100, max_t z_f)`` (SAEBench starts its running maximum at 100).

SAEBench also checks that the codes, quantised to bin midpoints, still reconstruct: each code
(after ``TopK(k)``, keeping the k largest per token, ReLU) goes to the midpoint of its bin
(``bucketize`` on the edges, indices clamped to ``1..num_bins``; so a zero goes to the first bin's
midpoint ``M_f / (2·num_bins)``), the SAE decodes them, and
``mse_loss = sqrt(mean((x̂_q - x)²)) / d_in``; ``within_threshold`` is ``mse_loss < threshold``.

This module holds the arithmetic; :class:`SparseCodes` keeps the non-zero codes of a token sample
grouped by document so that every quantity also has its leave-one-document-out value (for a
jackknife interval).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

#: SAEBench's running maximum starts at 100: no latent's histogram range is narrower than [0, 100]
MAX_FLOOR = 100.0


def bin_edges(max_f: torch.Tensor, num_bins: int) -> torch.Tensor:
    """``[F, num_bins + 1]`` float32 edges: ``torch.linspace(0, M_f, num_bins + 1)`` per latent (one
    call per latent, as SAEBench, so the edges are the same floats)."""
    return torch.stack([torch.linspace(0.0, float(m), num_bins + 1) for m in max_f.float().tolist()])


def histogram_bins(values: torch.Tensor, feats: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Bin of each ``values[i]`` in latent ``feats[i]``'s histogram, ``-1`` where ``torch.histogram``
    would not count it (outside ``[e_0, e_last]``): ``[e_b, e_b+1)``, the last bin closed."""
    out = torch.empty(values.shape, dtype=torch.long)
    nb = edges.shape[1] - 1
    for s in range(0, values.numel(), 1 << 20):
        v, e = values[s : s + (1 << 20)].float(), edges[feats[s : s + (1 << 20)]]
        b = (v.unsqueeze(1) >= e).sum(1) - 1  # edges <= v, minus one
        b = torch.where(v == e[:, -1], nb - 1, b)
        out[s : s + (1 << 20)] = torch.where((v < e[:, 0]) | (v > e[:, -1]), -1, b)
    return out


def quantize(z: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Each code replaced by the midpoint of its bin (``bucketize``, indices clamped to 1..num_bins)."""
    nb = edges.shape[1] - 1
    edges = edges.to(z.device)
    idx = torch.searchsorted(edges.contiguous(), z.T.float().contiguous(), right=False)
    idx = idx.clamp(1, nb) - 1
    mids = 0.5 * (edges[:, :-1] + edges[:, 1:])
    return torch.gather(mids, 1, idx).T.to(z.dtype)


def topk_codes(z: torch.Tensor, k: int | None) -> torch.Tensor:
    """SAELens's ``TopK(k)`` on codes (the k largest per token, ReLU, others zero); ``None``: unchanged."""
    if k is None:
        return z
    vals, idx = torch.topk(z, k=min(int(k), z.shape[-1]), dim=-1, sorted=False)
    return torch.zeros_like(z).scatter_(-1, idx, vals.relu())


def entropy_bits(probs: np.ndarray) -> np.ndarray:
    """Row-wise ``-Σ p log2 p`` over the entries strictly between 0 and 1."""
    p = np.where((probs > 0) & (probs < 1), probs, 1.0)
    return -(np.where((probs > 0) & (probs < 1), probs, 0.0) * np.log2(p)).sum(-1)


def description_length(counts: np.ndarray, fire: np.ndarray, n_tokens: float) -> float:
    """``Σ_f H_b(p_f) + p_f H_f`` (bits per token) from per-latent bin counts ``[F, nb]`` (all tokens
    in range, zeros included), firing counts ``[F]`` (``z > 0``) and the token count."""
    p = fire / max(n_tokens, 1.0)
    hb = entropy_bits(np.stack([p, 1.0 - p], axis=-1))
    tot = counts.sum(-1, keepdims=True)
    hf = entropy_bits(counts / np.where(tot > 0, tot, 1.0))
    return float((hb + p * hf).sum())


@dataclass
class SparseCodes:
    """The non-zero codes of a token sample with each token's document (index into ``docs``)."""

    d_sae: int
    docs: list[str] = field(default_factory=list)
    _doc_index: dict[str, int] = field(default_factory=dict)
    _tok_doc: list[torch.Tensor] = field(default_factory=list)
    _ent_doc: list[torch.Tensor] = field(default_factory=list)
    _ent_feat: list[torch.Tensor] = field(default_factory=list)
    _ent_val: list[torch.Tensor] = field(default_factory=list)
    max_code: torch.Tensor | None = None

    def doc(self, label: str) -> int:
        return self._doc_index.setdefault(label, len(self._doc_index))

    def add(self, z: torch.Tensor, doc: torch.Tensor) -> None:
        """Codes ``z [n, F]`` of n tokens and their document indices ``doc [n]``."""
        z = z.detach().float().cpu()
        rows, feats = torch.nonzero(z, as_tuple=True)
        self._tok_doc.append(doc.to(torch.int32))
        self._ent_doc.append(doc[rows].to(torch.int32))
        self._ent_feat.append(feats.to(torch.int32))
        self._ent_val.append(z[rows, feats])
        m = z.max(0).values if z.shape[0] else torch.full((self.d_sae,), -torch.inf)
        self.max_code = m if self.max_code is None else torch.maximum(self.max_code, m)

    def finish(self) -> None:
        self.docs = list(self._doc_index)
        for name in ("_tok_doc", "_ent_doc", "_ent_feat", "_ent_val"):
            setattr(self, name, [torch.cat(getattr(self, name))] if getattr(self, name) else [])

    @property
    def n_docs(self) -> int:
        return len(self._doc_index)

    def tokens_per_doc(self) -> np.ndarray:
        """Tokens per document (float64, indexed like ``docs``)."""
        tok = self._tok_doc[0].long().numpy() if self._tok_doc else np.zeros(0, dtype=np.int64)
        return np.bincount(tok, minlength=self.n_docs).astype(np.float64)

    def hist_max(self) -> torch.Tensor:
        """``M_f = max(100, max_t z_f)`` (float32), SAEBench's histogram range."""
        m = self.max_code if self.max_code is not None else torch.zeros(self.d_sae)
        return torch.clamp(m.float(), min=MAX_FLOOR)

    def dl(self, edges: torch.Tensor) -> tuple[float, np.ndarray, dict[str, float]]:
        """Description length (bits per token) on these tokens, its leave-one-document-out values, and
        summary counts (tokens, mean firing latents per token)."""
        nb, n_docs, f_ = edges.shape[1] - 1, self.n_docs, self.d_sae
        tok_doc, ent_doc = self._tok_doc[0].long(), self._ent_doc[0].long()
        feat, val = self._ent_feat[0].long(), self._ent_val[0]
        tok_per_doc = np.bincount(tok_doc.numpy(), minlength=n_docs).astype(np.float64)
        n_tok = float(tok_per_doc.sum())
        b = histogram_bins(val, feat, edges)
        pos = val > 0
        fire_doc = np.zeros((n_docs, f_))
        np.add.at(fire_doc, (ent_doc[pos].numpy(), feat[pos].numpy()), 1.0)
        nnz_doc = np.zeros((n_docs, f_))
        np.add.at(nnz_doc, (ent_doc.numpy(), feat.numpy()), 1.0)
        ok = b >= 0
        keys = (ent_doc[ok] * f_ + feat[ok]) * nb + b[ok]
        uniq, cnt = torch.unique(keys, return_counts=True)
        u_doc = (uniq // (f_ * nb)).numpy()
        u_fb = (uniq % (f_ * nb)).numpy()
        cnt = cnt.numpy().astype(np.float64)

        total = np.bincount(u_fb, weights=cnt, minlength=f_ * nb).astype(np.float64)
        starts = np.searchsorted(u_doc, np.arange(n_docs + 1))  # unique keys are sorted: doc-major
        nnz_all, fire_all = nnz_doc.sum(0), fire_doc.sum(0)

        def counts_without(d: int | None) -> tuple[np.ndarray, np.ndarray, float]:
            c = total.copy()
            if d is not None:
                sl = slice(starts[d], starts[d + 1])
                np.subtract.at(c, u_fb[sl], cnt[sl])
            c = c.reshape(f_, nb)
            tok = n_tok - (0.0 if d is None else tok_per_doc[d])
            nnz = nnz_all - (0.0 if d is None else nnz_doc[d])
            fire = fire_all - (0.0 if d is None else fire_doc[d])
            c[:, 0] += tok - nnz  # the zeros: in range, in the first bin
            return c, fire, tok

        value = description_length(*counts_without(None))
        loo = np.array([description_length(*counts_without(d)) for d in range(n_docs)])
        return value, loo, {"n_tokens": n_tok, "l0": float(fire_doc.sum()) / max(n_tok, 1.0)}
