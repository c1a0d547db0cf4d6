"""A synthetic subject with a known dictionary: activations built from true features.

Where the truth can be constructed, a metric can be checked against it (docs/groundtruth.md).
:class:`SyntheticSource` draws activations ``x = Σ_i a_i f_i (+ noise)`` from ``N`` true unit-norm
features ``f_i`` in ``d`` dimensions (``N`` well above ``d``: superposition), with

- **Zipf-like firing**: non-child feature of rank ``r`` fires independently with probability
  ``c · (r + 1)^-zipf_exponent``; ``c`` is set so that a token holds ``mean_l0`` firing features
  on average (children and correlated groups included, to first order);
- **hierarchies**: ``n_parents`` parent features (the most frequent ranks), each with
  ``children_per_parent`` children; a child fires *only when its parent fires*: when the parent
  fires, one of its children (uniformly, mutually exclusive) fires with probability
  ``child_prob``. This is the situation that produces feature absorption (Chanin et al. 2024);
- **correlated groups**: ``n_groups`` groups of ``group_size`` other features; with probability
  ``group_prob`` per token a group event makes each member fire (probability
  ``group_member_prob`` each) on top of its own independent firing;
- **magnitudes**: feature i's mean magnitude is drawn once, uniformly in
  ``[magnitude_low, magnitude_high]``; each firing is log-normal around it with coefficient of
  variation ``magnitude_cv`` (always positive);
- isotropic Gaussian **noise** of standard deviation ``noise_std`` per dimension.

Feature layout (indices): ``[0, n_parents)`` parents, then their children (parent ``p``'s are
``n_parents + p·children_per_parent + j``), then the independent features; groups are drawn
(seeded) among the independent ones. Directions are i.i.d. Gaussian, normalised (or an
orthonormal set when ``superposition=False``, which needs ``n_features <= d``).

Streaming: :meth:`SyntheticSource.batches` yields :class:`SyntheticBatch` es of at most
``batch_size`` tokens, each holding that batch's ``[B, N]`` feature magnitudes; no ``[tokens x N]``
matrix is ever built for the whole stream. A stream is a pure function of ``(config, stream name,
batch_size)``: the ``train`` and ``eval`` streams use different seeds derived from ``seed``.

Bad settings are refused in one line naming the setting (:class:`SaebenchError`) by
:meth:`SyntheticConfig.check`, before anything is allocated.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from saebench.errors import SaebenchError

#: the ``model_name`` and ``hook_name`` of SAEs trained on a synthetic source; their cfg.json
#: carries :meth:`SyntheticSource.record` under :data:`RECORD_KEY`
SYNTHETIC_MODEL = "saebench-synthetic"
SYNTHETIC_HOOK = "synthetic"
RECORD_KEY = "synthetic"
RECORD_KIND = "saebench.synthetic/1"
MAX_DICTIONARY_BYTES = 4 << 30  # the [N, d] float32 dictionary must fit comfortably in memory
STREAMS = ("train", "eval", "probe")  # SAE training, the groundtruth evaluator, validity tasks


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of a synthetic source (defaults: CPU-friendly, 1,024 features in 64 dimensions)."""

    d: int = 64  # activation width
    n_features: int = 1024  # true features N (superposition: N >> d)
    mean_l0: float = 5.0  # expected firing features per token
    zipf_exponent: float = 0.7  # firing probability of rank r ∝ (r + 1)^-zipf_exponent
    n_parents: int = 24  # hierarchies: parent features (the most frequent ranks)
    children_per_parent: int = 4  # children per parent, mutually exclusive
    child_prob: float = 0.8  # P(some child fires | parent fires)
    n_groups: int = 32  # correlated groups among the independent features
    group_size: int = 4
    group_prob: float = 0.005  # P(group event) per token and group
    group_member_prob: float = 0.8  # P(member fires | group event)
    magnitude_low: float = 0.5  # per-feature mean magnitude ~ U[low, high]
    magnitude_high: float = 2.0
    magnitude_cv: float = 0.25  # per-firing log-normal spread around the feature's mean
    noise_std: float = 0.0  # isotropic Gaussian noise per dimension
    superposition: bool = True  # False: orthonormal features, needs n_features <= d
    seed: int = 0

    @property
    def n_children(self) -> int:
        return self.n_parents * self.children_per_parent

    def check(self) -> None:
        """Refuse a setting that cannot be built, in one line naming it (nothing is allocated)."""

        def bad(name: str, why: str) -> SaebenchError:
            return SaebenchError(f"synthetic: {name}={getattr(self, name)!r} {why}")

        for name in ("d", "n_features"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise bad(name, "must be a positive integer")
        for name in ("n_parents", "children_per_parent", "n_groups", "group_size", "seed"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise bad(name, "must be a non-negative integer")
        if self.n_features * self.d * 4 > MAX_DICTIONARY_BYTES:
            raise bad("n_features", f"x d={self.d} makes a dictionary over {MAX_DICTIONARY_BYTES >> 30} GB; lower them")
        if self.superposition and self.d > self.n_features:
            raise bad("d", f"exceeds n_features={self.n_features}: superposition needs more features than dimensions")
        if not self.superposition and self.n_features > self.d:
            raise bad("n_features", f"exceeds d={self.d}: orthonormal features (superposition=false) need N <= d")
        if self.n_parents + self.n_children > self.n_features:
            raise bad(
                "children_per_parent",
                f"x n_parents={self.n_parents} gives {self.n_children} children, more than the "
                f"{self.n_features - self.n_parents} features left after the parents; lower them or raise n_features",
            )
        n_free = self.n_features - self.n_parents - self.n_children
        if self.n_groups * self.group_size > n_free:
            raise bad(
                "n_groups",
                f"x group_size={self.group_size} needs {self.n_groups * self.group_size} features, only {n_free} "
                "are neither parents nor children",
            )
        for name in ("child_prob", "group_prob", "group_member_prob"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 < v <= 1):
                raise bad(name, "is a probability: it must lie in (0, 1]")
        for name in ("mean_l0", "magnitude_low", "magnitude_high"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise bad(name, "must be a positive number")
        if self.magnitude_high < self.magnitude_low:
            raise bad("magnitude_high", f"is below magnitude_low={self.magnitude_low}")
        for name in ("zipf_exponent", "magnitude_cv", "noise_std"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise bad(name, "must be a non-negative number")
        top = self.top_probability()
        if not 0 < top <= 1:
            raise SaebenchError(
                f"synthetic: mean_l0={self.mean_l0} with zipf_exponent={self.zipf_exponent} puts the most frequent "
                f"feature's firing probability at {top:.3g}, outside (0, 1]; lower mean_l0 or zipf_exponent, or "
                "raise n_features"
            )

    def top_probability(self) -> float:
        """``c``: the firing probability of rank 0 implied by ``mean_l0`` (scalars only)."""
        n_free = self.n_features - self.n_parents - self.n_children
        ranks = self.n_parents + n_free
        weights = [(r + 1) ** -self.zipf_exponent for r in range(ranks)]
        per_c = sum(weights[: self.n_parents]) * (1 + self.child_prob) + sum(weights[self.n_parents :])
        group_part = self.n_groups * self.group_size * self.group_prob * self.group_member_prob
        return (self.mean_l0 - group_part) / per_c if per_c > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SyntheticConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise SaebenchError(
                f"synthetic: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
            )
        return cls(**data)

    def fingerprint(self) -> str:
        raw = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()[:16]


@dataclass
class SyntheticBatch:
    """One batch of a stream: activations ``x [B, d]`` and the true feature magnitudes
    ``acts [B, N]`` (0 where a feature is silent)."""

    x: torch.Tensor
    acts: torch.Tensor


def _seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(json.dumps(parts).encode()).digest()[:8], "little") % (2**63)


class SyntheticSource:
    """The known dictionary and the firing model of :class:`SyntheticConfig` (see the module doc)."""

    def __init__(self, cfg: SyntheticConfig | None = None) -> None:
        cfg = cfg or SyntheticConfig()
        cfg.check()
        self.cfg = cfg
        n, d, p, cpp = cfg.n_features, cfg.d, cfg.n_parents, cfg.children_per_parent
        gen = torch.Generator().manual_seed(_seed("dictionary", cfg.seed))
        if cfg.superposition:
            f = torch.randn(n, d, generator=gen)
            self.features = f / f.norm(dim=1, keepdim=True)
        else:
            q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen))
            self.features = q.T[:n].contiguous()
        n_child = cfg.n_children
        self.parent = torch.full((n,), -1, dtype=torch.long)
        if n_child:
            self.parent[p : p + n_child] = torch.arange(p).repeat_interleave(cpp)
        free = torch.arange(p + n_child, n)
        c = cfg.top_probability()
        rank = torch.zeros(n)
        rank[:p] = torch.arange(p, dtype=torch.float32)
        rank[free] = torch.arange(p, p + free.numel(), dtype=torch.float32)
        #: independent firing probability (0 for children: they fire through their parent)
        self.base_prob = (c * (rank + 1) ** -cfg.zipf_exponent).double()
        self.base_prob[p : p + n_child] = 0.0
        self.group = torch.full((n,), -1, dtype=torch.long)
        n_grouped = cfg.n_groups * cfg.group_size
        if n_grouped:
            members = free[torch.randperm(free.numel(), generator=gen)[:n_grouped]]
            self.group[members] = torch.arange(cfg.n_groups).repeat_interleave(cfg.group_size)
        self.magnitude_mean = cfg.magnitude_low + (cfg.magnitude_high - cfg.magnitude_low) * torch.rand(
            n, generator=gen
        )
        sigma2 = math.log1p(cfg.magnitude_cv**2)
        self._log_sigma, self._log_shift = math.sqrt(sigma2), -sigma2 / 2

    # -- what is known -------------------------------------------------------------------------

    @property
    def n_features(self) -> int:
        return self.cfg.n_features

    @property
    def d(self) -> int:
        return self.cfg.d

    def children_of(self, parent: int) -> list[int]:
        return [int(i) for i in (self.parent == parent).nonzero().squeeze(1)]

    def firing_prob(self) -> torch.Tensor:
        """Marginal firing probability of every feature ``[N]`` float64 (exact for this model)."""
        cfg = self.cfg
        g = torch.where(self.group >= 0, cfg.group_prob * cfg.group_member_prob, 0.0).double()
        prob = 1 - (1 - self.base_prob) * (1 - g)
        kids = self.parent >= 0
        prob[kids] = prob[self.parent[kids]] * cfg.child_prob / max(1, cfg.children_per_parent)
        return prob

    def record(self) -> dict[str, Any]:
        """What an SAE trained on this source stores in its cfg.json (under :data:`RECORD_KEY`):
        enough to rebuild the source exactly."""
        return {"kind": RECORD_KIND, "config": self.cfg.to_dict(), "fingerprint": self.cfg.fingerprint()}

    # -- streams -------------------------------------------------------------------------------

    def batches(self, n_tokens: int, batch_size: int = 4096, stream: str = "train") -> Iterator[SyntheticBatch]:
        """``n_tokens`` tokens of ``stream`` in batches of ``batch_size`` (the last may be shorter)."""
        if stream not in STREAMS:
            raise SaebenchError(f"synthetic: unknown stream {stream!r}; use one of {', '.join(STREAMS)}")
        if n_tokens < 1 or batch_size < 1:
            raise SaebenchError(f"synthetic: n_tokens={n_tokens} and batch_size={batch_size} must be positive")
        cfg = self.cfg
        gen = torch.Generator().manual_seed(_seed("stream", cfg.seed, stream))
        n, p, cpp = cfg.n_features, cfg.n_parents, cfg.children_per_parent
        base = self.base_prob.float()
        in_group = self.group >= 0
        for start in range(0, n_tokens, batch_size):
            b = min(batch_size, n_tokens - start)
            fire = torch.rand(b, n, generator=gen) < base
            if cfg.n_groups and cfg.group_size:
                event = torch.rand(b, cfg.n_groups, generator=gen) < cfg.group_prob
                member = torch.rand(b, int(in_group.sum()), generator=gen) < cfg.group_member_prob
                fire[:, in_group] |= event[:, self.group[in_group]] & member
            if p and cpp:
                u = torch.rand(b, p, generator=gen)
                which = (u / (cfg.child_prob / cpp)).floor().long()  # in [0, cpp) with prob child_prob
                has = fire[:, :p] & (u < cfg.child_prob) & (which < cpp)
                rows, par = has.nonzero(as_tuple=True)
                fire[rows, p + par * cpp + which[rows, par]] = True
            rows, cols = fire.nonzero(as_tuple=True)
            mag = self.magnitude_mean[cols] * torch.exp(
                self._log_sigma * torch.randn(rows.numel(), generator=gen) + self._log_shift
            )
            acts = torch.zeros(b, n)
            acts[rows, cols] = mag
            x = acts @ self.features
            if cfg.noise_std > 0:
                x += cfg.noise_std * torch.randn(b, cfg.d, generator=gen)
            yield SyntheticBatch(x, acts)

    def activations(self, n_tokens: int, stream: str = "train", batch_size: int = 4096) -> torch.Tensor:
        """``x [n_tokens, d]`` of ``stream`` (the first ``n_tokens`` of :meth:`batches`): what the
        trainer consumes. ``d``-wide, so a few hundred thousand tokens are a few tens of MB."""
        return torch.cat([bt.x for bt in self.batches(n_tokens, batch_size, stream)])


def source_of(sae: Any) -> SyntheticSource | None:
    """The synthetic source an SAE was trained on (from its config's record), None for an SAE of a
    real model. A damaged record is a one-line error."""
    record = synthetic_record(sae)
    if record is None:
        return None
    if record.get("kind") != RECORD_KIND or not isinstance(record.get("config"), dict):
        raise SaebenchError(f"SAE config's {RECORD_KEY!r} record is not a {RECORD_KIND} record; retrain the SAE")
    cfg = SyntheticConfig.from_dict(record["config"])
    if record.get("fingerprint") != cfg.fingerprint():
        raise SaebenchError(f"SAE config's {RECORD_KEY!r} record fails its fingerprint; it was edited: retrain the SAE")
    return SyntheticSource(cfg)


def synthetic_record(sae: Any) -> dict[str, Any] | None:
    """The raw synthetic record of an SAE's config (``sae.cfg.synthetic``), None where absent."""
    cfg = getattr(sae, "cfg", None)
    record = getattr(cfg, RECORD_KEY, None) if cfg is not None else None
    if record is None and isinstance(cfg, dict):
        record = cfg.get(RECORD_KEY)
    return record if isinstance(record, dict) else None
