"""The pipeline's hub: one (model, hook, token set), its prefix states, cache entries and counters.

:class:`ActivationPipeline` owns what every stage shares: the prefix pass up to the hook's block
(``states``, cached on disk per model, hook site, token set and dtype), reading the hook
activation from a state (``acts_batch``), the SAE-independent mean activation, the streamed SAE
encode over contexts (``encode_seqs``), one memo for shared inputs computed in this process
(:meth:`shared`) and one on-disk cache for tensors (:meth:`cached_tensors`). The stages that
build on it live beside it: :mod:`.splice` (clean, spliced and ablated passes), :mod:`.examples`
(examples per latent), :mod:`.tasks` (probing-task activations).

A cache entry is one safetensors file, ``$SAEBENCH_CACHE/activations/<model>/<what>-[<label>-]
<hook>-<key>.safetensors``, whose header metadata carries ``saebench_entry`` (format version),
``what``, ``key`` (the content key it was computed for) and ``sha256`` (:func:`saebench.io.
tensors_digest` of its tensors). An entry is used only when its key and checksum match; anything
else (truncated, bit-flipped, overwritten, renamed, written by an older saebench) is reported in
one line, deleted and recomputed. Computing an entry holds ``.NAME.lock``: a second process
needing the same entry waits and then reads it. A cache that cannot be written (out of space,
read-only) is skipped with one warning: the run goes on without caching.
"""

from __future__ import annotations

import contextlib
import hashlib
import struct
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from tqdm.auto import tqdm

from saebench.data import TokenSet
from saebench.errors import SaebenchError
from saebench.io import (
    atomic_save_tensors,
    cache_dir,
    file_lock,
    file_tensors_digest,
    free_bytes,
    human_bytes,
    is_out_of_space,
    lock_path,
    log,
    slug,
    tensors_digest,
    warn_once,
)
from saebench.models import HookSite, SubjectModel, head_shape, hook_width, width_error
from saebench.pipeline.stored import ENTRY_FORMAT, PrefixStates, open_states, save_states, write_states

CACHE_VERSION = "2"  # bump when a cached quantity is computed differently
_UNWRITABLE: set[str] = set()  # cache folders that failed a write: skipped for the rest of the process
T = TypeVar("T")


@dataclass(frozen=True)
class SpliceTarget:
    """Where an SAE's output is compared with the model and spliced in (:meth:`ActivationPipeline.target`).

    For an SAE: the pipeline's own hook (``is_input``). For a transcoder: its output hook, replaced
    in the pass that runs from the *input* hook's block (``site.start``), so the input is read and
    the output replaced in one suffix; ``site.is_resid`` is False (the replacement is a hook there,
    never the block's input)."""

    hook: str
    site: HookSite
    is_input: bool


@dataclass
class PassCounters:
    """Model calls the pipeline made, by purpose (0 where a cache answered). Tests and benchmarks
    read these to prove shared work ran once."""

    prefix_batches: int = 0  # prefix passes over the token set (states)
    ablation_batches: int = 0  # suffix batches of SAE-independent ablation baselines (one per baseline)
    clean_suffix_batches: int = 0  # clean suffixes in the splice loop (shared; 0 when the clean side is cached)
    spliced_suffix_batches: int = 0  # spliced suffixes (one per SAE per batch)
    task_forward_batches: int = 0  # model passes over probing-task examples
    example_forward_batches: int = 0  # calls of examples.latent_acts_at (n2g pruning/saliency)
    example_forward_rows: int = 0  # rows those calls evaluated (= naive count: one call per row)
    suffix_row_batches: int = 0  # row-batched suffix calls (ablation effects)
    suffix_rows: int = 0  # rows those calls evaluated
    position_forward_batches: int = 0  # prefix passes over prompt rows (positions.acts_at: absorption)
    position_rows: int = 0  # rows those calls evaluated


def padded_batches(
    rows: list[list[int]], pad_id: int, budget: int
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Token rows of different lengths as right-padded batches of at most ``budget`` tokens.

    Rows are taken longest first; yields ``(row indices, [b, width] tokens, [b] lengths)``.
    Right padding is exact for causal models (real tokens never attend to later pads).
    """
    order = sorted(range(len(rows)), key=lambda r: -len(rows[r]))
    i = 0
    while i < len(order):
        width = len(rows[order[i]])
        if width < 1:
            raise SaebenchError("got an empty token row; every row needs at least one token")
        take = order[i : i + max(1, budget // width)]
        i += len(take)
        batch = torch.full((len(take), width), pad_id, dtype=torch.long)
        for j, r in enumerate(take):
            batch[j, : len(rows[r])] = torch.as_tensor(rows[r])
        yield take, batch, torch.tensor([len(rows[r]) for r in take])


def _unreadable(exc: Exception) -> str:
    return f"unreadable: {str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__}"


def _entry_meta(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return fh.metadata() or {}


def _meta_problem(meta: dict[str, str], key: str) -> str | None:
    """Why an entry's header disqualifies it (None when its format and key are right)."""
    if meta.get("saebench_entry") != ENTRY_FORMAT or "sha256" not in meta:
        return "no checksum (written by an older saebench)"
    if meta.get("key") != key:
        return f"it holds key {meta.get('key')!r}, not {key!r}"
    return None


MISMATCH = "checksum mismatch: the file was damaged or overwritten"


def _try_load(path: Path, key: str) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    """A cache entry as ``(tensors, None)``; ``(None, None)`` when absent; ``(None, why)`` when it
    is unusable (unreadable, another key, no checksum, checksum mismatch). Running out of memory
    while reading is raised, never mistaken for a bad entry."""
    if not path.is_file():
        return None, None
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        meta = _entry_meta(path)
        why = _meta_problem(meta, key)
        if why is not None:
            return None, why
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        return None, _unreadable(exc)
    return (tensors, None) if tensors_digest(tensors) == meta["sha256"] else (None, MISMATCH)


def verify_entry(path: Path, key: str) -> str | None:
    """Check a cache entry without loading it whole (streams its tensors through the checksum):
    None when it is sound, else why not. For readers that stream an entry instead of loading it."""
    from safetensors import SafetensorError

    try:
        meta = _entry_meta(path)
        why = _meta_problem(meta, key)
        if why is None and file_tensors_digest(path) != meta["sha256"]:
            why = MISMATCH
    except (SafetensorError, OSError, ValueError) as exc:
        why = _unreadable(exc)
    return why


def discard_entry(path: Path, why: str) -> None:
    """Report a bad cache entry in one line and delete it (the caller recomputes it)."""
    log.warning(f"cache entry {path} is unusable ({why}); deleted, recomputing it")
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning(f"could not delete {path} ({exc.strerror}); delete it by hand")


def save_entry(path: Path, what: str, key: str, tensors: dict[str, torch.Tensor]) -> bool:
    """Write a cache entry with its key and checksum; False when the cache cannot take it.

    The cache is an optimisation: out of space (or read-only) is one warning for the whole
    process, after which the run goes on without writing cache entries."""
    folder = path.parent
    if str(folder) in _UNWRITABLE:
        return False
    meta = {"saebench_entry": ENTRY_FORMAT, "what": what, "key": key, "sha256": tensors_digest(tensors)}
    try:
        atomic_save_tensors(path, tensors, metadata=meta)
        return True
    except OSError as exc:
        _UNWRITABLE.add(str(folder))
        need = sum(t.numel() * t.element_size() for t in tensors.values())
        if is_out_of_space(exc):
            free = free_bytes(folder)
            room = f", {human_bytes(free)} free" if free is not None else ""
            why = f"out of space (an entry needs {human_bytes(need)}{room})"
        else:
            why = f"{exc.strerror or type(exc).__name__}"
        warn_once(
            f"cache-write:{folder}",
            f"cannot write the activation cache in {folder}: {why}; going on without caching "
            "(free space or set $SAEBENCH_CACHE to a larger disk)",
        )
        return False


def _data_offset(fh: Any) -> int:
    """Offset of the data section of the safetensors file open as ``fh`` (8 + header length)."""
    fh.seek(0)
    return 8 + struct.unpack("<Q", fh.read(8))[0]


class ActivationPipeline:
    """Model passes for one (model, hook, token set), shared by every evaluator and SAE.

    Position 0 (the BOS) is kept clean in every spliced/ablated run and left out of every average.
    """

    def __init__(
        self,
        model: SubjectModel,
        tokens: TokenSet,
        hook: str,
        batch_size: int,
        use_cache: bool = True,
        progress: bool = True,
    ) -> None:
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
        self.counters = PassCounters()
        self.memo: dict[str, Any] = {}  # shared inputs computed in this process, by key (see ``shared``)

    # -- memo and disk cache -------------------------------------------------------------------
    def shared(self, key: str, compute: Callable[[], T]) -> T:
        """``compute()`` once per pipeline: every later call (any SAE, any evaluator) reuses it."""
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]

    def cache_key(self, what: str, *parts: str) -> str:
        """Content key of a cache entry: version, kind, model, hook site, dtype and ``parts``."""
        raw = "|".join(
            [CACHE_VERSION, what, self.model.name, self.hook, str(self.site.start), str(self.model.dtype), *parts]
        )
        return hashlib.sha256(raw.encode()).hexdigest()[:20]

    def cache_path(self, what: str, key: str, label: str = "") -> Path:
        name = f"{what}-{slug(label) + '-' if label else ''}{slug(self.hook)}-{key}.safetensors"
        return cache_dir() / "activations" / slug(self.model.name) / name

    def load_cached(self, what: str, key: str, label: str = "") -> dict[str, torch.Tensor] | None:
        """The tensors of cache entry (``what``, ``key``), or None (absent, unreadable, or caching off)."""
        if not self.use_cache:
            return None
        path = self.cache_path(what, key, label)
        found, why = _try_load(path, key)
        if found is None and why is not None:
            discard_entry(path, why)
        return found

    def save_cached(self, what: str, key: str, tensors: dict[str, torch.Tensor], label: str = "") -> None:
        """Write cache entry (``what``, ``key``) atomically (nothing when caching is off)."""
        if self.use_cache:
            save_entry(self.cache_path(what, key, label), what, key, tensors)

    def cached_tensors(
        self,
        what: str,
        key: str,
        compute: Callable[[], dict[str, torch.Tensor]],
        valid: Callable[[dict[str, torch.Tensor]], bool] = lambda t: True,
        label: str = "",
    ) -> tuple[dict[str, torch.Tensor], bool]:
        """Tensors from the disk cache entry (``what``, ``key``) or from ``compute()`` (then saved).

        Returns ``(tensors, from_cache)``. An entry whose key or checksum does not match, or one
        ``valid`` rejects, is reported, deleted and recomputed. Computing holds the entry's lock,
        so concurrent processes compute it once. A cache that cannot be written is skipped (one
        warning). With ``use_cache`` off the cache is neither read nor written.
        """
        path = self.cache_path(what, key, label)
        if not self.use_cache:
            return compute(), False
        found, _ = _try_load(path, key)
        if found is not None and valid(found):
            return found, True
        with file_lock(lock_path(path), f"cache entry {path.name}"):
            # under the lock: another process may have written it while we waited
            found, why = _try_load(path, key)
            if found is not None and not valid(found):
                found, why = None, "its shapes do not match this token set"
            if found is not None:
                return found, True
            if why is not None:
                discard_entry(path, why)
            tensors = compute()
            save_entry(path, what, key, tensors)
        return tensors, False

    def add_time(self, stage: str, t0: float) -> None:
        """Add the seconds since ``t0`` to ``timing[stage]``."""
        self.timing[stage] = self.timing.get(stage, 0.0) + time.perf_counter() - t0

    def batch_starts(self, desc: str) -> Any:
        """Batch start indices over the token set's contexts, with a progress bar."""
        n = self.tokens.tokens.shape[0]
        return tqdm(range(0, n, self.batch_size), desc=desc, disable=not self.progress, leave=False, unit="batch")

    # -- prefix states -------------------------------------------------------------------------
    def states(self) -> PrefixStates:
        """Residual stream entering the hook's block, ``[n_seq, T, d_model]`` (cached on disk).

        A :class:`~saebench.pipeline.stored.PrefixStates`: indexed like a tensor on its first
        axis (``states[a:b]``, ``states[idx]``, ``states[idx, :end]``), each index reading only
        those contexts from the cache file, so memory holds one batch of states at a time."""
        return self.shared("states", self._load_states)

    def _states_shape(self) -> tuple[int, ...]:
        n, t = self.tokens.tokens.shape
        return (int(n), int(t), self.model.d_model)

    def _prefix_batches(self) -> Iterator[torch.Tensor]:
        for s in self.batch_starts(f"prefix to {self.hook}"):
            yield self.model.prefix(self.tokens.tokens[s : s + self.batch_size], self.site).cpu()
            self.counters.prefix_batches += 1

    def _load_states(self) -> PrefixStates:
        return self.streamed(
            "states", self._states_shape(), self.model.dtype, self._prefix_batches, time_label="prefix"
        )

    def streamed(
        self,
        what: str,
        shape: tuple[int, ...],
        dtype: torch.dtype,
        batches: Callable[[], Iterable[torch.Tensor]],
        time_label: str | None = None,
    ) -> PrefixStates:
        """A ``[n_seq, ...]`` array of cache kind ``what`` for this token set, read a batch slice at a
        time (:class:`~saebench.pipeline.stored.PrefixStates`): the cache entry when present and
        intact, else ``batches()`` (consecutive row blocks) streamed into it, so the array never
        exists in memory whole. Without a writable cache: an anonymous temporary file (or memory)."""
        t0 = time.perf_counter()
        label = time_label or what
        key = self.cache_key(what, self.tokens.fingerprint())
        path = self.cache_path(what, key)
        if self.use_cache and str(path.parent) not in _UNWRITABLE:
            found = open_states(path, key, shape, dtype)
            if found is not None:
                self.add_time(f"{label}_cached_s", t0)
                return found
            with file_lock(lock_path(path), f"cache entry {path.name}"):
                # under the lock: another process may have written it while we waited
                found = open_states(path, key, shape, dtype)
                if found is None and path.exists():
                    discard_entry(path, "damaged, stale, or of another shape")
                if found is None:
                    try:
                        save_states(path, shape, dtype, key, batches())
                        found = open_states(path, key, shape, dtype, verify=False)  # just written and fsynced
                    except OSError as exc:
                        _UNWRITABLE.add(str(path.parent))
                        path.unlink(missing_ok=True)
                        full = is_out_of_space(exc)
                        warn_once(
                            f"cache-write:{path.parent}",
                            f"cannot write the activation cache in {path.parent} ("
                            + ("out of space" if full else str(exc.strerror))
                            + f"); holding {what} in {'memory' if full else 'a temporary file'} "
                            "(free space or set $SAEBENCH_CACHE to a larger disk)",
                        )
                        if full:  # a temporary file on the same disk would not fit either
                            found = PrefixStates.in_memory(torch.cat(list(batches())))
            if found is not None:
                self.add_time(f"{label}_s", t0)
                return found
        states = self._temporary_states(key, shape, dtype, batches)
        self.add_time(f"{label}_s", t0)
        return states

    def _temporary_states(
        self, key: str, shape: tuple[int, ...], dtype: torch.dtype, batches: Callable[[], Iterable[torch.Tensor]]
    ) -> PrefixStates:
        """An array in an anonymous temporary file (deleted when closed or the process dies) beside
        the cache, or in memory when no file can be made there."""
        try:
            folder = cache_dir() / "activations"
            folder.mkdir(parents=True, exist_ok=True)
            fh = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115 - owned by PrefixStates
        except OSError:
            return PrefixStates.in_memory(torch.cat(list(batches())))
        try:
            write_states(fh, shape, dtype, key, batches())
        except OSError:  # the disk filled up under us: hold them in memory
            with contextlib.suppress(OSError):  # closing flushes what did not fit: fails the same way
                fh.close()
            return PrefixStates.in_memory(torch.cat(list(batches())))
        return PrefixStates(fh, _data_offset(fh), shape, dtype)

    def acts_batch(self, state: torch.Tensor) -> torch.Tensor:
        """Hook activations for a batch of prefix states (on the model's device)."""
        return self.model.hook_acts(state.to(self.model.device), self.site)

    def hook_width(self) -> int:
        """Width of the hook activation (what an SAE's d_in must equal)."""
        if self.site.is_resid:
            return self.model.d_model
        return self.shared("hook_width", lambda: int(self.acts_batch(self.states()[:1]).shape[-1]))

    def check_sae(self, sae: Any, label: str) -> None:
        """Refuse an SAE whose d_in differs from the hook's width, before any work is spent (a per-head
        hook's width comes from the model's config, with no prefix pass); for a transcoder also an
        output hook not downstream of the input, or a d_out other than the output hook's width."""
        heads = head_shape(self.model.shape, self.hook)
        width = heads[0] * heads[1] if heads is not None else self.hook_width()
        if int(sae.d_in) != width:
            raise SaebenchError(width_error(label, int(sae.d_in), self.hook, self.model.name, width, heads))
        target = self.target(sae, label)
        if not target.is_input:
            from saebench.sae import output_width
            from saebench.transcoder import out_width_error

            width = self.target_width(target)
            if output_width(sae) != width:
                raise SaebenchError(out_width_error(label, output_width(sae), target.hook, self.model.name, width))

    # -- transcoders: the output hook -------------------------------------------------------------
    def target(self, sae: Any, label: str = "SAE") -> SpliceTarget:
        """Where ``sae``'s output goes (:class:`SpliceTarget`): this pipeline's hook for an SAE, the
        output hook of a transcoder (refused in one line when not downstream of the input)."""
        from saebench.transcoder import check_target

        out = check_target(sae, self.hook, self.model.n_layers, label)
        if out == self.hook:
            return SpliceTarget(self.hook, self.site, True)
        self.model.hook_site(out)  # a hook the model has
        return SpliceTarget(out, HookSite(out, self.site.start, False), False)

    def target_acts(self, state: torch.Tensor, target: SpliceTarget) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)``: the hook activation an SAE reads and the one its output is compared with, for a
        batch of prefix states (the same tensor for an SAE; one pass for a transcoder)."""
        if target.is_input:
            acts = self.acts_batch(state)
            return acts, acts
        return self.model.hook_acts_pair(state.to(self.model.device), self.site, target.hook)

    def target_width(self, target: SpliceTarget) -> int:
        """Width of the target hook's activation (what an SAE's output width must equal)."""
        if target.is_input:
            return self.hook_width()
        known = hook_width(self.model.shape, target.hook)
        if known is not None:
            return known
        return self.shared(
            f"hook_width:{target.hook}", lambda: int(self.target_acts(self.states()[:1], target)[1].shape[-1])
        )

    def target_mean(self, target: SpliceTarget) -> torch.Tensor:
        """Mean target activation over the kept positions (float64): :meth:`mean_act` for an SAE."""
        if target.is_input:
            return self.mean_act()
        return self.shared(f"mean_act:{target.hook}", lambda: self._mean_act(target))

    def mean_act(self) -> torch.Tensor:
        """Mean hook activation over the token set's kept positions (not holding the BOS id), float64."""
        return self.shared("mean_act", self._mean_act)

    def _mean_act(self, target: SpliceTarget | None = None) -> torch.Tensor:
        states, toks = self.states(), self.tokens.tokens
        total = torch.zeros(self.hook_width() if target is None else self.target_width(target), dtype=torch.float64)
        n = 0
        for s in range(0, states.shape[0], self.batch_size):
            keep = toks[s : s + self.batch_size] != self.model.bos_id
            if target is None:
                acts = self.acts_batch(states[s : s + self.batch_size])
            else:
                acts = self.target_acts(states[s : s + self.batch_size], target)[1]
            total += acts[keep.to(acts.device)].double().sum(0).cpu()
            n += int(keep.sum())
        return total / max(n, 1)

    # -- SAE encodes over contexts -------------------------------------------------------------
    def seq_index(self, seqs: Any) -> torch.Tensor:
        """Context indices as a 1-D long tensor (all contexts when ``seqs`` is None), validated."""
        n = self.tokens.tokens.shape[0]
        if seqs is None:
            return torch.arange(n)
        idx = torch.as_tensor(seqs, dtype=torch.long).reshape(-1)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise SaebenchError(f"context indices must lie in 0..{n - 1}; got {int(idx.min())}..{int(idx.max())}")
        return idx

    def encode_seqs(self, sae: Any, seqs: Any = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(seq ids [b], z [b, T-1, d_sae])``: latents at positions 1..T-1 (BOS never encoded;
        positions holding the BOS id as a document separator read 0: special positions are never
        examples), ``batch_size`` contexts at a time; never more than ``batch_size x T x d_sae`` floats."""
        states = self.states()
        idx_all = self.seq_index(seqs)
        for s in range(0, idx_all.numel(), self.batch_size):
            idx = idx_all[s : s + self.batch_size]
            acts = self.acts_batch(states[idx])
            with torch.no_grad():
                z = sae.encode(acts[:, 1:])
            if z.shape[-1] != int(sae.d_sae):
                raise SaebenchError(
                    f"SAE encode gave {z.shape[-1]} latents but d_sae is {sae.d_sae}; fix the SAE's d_sae"
                )
            special = (self.tokens.tokens[idx, 1:] == self.model.bos_id).to(z.device)
            if bool(special.any()):
                z = z.masked_fill(special.unsqueeze(-1), 0)
            yield idx, z
