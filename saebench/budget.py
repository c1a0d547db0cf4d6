"""``--max-memory``: how many SAEs one splice loop may hold, so a sweep's peak stays under a budget.

The runner evaluates the SAEs of one hook in *groups*: each group's weights are loaded, spliced
in one batched loop (the clean side computed once per token set, cached, shared) and evaluated, then freed
before the next group loads. Without a budget every SAE of a hook is one group (the fastest
plan); with one, groups are as large as the budget allows. A group's size never changes an
SAE's numbers: every per-SAE statistic is computed from the same batches whatever else is in
the loop, so results are identical bit for bit to evaluating each SAE alone (tests/test_sweep.py).

The plan, made per hook once the model, the token set and the hook's shared inputs exist:

    available = budget - used_now - batch_working_set - load_transient - margin
    a group takes SAEs, in order, while  Σ (weights + statistics)  <= available

- ``used_now`` is measured, not estimated: the process's resident set on CPU, the memory torch
  holds on a CUDA device (the SAEs and activations live there; host memory stays bounded by the
  streamed prefix states, see :mod:`saebench.pipeline.stored`);
- ``batch_working_set`` (:func:`batch_working_set`) is what one batch of the splice loop holds
  at once: the clean next-token distribution and one spliced logits tensor ([B, T, V] each, in
  float32), the reductions' temporaries, the model's own activations, and one SAE's latents
  [B, T, d_sae] (float32 values, float64 |z|, a mask);
- ``statistics`` per SAE are the float64 per-token sums the core metrics reduce (9 arrays of
  [n_seq, T]) plus its latent firing counts, twice (the per-batch pieces and their concatenation);
- ``load_transient`` is twice the largest SAE's weights (a file's tensors and the module they
  are copied into exist at once while one SAE loads);
- ``margin`` is 5% of the budget (allocator slack).

Evaluators other than ``core`` bring their own per-SAE working memory (examples per latent,
probe fits); the budget covers their shared inputs (measured in ``used_now``) but not that.
"""

from __future__ import annotations

import os
import re
import resource
import sys
from dataclasses import dataclass
from typing import Any

from saebench.errors import SaebenchError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "ki": 2**10,
    "kib": 2**10,
    "mi": 2**20,
    "mib": 2**20,
    "gi": 2**30,
    "gib": 2**30,
    "ti": 2**40,
    "tib": 2**40,
}


def parse_size(text: str | int | float) -> int:
    """``8GB`` (10^9), ``8GiB``/``8Gi`` (2^30), ``512MB``, ``1.5G``, or a byte count, as bytes."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = int(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
        unit = m.group(2).lower() if m else None
        if m is None or unit not in _UNITS:
            raise SaebenchError(f"--max-memory {text!r} is not a size; write it like 8GB, 8GiB or 512MB")
        value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise SaebenchError(f"--max-memory {text!r} must be positive")
    return value


def fmt_bytes(n: float) -> str:
    """Bytes as a short decimal size (``3.2 GB``)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def rss_bytes() -> int:
    """The process's resident set now (Linux: /proc/self/statm; elsewhere the peak, an upper bound)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss_bytes()


def reset_peak_rss() -> bool:
    """Start a new peak-RSS window (Linux >= 4.0: ``/proc/self/clear_refs`` 5); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def window_peak_rss_bytes() -> int:
    """Peak RSS since :func:`reset_peak_rss` (``VmHWM``), or since start where that is unsupported."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """The process's peak resident set so far (``ru_maxrss``: kB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def return_freed_memory() -> None:
    """Give freed memory back (glibc ``malloc_trim``; torch's CUDA cache) so the next reading is what
    is really held: SAE weights of a few MB are heap allocations, and glibc keeps them after
    ``free`` unless told otherwise (measured: +0.3 GB of retained heap after 32 reference SAEs)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()  # freed SAE weights leave the caching allocator's reserve too


def device_used(device: str) -> int:
    """Memory in use where the SAEs live: RSS on CPU, torch's allocated memory on a CUDA device."""
    if str(device).startswith("cuda"):
        import torch

        return int(torch.cuda.memory_allocated(torch.device(device)))
    return rss_bytes()


def sae_bytes(sae: Any) -> int:
    """Bytes of an SAE's tensors (parameters and buffers); 0 for objects that are not modules."""
    import torch

    if not isinstance(sae, torch.nn.Module):
        return 0
    return sum(t.numel() * t.element_size() for t in sae.state_dict().values())


def stats_bytes(n_seq: int, ctx_len: int, d_sae: int) -> int:
    """The per-SAE float64 statistics of the splice loop (see the module doc), pieces + concatenation."""
    return 2 * (9 * n_seq * ctx_len * 8 + d_sae * 8)


def batch_working_set(model: Any, batch_size: int, ctx_len: int, width: int, max_d_sae: int) -> int:
    """Bytes one batch of the splice loop holds at once (see the module doc)."""
    cfg = model.model.cfg
    bt = batch_size * ctx_len
    elem = model.dtype.itemsize if hasattr(model.dtype, "itemsize") else 4
    logits = bt * int(cfg.d_vocab) * (3 * 4 + elem)  # clean p, spliced logits (+float copy), logsumexp temporary
    d_mlp = int(getattr(cfg, "d_mlp", None) or 4 * cfg.d_model)
    internals = bt * (8 * int(cfg.d_model) + 3 * d_mlp) * 4 + 3 * batch_size * int(cfg.n_heads) * ctx_len**2 * 4
    sae = bt * max_d_sae * 25 + bt * width * 8 * 6  # latents (f32 pre, z; f64 |z|; mask) + float64 x, x̂, err
    return int(1.25 * (logits + internals + sae))


@dataclass
class GroupPlan:
    """Groups of SAE names for one hook, and the numbers that made them (for messages and logs)."""

    groups: list[list[str]]
    available: int
    used_now: int
    working_set: int


def plan_groups(
    names: list[str],
    weights: dict[str, int],
    d_sae: dict[str, int],
    budget: int | None,
    used_now: int,
    working_set: int,
    n_seq: int,
    ctx_len: int,
) -> GroupPlan:
    """Split ``names`` (in order) into groups whose weights + statistics fit the budget."""
    if budget is None:
        return GroupPlan([list(names)], -1, used_now, working_set)
    per = {n: weights[n] + stats_bytes(n_seq, ctx_len, d_sae[n]) for n in names}
    transient = 2 * max((weights[n] for n in names), default=0)
    available = budget - used_now - working_set - transient - budget // 20
    biggest = max(names, key=lambda n: per[n])
    if per[biggest] > available:
        raise SaebenchError(
            f"--max-memory {fmt_bytes(budget)} cannot hold one SAE here: in use {fmt_bytes(used_now)} (model, "
            f"token set, shared inputs) + batch working set {fmt_bytes(working_set)} + SAE {biggest} "
            f"{fmt_bytes(per[biggest] + transient)} + 5% margin; raise --max-memory or lower --batch-size"
        )
    groups: list[list[str]] = [[]]
    total = 0
    for n in names:
        if groups[-1] and total + per[n] > available:
            groups.append([])
            total = 0
        groups[-1].append(n)
        total += per[n]
    return GroupPlan(groups, available, used_now, working_set)
