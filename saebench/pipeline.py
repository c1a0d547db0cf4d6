"""The shared activation pipeline: every model pass any evaluator needs happens here, once.

Cost model (N layers, hook restarting at block L):

1. ``states`` — the prefix (embeddings .. block L-1) over the token set, cached on disk per
   (model, hook site, token set, dtype). Evaluating another SAE at the same hook, in this run or
   a later one, costs no prefix pass.
2. ``ablation_losses`` — per-token CE with the hook activation zeroed and replaced by its mean.
   They do not depend on the SAE: computed once per (model, hook, token set) and cached on disk.
3. ``splice_stats(saes)`` — one loop over batches: the clean suffix runs once per batch and each
   SAE's spliced suffix runs beside it, so KL(clean || spliced) never needs clean logits stored.

A cold core evaluation therefore costs one full pass plus (1 + 2) suffixes of (N-L)/N each; a
warm one (states and ablations cached) costs one clean and one spliced suffix.

Position 0 (the BOS token) is kept clean in every spliced/ablated run and left out of every
average: reconstruction statistics use positions 1..T-1, loss statistics the predictions made
at positions 1..T-2 (the prediction made at position 0 does not depend on the splice).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from saebench.data import TokenSet
from saebench.errors import SaebenchError
from saebench.models import SubjectModel, cache_dir

CACHE_VERSION = "2"  # bump when a cached quantity is computed differently


@dataclass
class SpliceStats:
    """Per-token and per-latent sums for one SAE over the token set (float64).

    Reconstruction arrays are ``[n_seq, T-1]`` (positions 1..T-1), loss arrays ``[n_seq, T-2]``.
    ``sum_x``/``sum_x2`` are per-dimension sums over the same positions (pooled variance).
    """

    sq_err: torch.Tensor
    x_sq: torch.Tensor
    xhat_sq: torch.Tensor
    dot: torch.Tensor
    l0: torch.Tensor
    l1: torch.Tensor
    sum_x: torch.Tensor
    sum_x2: torch.Tensor
    fire_count: torch.Tensor
    ce_clean: torch.Tensor
    ce_spliced: torch.Tensor
    kl: torch.Tensor
    ce_zero: torch.Tensor
    ce_mean: torch.Tensor
    timing: dict[str, float] = field(default_factory=dict)


@dataclass
class TaskActs:
    """Hook activations of one probing task's examples (see ``ActivationPipeline.task_activations``).

    ``acts`` is ``[n_tokens, d]``: every example's non-BOS tokens, examples in order, no padding;
    ``lengths[i]`` is example i's token count (so ``offsets = cumsum(lengths) - lengths``).
    ``key`` identifies (model, hook, texts, max_tokens); ``cached`` says it came from disk/memory.
    """

    acts: torch.Tensor
    lengths: torch.Tensor
    key: str
    cached: bool = False


@dataclass
class ExampleSet:
    """``k`` examples per latent for ``L`` latents (see ``ActivationPipeline.latent_examples``).

    ``seq``/``pos`` index the token set (``pipeline.tokens.tokens[seq, pos]`` is the example's
    activating token), ``act`` is the latent's activation there; all ``[L, k]``, sorted by
    ``act`` descending within a latent. ``valid`` is False in the slots a latent could not fill
    (it fired on fewer than ``k`` positions; those slots hold seq = pos = -1, act = 0).
    ``tokens``/``acts`` are ``[L, k, left + 1 + right]`` windows around the activating token
    (token id -1 and activation 0 outside the context) when a window was requested.
    """

    seq: torch.Tensor
    pos: torch.Tensor
    act: torch.Tensor
    valid: torch.Tensor
    tokens: torch.Tensor | None = None
    acts: torch.Tensor | None = None


@dataclass
class LatentExamples:
    """Top-activating, random-activating and importance-sampled examples of a set of latents.

    ``latents`` ``[L]`` are SAE latent indices; ``n_fire`` ``[L]`` counts positions where each
    fired (activation > 0) among the scanned ones, ``max_act`` ``[L]`` its maximum there
    (0 for a latent that never fired). ``n_positions`` is the number of positions scanned.
    """

    latents: torch.Tensor
    top: ExampleSet
    random: ExampleSet
    importance: ExampleSet
    n_fire: torch.Tensor
    max_act: torch.Tensor
    n_positions: int
    window: tuple[int, int] | None = None


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _try_load(path: Path) -> dict[str, torch.Tensor] | None:
    """A cache entry, or None when absent or unreadable (a corrupt entry is recomputed)."""
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception:
        return None


def loss_logits(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The logits of the predictions we average (positions 1..T-2), their log-sum-exp, and the
    per-token next-token CE = lse - logit[target] (float64, CPU).

    Only reductions over the vocabulary: no [B, T, V] log-softmax is materialised.
    """
    lg = logits[:, 1:-1].float()
    lse = torch.logsumexp(lg, -1)
    target = lg.gather(-1, tokens[:, 2:].to(lg.device).unsqueeze(-1)).squeeze(-1)
    return lg, lse, (lse - target).double().cpu()


def token_ce(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Per-token next-token CE of predictions at positions 1..T-2, float64 ``[B, T-2]``."""
    return loss_logits(logits, tokens)[2]


class ActivationPipeline:
    """Model passes for one (model, hook, token set), shared by every evaluator and SAE."""

    def __init__(self, model: SubjectModel, tokens: TokenSet, hook: str, batch_size: int,
                 use_cache: bool = True, progress: bool = True) -> None:
        if batch_size < 1:
            raise SaebenchError(f"--batch-size {batch_size} must be at least 1")
        if tokens.tokens.shape[0] < batch_size:
            raise SaebenchError(
                f"--tokens gives {tokens.tokens.shape[0]} context(s), fewer than one batch of "
                f"{batch_size}; raise --tokens to at least {batch_size * tokens.ctx_len} or lower --batch-size"
            )
        self.model, self.tokens, self.hook = model, tokens, hook
        self.site = model.hook_site(hook)
        self.batch_size, self.use_cache, self.progress = batch_size, use_cache, progress
        self.timing: dict[str, float] = {}
        self._states: torch.Tensor | None = None
        self._ablation: dict[str, torch.Tensor] | None = None
        self._mean_act: torch.Tensor | None = None
        self._width: int | None = None
        self._task_acts: dict[str, TaskActs] = {}
        self.task_forward_batches = 0  # model passes spent on probing tasks (0 when all cached)

    # -- cache keys ----------------------------------------------------------------------------
    def _key(self, what: str) -> Path:
        raw = "|".join([CACHE_VERSION, what, self.model.name, self.hook, str(self.site.start),
                        self.tokens.fingerprint(), str(self.model.dtype)])
        digest = hashlib.sha256(raw.encode()).hexdigest()[:20]
        safe_model = self.model.name.replace("/", "__")
        return cache_dir() / "activations" / safe_model / f"{what}-{self.hook}-{digest}.safetensors"

    def _batches(self, desc: str) -> Any:
        n = self.tokens.tokens.shape[0]
        starts = range(0, n, self.batch_size)
        return tqdm(starts, desc=desc, disable=not self.progress, leave=False, unit="batch")

    # -- stage 1: prefix states ----------------------------------------------------------------
    def states(self) -> torch.Tensor:
        """Residual stream entering the hook's block, ``[n_seq, T, d_model]`` on CPU."""
        if self._states is not None:
            return self._states
        t0 = time.perf_counter()
        path = self._key("states")
        cached = _try_load(path) if self.use_cache else None
        if cached is not None and cached["states"].shape[:2] == self.tokens.tokens.shape:
            self._states = cached["states"]
            self.timing["prefix_cached_s"] = time.perf_counter() - t0
            return self._states
        out = []
        for s in self._batches(f"prefix to {self.hook}"):
            tok = self.tokens.tokens[s:s + self.batch_size]
            out.append(self.model.prefix(tok, self.site).cpu())
        self._states = torch.cat(out)
        if self.use_cache:
            _atomic_save({"states": self._states}, path)
        self.timing["prefix_s"] = time.perf_counter() - t0
        return self._states

    def acts_batch(self, state: torch.Tensor) -> torch.Tensor:
        """Hook activations for a batch of prefix states (on the model's device)."""
        return self.model.hook_acts(state.to(self.model.device), self.site)

    def hook_width(self) -> int:
        """Width of the hook activation (what an SAE's d_in must equal)."""
        if self._width is None:
            if self.site.is_resid:
                self._width = int(self.model.model.cfg.d_model)
            else:
                self._width = int(self.acts_batch(self.states()[:1]).shape[-1])
        return self._width

    def mean_act(self) -> torch.Tensor:
        """Mean hook activation over positions 1..T-1 of the token set (float64)."""
        if self._mean_act is None:
            states = self.states()
            total = torch.zeros(self.hook_width(), dtype=torch.float64)
            for s in range(0, states.shape[0], self.batch_size):
                total += self.acts_batch(states[s:s + self.batch_size])[:, 1:].double().sum((0, 1)).cpu()
            self._mean_act = total / (states.shape[0] * (states.shape[1] - 1))
        return self._mean_act

    # -- probing tasks: per-example activations ------------------------------------------------
    def task_activations(self, tasks: dict[str, list[str]], max_tokens: int) -> dict[str, TaskActs]:
        """Hook activations for each task's example texts, computed once and cached on disk.

        Each text is tokenized without special tokens, left-truncated to its last
        ``max_tokens - 1`` tokens (labels of QA/compound-word tasks are decided at the end) and
        prefixed with the model's BOS. Examples are sorted by length and right-padded per batch
        (safe for causal models: real tokens never attend to later pads) within a budget of
        ``batch_size x ctx_len`` tokens. Only the non-BOS, non-pad tokens are kept, so any pooling
        (mean, last) can be applied later without another pass. Keyed per task by (model, hook,
        dtype, texts, max_tokens): a second SAE at this hook, in this run or a later one, costs
        no model pass.
        """
        if max_tokens < 2:
            raise SaebenchError(f"probing max_tokens {max_tokens} is too short; use at least 2 (BOS + one token)")
        out: dict[str, TaskActs] = {}
        for name, texts in tasks.items():
            h = hashlib.sha256("\x1e".join(texts).encode()).hexdigest()[:16]
            raw = "|".join([CACHE_VERSION, "task", self.model.name, self.hook, str(self.site.start),
                            str(self.model.dtype), h, str(max_tokens)])
            key = hashlib.sha256(raw.encode()).hexdigest()[:20]
            if key in self._task_acts:
                out[name] = self._task_acts[key]
                continue
            t0 = time.perf_counter()
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
            path = cache_dir() / "activations" / self.model.name.replace("/", "__") / f"task-{safe}-{self.hook}-{key}.safetensors"
            cached = _try_load(path) if self.use_cache else None
            if cached is not None and cached["lengths"].numel() == len(texts):
                ta = TaskActs(cached["acts"], cached["lengths"], key, cached=True)
                self.timing["task_cached_s"] = self.timing.get("task_cached_s", 0.0) + time.perf_counter() - t0
            else:
                ta = TaskActs(*self._task_pass(texts, max_tokens), key)
                if self.use_cache:
                    _atomic_save({"acts": ta.acts, "lengths": ta.lengths}, path)
                self.timing["task_forward_s"] = self.timing.get("task_forward_s", 0.0) + time.perf_counter() - t0
            self._task_acts[key] = out[name] = ta
        return out

    def _task_pass(self, texts: list[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = []
        for text in texts:
            toks = self.model.tokenize(text)[-(max_tokens - 1):] or [self.model.bos_id]
            ids.append([self.model.bos_id, *toks])
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        budget = max(self.batch_size * self.tokens.ctx_len, max_tokens)
        per_example: list[torch.Tensor | None] = [None] * len(ids)
        i = 0
        while i < len(order):
            width = len(ids[order[i]])  # longest in this batch (sorted descending)
            take = order[i:i + max(1, budget // width)]
            i += len(take)
            batch = torch.full((len(take), width), self.model.bos_id, dtype=torch.long)
            for row, j in enumerate(take):
                batch[row, :len(ids[j])] = torch.tensor(ids[j])
            acts = self.acts_batch(self.model.prefix(batch, self.site)).cpu()
            self.task_forward_batches += 1
            for row, j in enumerate(take):
                per_example[j] = acts[row, 1:len(ids[j])].clone()
        lengths = torch.tensor([len(t) - 1 for t in ids], dtype=torch.long)
        return torch.cat([a for a in per_example if a is not None]), lengths

    # -- stage 2: SAE-independent ablation baselines -------------------------------------------
    def ablation_losses(self) -> dict[str, torch.Tensor]:
        """Per-token CE with the hook zeroed / mean-ablated at positions >= 1 (cached)."""
        if self._ablation is not None:
            return self._ablation
        t0 = time.perf_counter()
        path = self._key("ablation")
        cached = _try_load(path) if self.use_cache else None
        if cached is not None:
            self._ablation = cached
            self.timing["ablation_cached_s"] = time.perf_counter() - t0
            return cached
        states, toks = self.states(), self.tokens.tokens
        mean = self.mean_act()
        zero_ce, mean_ce = [], []
        for s in self._batches("ablation baselines"):
            st = states[s:s + self.batch_size].to(self.model.device)
            tok = toks[s:s + self.batch_size]
            acts = self.acts_batch(st)
            zeroed = acts.clone()
            zeroed[:, 1:] = 0
            zero_ce.append(token_ce(self.model.suffix(st, self.site, zeroed), tok))
            meaned = acts.clone()
            meaned[:, 1:] = mean.to(acts.dtype).to(acts.device)
            mean_ce.append(token_ce(self.model.suffix(st, self.site, meaned), tok))
        self._ablation = {"zero": torch.cat(zero_ce), "mean": torch.cat(mean_ce)}
        if self.use_cache:
            _atomic_save(self._ablation, path)
        self.timing["ablation_s"] = time.perf_counter() - t0
        return self._ablation

    # -- stage 3: clean + spliced suffixes ----------------------------------------------------
    def check_sae(self, sae: Any, label: str) -> None:
        """Refuse an SAE whose d_in differs from the hook's width, before any work is spent."""
        width = self.hook_width()
        if int(sae.d_in) != width:
            raise SaebenchError(
                f"SAE {label} has d_in={sae.d_in} but hook {self.hook} of {self.model.name} has width "
                f"{width}; pass the hook (--hook) and model (--model) the SAE was trained on"
            )

    def splice_stats(self, saes: dict[str, Any]) -> dict[str, SpliceStats]:
        """Reconstruction, sparsity and spliced-loss sums for every SAE in one batched loop."""
        for label, sae in saes.items():
            self.check_sae(sae, label)
        ablation = self.ablation_losses()
        states, toks = self.states(), self.tokens.tokens
        acc: dict[str, dict[str, list[torch.Tensor]]] = {k: {} for k in saes}
        fire = {k: torch.zeros(int(s.d_sae), dtype=torch.int64) for k, s in saes.items()}
        sum_x = torch.zeros(self.hook_width(), dtype=torch.float64)
        sum_x2 = torch.zeros_like(sum_x)
        clean_s, sae_s = 0.0, dict.fromkeys(saes, 0.0)
        for s in self._batches(f"clean + spliced ({len(saes)} SAE)"):
            t0 = time.perf_counter()
            st = states[s:s + self.batch_size].to(self.model.device)
            tok = toks[s:s + self.batch_size]
            acts = self.acts_batch(st)
            clean_logits = self.model.suffix(st, self.site)
            # KL(p || q) = Σ_v p_v (l_v - lse) - Σ_v p_v (m_v - lse_m) for clean logits l and
            # spliced logits m: the clean term once per batch, per SAE one logsumexp and one dot.
            clean_lg, clean_lse, ce_clean = loss_logits(clean_logits, tok)
            clean_p = (clean_lg - clean_lse.unsqueeze(-1)).exp()
            clean_term = torch.linalg.vecdot(clean_p, clean_lg) - clean_lse
            del clean_logits, clean_lg
            x = acts[:, 1:].double()
            sum_x += x.sum((0, 1)).cpu()
            sum_x2 += (x * x).sum((0, 1)).cpu()
            clean_s += time.perf_counter() - t0
            for label, sae in saes.items():
                t1 = time.perf_counter()
                with torch.no_grad():
                    z = sae.encode(acts[:, 1:])
                    xhat = sae.decode(z)
                if tuple(xhat.shape) != tuple(acts[:, 1:].shape) or z.shape[-1] != sae.d_sae:
                    raise SaebenchError(
                        f"SAE {label}: encode/decode gave shapes {list(z.shape)} / {list(xhat.shape)} "
                        f"for input {list(acts[:, 1:].shape)}; decode(encode(x)) must have x's shape"
                    )
                if not bool(torch.isfinite(xhat).all()):
                    raise SaebenchError(f"SAE {label} produced NaN/Inf reconstructions; check its weights")
                spliced = acts.clone()
                spliced[:, 1:] = xhat.to(acts.dtype)
                logits = self.model.suffix(st, self.site, spliced)
                lg, lse, ce_spliced = loss_logits(logits, tok)
                a = acc[label]
                xh = xhat.double()
                err = x - xh
                a.setdefault("sq_err", []).append((err * err).sum(-1).cpu())
                a.setdefault("x_sq", []).append((x * x).sum(-1).cpu())
                a.setdefault("xhat_sq", []).append((xh * xh).sum(-1).cpu())
                a.setdefault("dot", []).append((x * xh).sum(-1).cpu())
                active = z != 0
                a.setdefault("l0", []).append(active.sum(-1).double().cpu())
                a.setdefault("l1", []).append(z.double().abs().sum(-1).cpu())
                fire[label] += active.reshape(-1, z.shape[-1]).sum(0).cpu()
                a.setdefault("ce_spliced", []).append(ce_spliced)
                kl = (clean_term - (torch.linalg.vecdot(clean_p, lg) - lse)).clamp_min(0.0)  # >= 0; clamp float noise
                a.setdefault("kl", []).append(kl.double().cpu())
                a.setdefault("ce_clean", []).append(ce_clean)
                del logits, lg, z, xhat
                sae_s[label] += time.perf_counter() - t1
        self.timing["clean_suffix_s"] = clean_s
        out = {}
        for label in saes:
            cat = {k: torch.cat(v) for k, v in acc[label].items()}
            out[label] = SpliceStats(
                sum_x=sum_x, sum_x2=sum_x2, fire_count=fire[label],
                ce_zero=ablation["zero"], ce_mean=ablation["mean"],
                timing={**self.timing, "spliced_s": sae_s[label]}, **cat,
            )
        return out

    # -- examples per latent (n2g, autointerp) and latent ablations ---------------------------
    # Everything below reads the cached prefix states (``states()``): collecting examples from
    # the evaluation token set costs SAE encodes only (plus the hook's own block for a hook
    # inside a block), never another prefix pass.
    example_forward_batches: int = 0  # model calls spent on latent_acts_at (n2g pruning/saliency)
    example_forward_rows: int = 0     # rows those calls evaluated (= naive count: one call per row)
    ablation_forward_batches: int = 0  # suffix calls spent in ablation_effects
    ablation_forward_rows: int = 0     # rows those calls evaluated (ablations + un-ablated contexts)

    def _seq_index(self, seqs: Any) -> torch.Tensor:
        n = self.tokens.tokens.shape[0]
        if seqs is None:
            return torch.arange(n)
        idx = torch.as_tensor(seqs, dtype=torch.long).reshape(-1)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise SaebenchError(f"context indices must lie in 0..{n - 1}; got {int(idx.min())}..{int(idx.max())}")
        return idx

    def _encode_seqs(self, sae: Any, seqs: torch.Tensor) -> Any:
        """Yield ``(seq ids [b], z [b, T-1, d_sae])``: latents at positions 1..T-1 (BOS never encoded)."""
        states = self.states()
        for s in range(0, seqs.numel(), self.batch_size):
            idx = seqs[s:s + self.batch_size]
            acts = self.acts_batch(states[idx])
            with torch.no_grad():
                z = sae.encode(acts[:, 1:])
            if z.shape[-1] != int(sae.d_sae):
                raise SaebenchError(f"SAE encode gave {z.shape[-1]} latents but d_sae is {sae.d_sae}; fix the SAE's d_sae")
            yield idx, z

    def fire_counts(self, sae: Any, seqs: Any = None) -> torch.Tensor:
        """Positions (1..T-1 of the given contexts; all by default) where each latent fires, int64 ``[d_sae]``.

        One streamed encode pass: never more than ``batch_size x T x d_sae`` floats at once.
        """
        counts = torch.zeros(int(sae.d_sae), dtype=torch.int64)
        for _, z in self._encode_seqs(sae, self._seq_index(seqs)):
            counts += (z > 0).reshape(-1, z.shape[-1]).sum(0).cpu()
        return counts

    def choose_latents(self, sae: Any, explicit: list[int] | None, n: int, seed: int, what: str,
                       seqs: Any = None, min_count: int = 1) -> tuple[torch.Tensor, int | None]:
        """The latents a per-latent evaluator studies, sorted, and how many were live.

        ``explicit`` (validated against ``d_sae``) wins; otherwise ``n`` latents firing on at least
        ``min_count`` positions of ``seqs`` are drawn without replacement (seeded). The live count
        is None for an explicit list (no firing pass is spent on it).
        """
        if explicit is not None:
            bad = [i for i in explicit if not 0 <= i < int(sae.d_sae)]
            if bad:
                raise SaebenchError(f"{what}.latents {bad} are outside 0..{int(sae.d_sae) - 1}; pass valid latent indices")
            return torch.tensor(sorted(set(explicit)), dtype=torch.long), None
        live = (self.fire_counts(sae, seqs) >= max(1, min_count)).nonzero().squeeze(1)
        perm = torch.randperm(live.numel(), generator=torch.Generator().manual_seed(seed))
        return live[perm[:n]].sort().values, int(live.numel())

    def latent_acts(self, sae: Any, latents: Any, seqs: Any = None) -> torch.Tensor:
        """Per-token activations of a few latents on whole contexts, float32 ``[n_seq, T, L]``.

        Position 0 (BOS) is never encoded and reads 0. Dense only in the L selected latents.
        """
        lat = torch.as_tensor(latents, dtype=torch.long).reshape(-1)
        idx = self._seq_index(seqs)
        out = torch.zeros(idx.numel(), self.tokens.ctx_len, lat.numel(), dtype=torch.float32)
        row = 0
        for b_idx, z in self._encode_seqs(sae, idx):
            out[row:row + b_idx.numel(), 1:] = z[..., lat.to(z.device)].float().cpu()
            row += b_idx.numel()
        return out

    def latent_examples(self, sae: Any, latents: Any, n_top: int = 0, n_random: int = 0, n_importance: int = 0,
                        seed: int = 0, seqs: Any = None, positions: tuple[int, int] | None = None,
                        window: tuple[int, int] | None = None) -> LatentExamples:
        """Top-activating, random-activating and importance-sampled examples of ``latents``, streamed.

        One encode pass over the cached prefix states of contexts ``seqs`` (default: all),
        scanning positions ``positions = (lo, hi)`` inclusive (default ``(1, T-1)``; position 0,
        the BOS, is never a candidate). Per latent, and per batch, the candidates are merged into
        a bounded buffer with ``topk`` over ``k + batch positions`` rows: memory is
        O(batch x T x d_sae) for the encode plus O(k x L) for the buffers, never
        ``[tokens x d_sae]``.

        - ``top``: the ``n_top`` largest activations (ties: first seen).
        - ``random``: ``n_random`` positions drawn uniformly without replacement among those where
          the latent fires (activation > 0): each candidate gets a uniform key u, the largest
          keys are kept (bottom-k / reservoir sampling).
        - ``importance``: ``n_importance`` positions drawn without replacement with probability
          proportional to the activation (Efraimidis & Spirakis 2006: keep the largest
          u^(1/a), i.e. log(u)/a), so weak activations are represented in proportion to their
          mass across the activation range (the example mix autointerp scorers want).

        Keys come from ``torch.Generator`` seeded per context (``seed``, context index), so the
        sample does not depend on ``batch_size``. With ``window = (left, right)`` each example
        also gets its tokens and this latent's per-token activations at positions
        ``pos - left .. pos + right`` (second encode pass over only the contexts used).
        """
        lat = torch.as_tensor(latents, dtype=torch.long).reshape(-1)
        n_lat, ctx = lat.numel(), self.tokens.ctx_len
        lo, hi = positions if positions is not None else (1, ctx - 1)
        lo, hi = max(1, int(lo)), min(ctx - 1, int(hi))
        if hi < lo:
            raise SaebenchError(f"no position to scan in {lo}..{hi} of {ctx}-token contexts; raise --ctx-len")
        sizes = {"top": n_top, "random": n_random, "importance": n_importance}
        neg = float("-inf")
        buf = {name: (torch.empty(0, n_lat, dtype=torch.float64), torch.empty(0, n_lat),
                      torch.empty(0, n_lat, dtype=torch.long), torch.empty(0, n_lat, dtype=torch.long))
               for name, k in sizes.items() if k > 0}
        n_fire = torch.zeros(n_lat, dtype=torch.int64)
        max_act = torch.zeros(n_lat)
        n_pos = hi - lo + 1
        scanned = 0
        for idx, z in self._encode_seqs(sae, self._seq_index(seqs)):
            a3 = z[:, lo - 1:hi][..., lat.to(z.device)].float().cpu()  # [b, P, L]
            b = a3.shape[0]
            a = a3.reshape(b * n_pos, n_lat)
            fire = a > 0
            scanned += b * n_pos
            n_fire += fire.sum(0)
            max_act = torch.maximum(max_act, a.max(0).values.clamp_min(0))
            seq_col = idx.repeat_interleave(n_pos)[:, None].expand(-1, n_lat)
            pos_col = torch.arange(lo, hi + 1).repeat(b)[:, None].expand(-1, n_lat)
            u = None
            if n_random or n_importance:
                u = torch.cat([torch.rand(n_pos, n_lat, 2, dtype=torch.float64,
                                          generator=torch.Generator().manual_seed(seed * 1_000_003 + int(s) + 1))
                               for s in idx]).clamp_min(1e-300)
            for name in buf:
                if name == "top":
                    key = torch.where(fire, a.double(), neg)
                elif name == "random":
                    key = torch.where(fire, u[..., 0], neg)
                else:
                    key = torch.where(fire, u[..., 1].log() / a.double().clamp_min(1e-30), neg)
                keys, acts_b, seq_b, pos_b = buf[name]
                keys = torch.cat([keys, key])
                acts_b, seq_b, pos_b = torch.cat([acts_b, a]), torch.cat([seq_b, seq_col]), torch.cat([pos_b, pos_col])
                k = min(sizes[name], keys.shape[0])
                top = keys.topk(k, dim=0).indices
                buf[name] = (keys.gather(0, top), acts_b.gather(0, top), seq_b.gather(0, top), pos_b.gather(0, top))

        def finish(name: str) -> ExampleSet:
            if name not in buf:
                empty = torch.empty(n_lat, 0)
                return ExampleSet(empty.long(), empty.long(), empty, empty.bool())
            keys, acts_b, seq_b, pos_b = (t.T.contiguous() for t in buf[name])  # [L, k]
            valid = keys > neg
            order = torch.where(valid, acts_b, neg).argsort(dim=1, descending=True, stable=True)
            valid, acts_b = valid.gather(1, order), acts_b.gather(1, order)
            seq_b, pos_b = seq_b.gather(1, order), pos_b.gather(1, order)
            return ExampleSet(torch.where(valid, seq_b, -1), torch.where(valid, pos_b, -1),
                              torch.where(valid, acts_b, 0.0), valid)

        out = LatentExamples(lat, finish("top"), finish("random"), finish("importance"), n_fire, max_act,
                             scanned, window)
        if window is not None:
            self._fill_windows(sae, out, window)
        return out

    def _fill_windows(self, sae: Any, ex: LatentExamples, window: tuple[int, int]) -> None:
        left, right = window
        sets = [es for es in (ex.top, ex.random, ex.importance) if es.valid.any()]
        if not sets:
            return
        used = torch.unique(torch.cat([es.seq[es.valid] for es in sets]))
        acts = self.latent_acts(sae, ex.latents, used)  # [U, T, L]
        where = {int(s): i for i, s in enumerate(used)}
        ctx, width = self.tokens.ctx_len, left + 1 + right
        for es in (ex.top, ex.random, ex.importance):
            n_lat, k = es.seq.shape
            es.tokens = torch.full((n_lat, k, width), -1, dtype=torch.long)
            es.acts = torch.zeros(n_lat, k, width)
            for li, j in es.valid.nonzero().tolist():
                s, p = int(es.seq[li, j]), int(es.pos[li, j])
                a, b = max(0, p - left), min(ctx, p + right + 1)
                off = a - (p - left)
                es.tokens[li, j, off:off + b - a] = self.tokens.tokens[s, a:b]
                es.acts[li, j, off:off + b - a] = acts[where[s], a:b, li]

    @torch.no_grad()
    def latent_acts_at(self, sae: Any, rows: list[list[int]], latents: list[int], token_budget: int | None = None) -> torch.Tensor:
        """Activation of latent ``latents[r]`` at the last token of token row ``rows[r]``, float32 ``[R]``.

        For explanation searches (n2g pruning and saliency): many short, edited contexts, each
        with its own latent. Rows run only up to the hook (``SubjectModel.prefix`` +
        ``hook_acts``), sorted by length and right-padded into batches of at most
        ``token_budget`` (default ``batch_size x ctx_len``) tokens; right padding is exact for
        causal models. Only the last position of each row is encoded. Callers put the BOS
        first themselves. ``example_forward_batches``/``_rows`` count the model calls and rows.
        """
        if len(rows) != len(latents):
            raise SaebenchError(f"latent_acts_at got {len(rows)} rows but {len(latents)} latents; pass one latent per row")
        budget = token_budget or self.batch_size * self.tokens.ctx_len
        out = torch.zeros(len(rows))
        order = sorted(range(len(rows)), key=lambda r: -len(rows[r]))
        i = 0
        while i < len(order):
            width = len(rows[order[i]])
            if width < 1:
                raise SaebenchError("latent_acts_at got an empty token row; every row needs at least one token")
            take = order[i:i + max(1, budget // width)]
            i += len(take)
            batch = torch.full((len(take), width), self.model.bos_id, dtype=torch.long)
            last = torch.tensor([len(rows[r]) - 1 for r in take])
            for j, r in enumerate(take):
                batch[j, :len(rows[r])] = torch.tensor(rows[r])
            acts = self.acts_batch(self.model.prefix(batch, self.site))
            x = acts[torch.arange(len(take), device=acts.device), last.to(acts.device)]
            z = sae.encode(x)
            lat = torch.tensor([latents[r] for r in take], device=z.device)
            out[take] = z.gather(1, lat[:, None]).squeeze(1).float().cpu()
            self.example_forward_batches += 1
            self.example_forward_rows += len(take)
        return out

    def _final_resid(self, state: torch.Tensor, replacement: torch.Tensor) -> torch.Tensor:
        """Residual stream before the final norm, from the prefix state with the hook replaced."""
        tl, n = self.model.model, self.model.n_layers
        replacement = replacement.to(device=state.device, dtype=state.dtype)
        if self.site.is_resid:
            return tl(replacement, start_at_layer=self.site.start, stop_at_layer=n)

        def replace(act: torch.Tensor, hook: Any) -> torch.Tensor:
            return replacement

        with tl.hooks(fwd_hooks=[(self.site.name, replace)]):
            return tl(state, start_at_layer=self.site.start, stop_at_layer=n)

    def _unembed(self, resid: torch.Tensor) -> torch.Tensor:
        """Logits from final residuals (final norm, unembed, soft cap: what the model's forward does)."""
        tl = self.model.model
        if tl.cfg.normalization_type is not None:
            resid = tl.ln_final(resid)
        logits = tl.unembed(resid).float()
        cap = getattr(tl.cfg, "output_logits_soft_cap", -1.0) or -1.0
        return cap * torch.tanh(logits / cap) if cap > 0 else logits

    @torch.no_grad()
    def ablation_effects(self, sae: Any, pairs: torch.Tensor, window: int,
                         reduce: Any, row_batch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Effect on the logits of ablating one latent at one position, for many (context, position, latent).

        ``pairs`` is ``[R, 3]`` int64 rows ``(seq, pos, latent)`` with ``1 <= pos`` and
        ``pos + window <= T``. Each context's spliced run (hook replaced by
        ``decode(encode(x))`` at positions >= 1; BOS clean, as in ``splice_stats``) is one row,
        computed once however many pairs use the context; an ablated row replaces position
        ``pos`` of that reconstruction by the reconstruction without the latent, i.e. subtracts
        ``decode(z) - decode(z with z_i = 0)`` computed at the encode's own shape (exact for any
        token-wise decoder, layer-norm SAEs included). Un-ablated and ablated rows of all
        latents and contexts share suffix passes from the hook's block, ``row_batch`` rows per
        call (default ``4 x batch_size``), sorted by length and each cut at its last needed
        position (later positions cannot matter to a causal model). Only the final residuals
        are kept; logits are formed for the ``window`` positions ``pos .. pos+window-1`` alone,
        so memory is O(row_batch x window x V), never O(rows x T x V).
        ``reduce([r, window, V] logit differences ablated - spliced)`` returns one float per row.

        Returns ``(values [R] float64, no_effect [R] bool)``: rows whose ablation leaves the
        reconstruction bit-identical (latent off there, or a zero decoder row) are not run;
        their value is NaN and ``no_effect`` is True.
        """
        pairs = torch.as_tensor(pairs, dtype=torch.long).reshape(-1, 3)
        ctx = self.tokens.ctx_len
        if pairs.numel() and (int(pairs[:, 1].min()) < 1 or int((pairs[:, 1] + window).max()) > ctx):
            raise SaebenchError(f"ablation positions must lie in 1..{ctx - window} for a {window}-position window")
        row_batch = row_batch or 4 * self.batch_size
        n_pairs = pairs.shape[0]
        values = torch.full((n_pairs,), float("nan"), dtype=torch.float64)
        no_effect = torch.zeros(n_pairs, dtype=torch.bool)
        if n_pairs == 0:
            return values, no_effect
        states = self.states()
        uniq = torch.unique(pairs[:, 0])
        local = {int(c): i for i, c in enumerate(uniq)}
        ctx_of = torch.tensor([local[int(s)] for s in pairs[:, 0]])
        spliced = torch.empty(uniq.numel(), ctx, self.hook_width(), dtype=self.model.dtype)
        contrib = torch.zeros(n_pairs, self.hook_width(), dtype=self.model.dtype)
        for s in range(0, uniq.numel(), self.batch_size):
            acts = self.acts_batch(states[uniq[s:s + self.batch_size]])
            z = sae.encode(acts[:, 1:])
            xhat = sae.decode(z)
            if tuple(xhat.shape) != tuple(acts[:, 1:].shape):
                raise SaebenchError(f"SAE decode(encode(x)) has shape {list(xhat.shape)} for input {list(acts[:, 1:].shape)}; it must keep x's shape")
            sp = acts.clone()
            sp[:, 1:] = xhat.to(acts.dtype)
            spliced[s:s + acts.shape[0]] = sp.cpu()
            in_chunk = (ctx_of >= s) & (ctx_of < s + acts.shape[0])
            for lat in torch.unique(pairs[in_chunk, 2]).tolist():
                zc = z.clone()
                zc[..., lat] = 0
                diff = (xhat - sae.decode(zc)).cpu()
                rows = (in_chunk & (pairs[:, 2] == lat)).nonzero().squeeze(1)
                contrib[rows] = diff[ctx_of[rows] - s, pairs[rows, 1] - 1].to(contrib.dtype)
        live = contrib.ne(0).any(-1)
        no_effect |= ~live
        live_rows = live.nonzero().squeeze(1).tolist()
        if not live_rows:
            return values, no_effect
        # one row per used context (un-ablated) + one per live pair; (kind, index, end)
        ends = {}
        for r in live_rows:
            u = int(ctx_of[r])
            ends[u] = max(ends.get(u, 0), int(pairs[r, 1]) + window)
        jobs = [("base", u, e) for u, e in ends.items()] + [("abl", r, int(pairs[r, 1]) + window) for r in live_rows]
        jobs.sort(key=lambda j: -j[2])
        base_resid: dict[int, torch.Tensor] = {}
        abl_resid: dict[int, torch.Tensor] = {}
        dev = self.model.device
        for b0 in range(0, len(jobs), row_batch):
            group = jobs[b0:b0 + row_batch]
            end = max(j[2] for j in group)
            us = torch.tensor([u if kind == "base" else int(ctx_of[u]) for kind, u, _ in group])
            rep = spliced[us, :end].clone()
            for g, (kind, r, _) in enumerate(group):
                if kind == "abl":
                    rep[g, int(pairs[r, 1])] -= contrib[r]
            resid = self._final_resid(states[us, :end].to(dev), rep.to(dev))
            self.ablation_forward_batches += 1
            self.ablation_forward_rows += len(group)
            for g, (kind, r, e) in enumerate(group):
                if kind == "base":
                    base_resid[r] = resid[g, :e].cpu()
                else:
                    p = int(pairs[r, 1])
                    abl_resid[r] = resid[g, p:p + window].cpu()
            del resid
        for b0 in range(0, len(live_rows), row_batch):
            rows = live_rows[b0:b0 + row_batch]
            a = torch.stack([abl_resid[r] for r in rows]).to(dev)
            b = torch.stack([base_resid[int(ctx_of[r])][int(pairs[r, 1]):int(pairs[r, 1]) + window] for r in rows]).to(dev)
            vals = reduce(self._unembed(a) - self._unembed(b))
            values[rows] = vals.double().cpu()
        return values, no_effect
