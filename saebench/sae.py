"""The SAE protocol, the native format and the built-in architectures.

Any object with ``encode(x) -> z``, ``decode(z) -> x_hat``, ``d_in`` and ``d_sae`` is an SAE
(:class:`SAEProtocol`). Our native format is a directory with ``cfg.json`` and
``sae.safetensors`` using SAELens's tensor names (``W_enc [d_in, d_sae]``, ``b_enc``,
``W_dec [d_sae, d_in]``, ``b_dec``, plus ``threshold`` for JumpReLU/BatchTopK and
``b_gate``/``r_mag``/``b_mag`` for Gated). The five built-in encoders, each next to its paper:

- ``relu``      z = ReLU(W_enc (x - b_dec) + b_enc)                      (Bricken et al. 2023)
- ``topk``      z = TopK_k(ReLU(W_enc (x - b_dec) + b_enc))              (Gao et al. 2024)
- ``batchtopk`` training picks the top k*B over a batch; at inference a global threshold
                z = pre * 1[pre > threshold], or per-token TopK_k when no threshold is stored
                                                                         (Bussmann et al. 2024)
- ``jumprelu``  z = pre * 1[pre > threshold_i]                           (Rajamanoharan et al. 2024b)
- ``gated``     z = 1[W_enc x' + b_gate > 0] * ReLU((W_enc * exp(r_mag)) x' + b_mag)
                                                                         (Rajamanoharan et al. 2024a)

and ``decode(z) = z W_dec + b_dec`` for all. ``apply_b_dec_to_input`` (default true) controls
the ``x - b_dec`` centring; ``act_scale`` records an activation normalisation used in training:
the SAE sees ``x * act_scale`` and its output is divided by it, so callers always work in the
model's units.

**Transcoders** (Dunefsky, Chlenski & Nanda 2024; Paulo et al. 2025 for the skip term) read one
hook and write another: the same encoders, an output hook ``hook_name_out`` (e.g.
``blocks.L.hook_mlp_out`` for an MLP transcoder reading ``blocks.L.ln2.hook_normalized``), an output
width ``d_out`` (``W_dec [d_sae, d_out]``, ``b_dec [d_out]``), no input centring, and for a
skip-transcoder ``W_skip [d_out, d_in]`` (SAELens' orientation): the prediction of the output is

    y_hat = decode(encode(x)) + x W_skip^T                               (:func:`reconstruct`)

Both are optional protocol members: an object without them is an SAE (``hook_name_out`` absent or
equal to ``hook_name``, ``d_out == d_in``), exactly as before.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from saebench.errors import SaebenchError
from saebench.io import TMP_MARK, as_os_error, check_memory, read_json_object, writing_in

ARCHITECTURES = ("relu", "topk", "batchtopk", "jumprelu", "gated")


@runtime_checkable
class SAEProtocol(Protocol):
    """What saebench needs from an SAE; optional members (``W_dec``, ``encode_pre``,
    ``hook_name``, ``model_name``, ``matryoshka_widths``; for a transcoder ``hook_name_out``,
    ``d_out`` and ``W_skip``) unlock more metrics and defaults."""

    d_in: int
    d_sae: int

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


Size = Annotated[int, Strict(), Field(ge=1)]  # a JSON integer: no "576", no true, no 576.0


class SAEConfig(BaseModel):
    """``cfg.json`` of the native format. Sizes must be positive JSON integers, ``k`` at most
    ``d_sae``, ``act_scale`` a positive finite number: a config is checked whole before anything
    is allocated from it."""

    model_config = ConfigDict(extra="allow")

    architecture: Literal["relu", "topk", "batchtopk", "jumprelu", "gated"]
    d_in: Size
    d_sae: Size
    hook_name: str | None = None
    model_name: str | None = None
    k: Size | None = None
    apply_b_dec_to_input: Annotated[bool, Strict()] = True
    act_scale: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    # "none", or "layer_norm" (per-token LayerNorm of the input, undone on decode; OpenAI/SAELens).
    # A constant rescaling used in training is recorded as act_scale, not here.
    normalize_activations: Literal["none", "layer_norm"] = "none"
    # Matryoshka SAEs (Bussmann et al. 2025): the nested prefix widths, each prefix an SAE of that
    # width (latents [0, m)); strictly increasing, at most d_sae (SAELens' ``matryoshka_widths``)
    matryoshka_widths: list[Size] | None = None
    # transcoders: the hook the output is written to (None: hook_name, an SAE), its width (None:
    # d_in), and a linear skip term W_skip [d_out, d_in] (skip-transcoders)
    hook_name_out: str | None = None
    d_out: Size | None = None
    skip_connection: Annotated[bool, Strict()] = False

    @field_validator("act_scale", mode="before")
    @classmethod
    def _number(cls, v: Any) -> Any:
        if isinstance(v, (bool, str)):
            raise ValueError("must be a number")
        return v

    @model_validator(mode="after")
    def _k_fits(self) -> SAEConfig:
        if self.k is not None and self.k > self.d_sae:
            raise ValueError(f"k={self.k} exceeds d_sae={self.d_sae}")
        if self.is_transcoder and self.apply_b_dec_to_input:
            raise ValueError(
                "a transcoder cannot centre its input by b_dec (b_dec lives at the output hook); "
                "set apply_b_dec_to_input to false"
            )
        if self.is_transcoder and self.normalize_activations != "none":
            raise ValueError("a transcoder with normalize_activations 'layer_norm' is not supported; use 'none'")
        return self

    @property
    def is_transcoder(self) -> bool:
        """True when the SAE writes a hook or width other than the one it reads, or has a skip term."""
        return (
            self.skip_connection
            or (self.d_out is not None and self.d_out != self.d_in)
            or (self.hook_name_out is not None and self.hook_name_out != self.hook_name)
        )

    @field_validator("matryoshka_widths")
    @classmethod
    def _prefixes(cls, v: list[int] | None, info: ValidationInfo) -> list[int] | None:
        d_sae = info.data.get("d_sae")
        return v if v is None or d_sae is None else check_prefix_widths(v, d_sae)


def check_prefix_widths(widths: Any, d_sae: int, where: str = "") -> list[int]:
    """A Matryoshka prefix list as plain ints: non-empty, positive integers, strictly increasing,
    none above ``d_sae``. Raises ``ValueError`` (pydantic turns it into a field error) naming the
    fault and the fix; ``where`` prefixes the message."""
    at = f"{where}: " if where else ""
    if not isinstance(widths, (list, tuple)) or not widths:
        raise ValueError(f"{at}matryoshka_widths must be a non-empty list of prefix widths, e.g. [128, 512, {d_sae}]")
    if not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths):
        raise ValueError(f"{at}matryoshka_widths {list(widths)} must hold positive integers")
    out = [int(w) for w in widths]
    if any(out[i + 1] <= out[i] for i in range(len(out) - 1)):
        raise ValueError(
            f"{at}matryoshka_widths {out} is not strictly increasing; list each prefix width once, smallest first"
        )
    if out[-1] > d_sae:
        raise ValueError(
            f"{at}matryoshka_widths {out} exceeds d_sae={d_sae}; the largest prefix is at most the dictionary"
        )
    return out


class NativeSAE(torch.nn.Module):
    """One module for the five built-in architectures (see the module docstring)."""

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.d_in, self.d_sae = cfg.d_in, cfg.d_sae
        self.d_out = cfg.d_out or cfg.d_in
        self.hook_name, self.model_name = cfg.hook_name, cfg.model_name
        self.hook_name_out = cfg.hook_name_out or cfg.hook_name
        if cfg.architecture in ("topk",) and not cfg.k:
            raise SaebenchError(f"architecture {cfg.architecture!r} needs 'k' in cfg.json")
        d_in, d_sae, d_out = cfg.d_in, cfg.d_sae, self.d_out
        self.W_enc = torch.nn.Parameter(torch.zeros(d_in, d_sae))
        self.b_enc = torch.nn.Parameter(torch.zeros(d_sae))
        self.W_dec = torch.nn.Parameter(torch.zeros(d_sae, d_out))
        self.b_dec = torch.nn.Parameter(torch.zeros(d_out))
        if cfg.skip_connection:
            self.W_skip = torch.nn.Parameter(torch.zeros(d_out, d_in))
        if cfg.architecture == "jumprelu":
            self.threshold = torch.nn.Parameter(torch.zeros(d_sae))
        if cfg.architecture == "batchtopk":
            self.threshold = torch.nn.Parameter(torch.full((), float("nan")))
        if cfg.architecture == "gated":
            self.b_gate = torch.nn.Parameter(torch.zeros(d_sae))
            self.r_mag = torch.nn.Parameter(torch.zeros(d_sae))
            self.b_mag = torch.nn.Parameter(torch.zeros(d_sae))

    @classmethod
    def from_tensors(cls, cfg: SAEConfig, tensors: dict[str, torch.Tensor]) -> NativeSAE:
        """A module whose parameters *are* ``tensors`` (float32, shapes checked by the caller):
        built on the meta device first, so loading never holds a second, zero-filled copy."""
        with torch.device("meta"):
            sae = cls(cfg)
        for name, meta_param in list(sae.named_parameters()):
            t = tensors.get(name)
            if t is None:  # optional (a BatchTopK threshold never calibrated: NaN)
                t = torch.full(meta_param.shape, float("nan") if name == "threshold" else 0.0)
            setattr(sae, name, torch.nn.Parameter(t.detach().to(torch.float32).contiguous()))
        return sae

    @property
    def architecture(self) -> str:
        return self.cfg.architecture

    @property
    def matryoshka_widths(self) -> list[int] | None:
        """The declared Matryoshka prefix widths (None for a plain SAE); an optional protocol member."""
        return list(self.cfg.matryoshka_widths) if self.cfg.matryoshka_widths else None

    def _sae_in(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.W_enc.dtype) * self.cfg.act_scale
        if self.cfg.normalize_activations == "layer_norm":
            x = self._layer_norm_in(x)
        return x - self.b_dec if self.cfg.apply_b_dec_to_input else x

    def _layer_norm_in(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token LayerNorm of the input (OpenAI's TopK SAEs, SAELens ``layer_norm``):
        (x - mean) / (std + 1e-5). The statistics of the last ``encode`` are kept so ``decode``
        can map back to model units, as both source libraries do."""
        mu = x.mean(dim=-1, keepdim=True)
        std = (x - mu).std(dim=-1, keepdim=True)
        self._ln_stats = (mu, std)
        return (x - mu) / (std + 1e-5)

    def _layer_norm_out(self, out: torch.Tensor) -> torch.Tensor:
        stats = getattr(self, "_ln_stats", None)
        if stats is None or stats[0].shape[:-1] != out.shape[:-1]:
            raise SaebenchError(
                "a layer_norm SAE decodes in the units of its last encode call; call encode(x) on the same tokens "
                "before decode(z)"
            )
        return out * stats[1] + stats[0]

    def encode_pre(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations (for gated: the magnitude path's pre-activation)."""
        xin = self._sae_in(x)
        if self.cfg.architecture == "gated":
            return xin @ (self.W_enc * torch.exp(self.r_mag)) + self.b_mag
        return xin @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        arch = self.cfg.architecture
        pre = self.encode_pre(x)
        if arch == "relu":
            return torch.relu(pre)
        if arch == "topk" or (arch == "batchtopk" and torch.isnan(self.threshold)):
            return topk_relu(pre, int(self.cfg.k or 0))
        if arch in ("jumprelu", "batchtopk"):
            return pre * (pre > self.threshold)
        gate = self._sae_in(x) @ self.W_enc + self.b_gate
        return (gate > 0).to(pre.dtype) * torch.relu(pre)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        out = z.to(self.W_dec.dtype) @ self.W_dec + self.b_dec
        if self.cfg.normalize_activations == "layer_norm":
            out = self._layer_norm_out(out)
        return out / self.cfg.act_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The prediction of the output hook (the input's reconstruction for an SAE)."""
        return reconstruct(self, x)


def is_transcoder(sae: Any) -> bool:
    """Whether ``sae`` (any protocol object) writes another hook or width than it reads, or has a
    skip term: the optional members ``hook_name_out``, ``d_out`` and ``W_skip``."""
    hook_in, hook_out = getattr(sae, "hook_name", None), getattr(sae, "hook_name_out", None)
    d_out = getattr(sae, "d_out", None)
    return (
        getattr(sae, "W_skip", None) is not None
        or (d_out is not None and int(d_out) != int(sae.d_in))
        or (hook_out is not None and hook_out != hook_in)
    )


def output_hook(sae: Any) -> str | None:
    """The hook an SAE's output is compared with and spliced into: ``hook_name_out`` for a
    transcoder, else ``hook_name`` (None when the SAE declares neither)."""
    return getattr(sae, "hook_name_out", None) or getattr(sae, "hook_name", None)


def output_width(sae: Any) -> int:
    """``d_out`` when declared, else ``d_in``."""
    d_out = getattr(sae, "d_out", None)
    return int(d_out) if d_out is not None else int(sae.d_in)


def reconstruct(sae: Any, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
    """The SAE's prediction of its output activation from input ``x`` (latents ``z`` when already
    encoded): ``decode(z)``, plus ``x W_skip^T`` for a skip-transcoder. The one place the skip term
    is added, so every evaluator sees the same output."""
    if z is None:
        z = sae.encode(x)
    out = sae.decode(z)
    w_skip = getattr(sae, "W_skip", None)
    if w_skip is not None:
        out = out + x.to(w_skip.dtype) @ w_skip.T
    return out


def copy_transcoder_members(src: Any, view: Any) -> None:
    """Give ``view`` (a wrapper of ``src``: a prefix, a TopK at another k) ``src``'s hooks, output width
    and skip term, so the view writes where ``src`` writes (an SAE's view stays an SAE)."""
    for name in ("hook_name", "hook_name_out", "d_out", "W_skip"):
        value = getattr(src, name, None)
        if value is not None:
            setattr(view, name, value)


def topk_relu(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest pre-activations per row (after ReLU), zero the rest."""
    vals, idx = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter_(-1, idx, torch.relu(vals))


# ---------------------------------------------------------------------------------------------
# native format


def native_shapes(cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
    """The tensors (and shapes) a native SAE of ``cfg`` holds; a BatchTopK ``threshold`` is a scalar."""
    d_in, d_sae, d_out = cfg.d_in, cfg.d_sae, cfg.d_out or cfg.d_in
    shapes: dict[str, tuple[int, ...]] = {
        "W_enc": (d_in, d_sae),
        "b_enc": (d_sae,),
        "W_dec": (d_sae, d_out),
        "b_dec": (d_out,),
    }
    if cfg.skip_connection:
        shapes["W_skip"] = (d_out, d_in)
    if cfg.architecture == "jumprelu":
        shapes["threshold"] = (d_sae,)
    if cfg.architecture == "batchtopk":
        shapes["threshold"] = ()
    if cfg.architecture == "gated":
        shapes.update(b_gate=(d_sae,), r_mag=(d_sae,), b_mag=(d_sae,))
    return shapes


def save_native(sae: NativeSAE, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``cfg.json`` + ``sae.safetensors`` atomically (the folder appears whole or not);
    filesystem errors (a full disk) are raised as ``OSError``, the temp folder removed."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with writing_in(folder.parent):
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}{TMP_MARK}"))
        try:
            tensors = {
                k: (v.detach().to(dtype) if dtype else v.detach()).contiguous().cpu()
                for k, v in sae.state_dict().items()
            }
            try:
                save_file(tensors, str(tmp / "sae.safetensors"))
            except SafetensorError as exc:
                raise as_os_error(exc, str(tmp / "sae.safetensors")) from exc
            (tmp / "cfg.json").write_text(json.dumps(config_dict(sae.cfg), indent=2, sort_keys=True) + "\n")
            for f in tmp.iterdir():
                f.chmod(0o644)
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            tmp.chmod(0o755)  # mkdtemp makes 0700; a saved SAE is meant to be shared
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return folder


def config_dict(cfg: SAEConfig) -> dict[str, Any]:
    """``cfg`` as written to ``cfg.json``: the transcoder keys only when set, so an SAE's file is
    what it was before transcoders existed."""
    out = cfg.model_dump()
    for key, unset in (("hook_name_out", None), ("d_out", None), ("skip_connection", False)):
        if out.get(key) == unset:
            out.pop(key, None)
    return out


def parse_config(raw: object, where: str) -> SAEConfig:
    """Validate a native ``cfg.json`` (already parsed) into :class:`SAEConfig`; one-line errors."""
    if not isinstance(raw, dict):
        raise SaebenchError(f"{where} holds a JSON {type(raw).__name__}, not an object; fix or regenerate it")
    arch = raw.get("architecture")
    if arch not in ARCHITECTURES:
        raise SaebenchError(
            f"{where}: unknown architecture {arch!r}; use one of {', '.join(ARCHITECTURES)} "
            "or load your own class with --sae python:FILE.py:FACTORY"
        )
    try:
        return SAEConfig(**raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise SaebenchError(f"{where}: field {'.'.join(map(str, err['loc']))}: {err['msg']}") from exc


def load_native(folder: str | Path, device: str = "cpu") -> NativeSAE:
    """Load a native directory, checking architecture, shapes and finiteness.

    The weights file's header (tensor names and shapes) is checked against ``cfg.json`` before
    any tensor is read or allocated, so a config claiming a huge ``d_sae`` costs nothing.
    """
    folder = Path(folder)
    cfg_path, weights = folder / "cfg.json", folder / "sae.safetensors"
    if not cfg_path.is_file():
        raise SaebenchError(f"{folder} has no cfg.json; a native SAE is a folder with cfg.json + sae.safetensors")
    if not weights.is_file():
        raise SaebenchError(
            f"{folder} has no sae.safetensors; a native SAE is a folder with cfg.json + sae.safetensors"
        )
    cfg = parse_config(read_json_object(cfg_path, "SAE config"), str(cfg_path))
    expected = native_shapes(cfg)
    header = safetensors_shapes(weights)
    if cfg.architecture == "batchtopk" and "threshold" not in header:
        expected.pop("threshold")  # never calibrated: per-token TopK
    missing = sorted(set(expected) - set(header))
    if missing:
        raise SaebenchError(
            f"{weights} lacks tensor(s) {', '.join(missing)} needed by architecture {cfg.architecture!r}"
        )
    for name, shape in expected.items():
        got = header[name]
        numel = 1
        for n in got:
            numel *= n
        if got != shape and not (name == "threshold" and numel in (1, cfg.d_sae)):
            raise SaebenchError(f"{weights}: tensor {name} has shape {list(got)}, cfg.json implies {list(shape)}")
    check_load_memory(weights, used=expected)
    tensors = read_safetensors(weights)
    check_finite(tensors, str(weights))
    params = {}
    for name in expected:
        t = tensors.pop(name)
        if name == "threshold" and tuple(t.shape) != expected[name]:
            t = t.reshape(-1) if t.numel() > 1 else t.reshape(())
        params[name] = t
    return NativeSAE.from_tensors(cfg, params).to(device).eval()


def check_load_memory(path: Path, used: Any = None) -> None:
    """Refuse, before reading, a weights file whose tensors (as stored, plus float32 copies of
    those stored narrower) would not fit in the memory available. ``used``: the tensor names
    that are kept (default: all)."""
    from saebench.io import ST_ITEMSIZE, human_bytes, safetensors_header

    entries = safetensors_header(path)
    stored = sum(math.prod(shape) * ST_ITEMSIZE[dtype] for dtype, shape in entries.values())
    widened = sum(
        math.prod(shape) * 4
        for n, (dtype, shape) in entries.items()
        if (used is None or n in used) and ST_ITEMSIZE[dtype] < 4
    )
    check_memory(
        stored + widened,
        f"loading {path} ({human_bytes(stored)} of tensors)",
        "load it on a machine with more memory, or free memory",
    )


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a safetensors header, without reading any tensor data."""
    from saebench.io import safetensors_header

    return {name: shape for name, (_, shape) in safetensors_header(path).items()}


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a truncated or foreign file is a one-line error."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SaebenchError(
            f"{path} is not a readable safetensors file "
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
            "it may be truncated or another format: re-download or re-save it"
        ) from exc


def check_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Refuse NaN/Inf weights, naming the tensor."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise SaebenchError(
                f"{where}: tensor {name} has {bad} NaN/Inf value(s); the SAE is corrupt, retrain or re-export it"
            )


def fingerprint_module(module: torch.nn.Module, extra: str = "") -> str:
    """A short content hash of a module's parameters (identifies the SAE in results)."""
    h = hashlib.sha256(extra.encode())
    for key, val in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(val.detach().cpu().contiguous().to(torch.float32).numpy())  # the buffer itself: no copy
    return h.hexdigest()[:16]
