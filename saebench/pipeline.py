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

CACHE_VERSION = "1"


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


def token_ce(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Per-token next-token CE of predictions at positions 1..T-2, float64 ``[B, T-2]``."""
    logp = logits[:, 1:-1].float().log_softmax(-1)
    target = tokens[:, 2:].to(logp.device)
    return -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1).double().cpu()


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
            clean_logp = clean_logits[:, 1:-1].float().log_softmax(-1)
            ce_clean = token_ce(clean_logits, tok)
            del clean_logits
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
                logp = logits[:, 1:-1].float().log_softmax(-1)
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
                a.setdefault("ce_spliced", []).append(token_ce(logits, tok))
                kl = (clean_logp.exp() * (clean_logp - logp)).sum(-1)
                a.setdefault("kl", []).append(kl.double().cpu())
                a.setdefault("ce_clean", []).append(ce_clean)
                del logits, logp, z, xhat
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
