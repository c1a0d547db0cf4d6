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
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import pickle
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from saebench.errors import SaebenchError

ARCHITECTURES = ("relu", "topk", "batchtopk", "jumprelu", "gated")
REFERENCE_DIR = Path(__file__).parent / "reference"


@runtime_checkable
class SAEProtocol(Protocol):
    """What saebench needs from an SAE; optional members (``W_dec``, ``encode_pre``,
    ``hook_name``, ``model_name``) unlock more metrics and defaults."""

    d_in: int
    d_sae: int

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


class SAEConfig(BaseModel):
    """``cfg.json`` of the native format."""

    model_config = ConfigDict(extra="allow")

    architecture: Literal["relu", "topk", "batchtopk", "jumprelu", "gated"]
    d_in: int
    d_sae: int
    hook_name: str | None = None
    model_name: str | None = None
    k: int | None = None
    apply_b_dec_to_input: bool = True
    act_scale: float = 1.0
    normalize_activations: str = "none"


class NativeSAE(torch.nn.Module):
    """One module for the five built-in architectures (see the module docstring)."""

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.d_in, self.d_sae = cfg.d_in, cfg.d_sae
        self.hook_name, self.model_name = cfg.hook_name, cfg.model_name
        if cfg.architecture in ("topk",) and not cfg.k:
            raise SaebenchError(f"architecture {cfg.architecture!r} needs 'k' in cfg.json")
        d_in, d_sae = cfg.d_in, cfg.d_sae
        self.W_enc = torch.nn.Parameter(torch.zeros(d_in, d_sae))
        self.b_enc = torch.nn.Parameter(torch.zeros(d_sae))
        self.W_dec = torch.nn.Parameter(torch.zeros(d_sae, d_in))
        self.b_dec = torch.nn.Parameter(torch.zeros(d_in))
        if cfg.architecture == "jumprelu":
            self.threshold = torch.nn.Parameter(torch.zeros(d_sae))
        if cfg.architecture == "batchtopk":
            self.threshold = torch.nn.Parameter(torch.full((), float("nan")))
        if cfg.architecture == "gated":
            self.b_gate = torch.nn.Parameter(torch.zeros(d_sae))
            self.r_mag = torch.nn.Parameter(torch.zeros(d_sae))
            self.b_mag = torch.nn.Parameter(torch.zeros(d_sae))

    @property
    def architecture(self) -> str:
        return self.cfg.architecture

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
                "a layer_norm SAE decodes in the units of its last encode call; call encode(x) on the same tokens before decode(z)"
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
        return self.decode(self.encode(x))


def topk_relu(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest pre-activations per row (after ReLU), zero the rest."""
    vals, idx = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter_(-1, idx, torch.relu(vals))


# ---------------------------------------------------------------------------------------------
# native format


def save_native(sae: NativeSAE, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``cfg.json`` + ``sae.safetensors`` atomically (the folder appears whole or not)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    tensors = {k: (v.detach().to(dtype) if dtype else v.detach()).contiguous().cpu()
               for k, v in sae.state_dict().items()}
    save_file(tensors, str(tmp / "sae.safetensors"))
    (tmp / "cfg.json").write_text(json.dumps(sae.cfg.model_dump(), indent=2, sort_keys=True) + "\n")
    for f in tmp.iterdir():
        f.chmod(0o644)
    tmp.chmod(0o755)  # mkdtemp makes 0700; a saved SAE is meant to be shared
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def load_native(folder: str | Path, device: str = "cpu") -> NativeSAE:
    """Load a native directory, checking architecture, shapes and finiteness."""
    folder = Path(folder)
    cfg_path, weights = folder / "cfg.json", folder / "sae.safetensors"
    if not cfg_path.is_file():
        raise SaebenchError(f"{folder} has no cfg.json; a native SAE is a folder with cfg.json + sae.safetensors")
    if not weights.is_file():
        raise SaebenchError(f"{folder} has no sae.safetensors; a native SAE is a folder with cfg.json + sae.safetensors")
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise SaebenchError(f"{cfg_path} is not valid JSON ({exc.msg} at line {exc.lineno}); fix or regenerate it") from exc
    arch = raw.get("architecture")
    if arch not in ARCHITECTURES:
        raise SaebenchError(
            f"{cfg_path}: unknown architecture {arch!r}; use one of {', '.join(ARCHITECTURES)} "
            "or load your own class with --sae python:FILE.py:FACTORY"
        )
    try:
        cfg = SAEConfig(**raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise SaebenchError(f"{cfg_path}: field {'.'.join(map(str, err['loc']))}: {err['msg']}") from exc
    tensors = read_safetensors(weights)
    sae = NativeSAE(cfg)
    expected = {k: tuple(v.shape) for k, v in sae.state_dict().items()}
    if cfg.architecture == "batchtopk" and "threshold" not in tensors:
        expected.pop("threshold")
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise SaebenchError(f"{weights} lacks tensor(s) {', '.join(missing)} needed by architecture {cfg.architecture!r}")
    for name, shape in expected.items():
        got = tuple(tensors[name].shape)
        if got != shape and not (name == "threshold" and tensors[name].numel() in (1, cfg.d_sae)):
            raise SaebenchError(f"{weights}: tensor {name} has shape {list(got)}, cfg.json implies {list(shape)}")
    check_finite(tensors, str(weights))
    with torch.no_grad():
        for name in expected:
            t = tensors[name].to(torch.float32)
            param = getattr(sae, name)
            if name == "threshold" and t.shape != param.shape:
                sae.threshold = torch.nn.Parameter(t.reshape(-1) if t.numel() > 1 else t.reshape(()))
            else:
                param.copy_(t)
    return sae.to(device).eval()


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a truncated or foreign file is a one-line error."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SaebenchError(
            f"{path} is not a readable safetensors file ({str(exc).splitlines()[0]}); "
            "it may be truncated or another format: re-download or re-save it"
        ) from exc


def check_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Refuse NaN/Inf weights, naming the tensor."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise SaebenchError(f"{where}: tensor {name} has {bad} NaN/Inf value(s); the SAE is corrupt, retrain or re-export it")


# ---------------------------------------------------------------------------------------------
# any --sae spec


@dataclass
class LoadedSAE:
    """An SAE plus what we know about where it came from."""

    sae: Any
    name: str
    source: str
    architecture: str
    hook_name: str | None
    model_name: str | None
    fingerprint: str
    notes: list[str] = field(default_factory=list)


def load_sae(spec: str, device: str = "cpu", trust_pickle: bool = False, name: str | None = None) -> LoadedSAE:
    """Resolve a ``--sae`` spec: native folder, ``reference``, ``.pt`` state dict,
    ``python:FILE.py:FACTORY`` or ``MODULE:FACTORY``; other ecosystems' files are detected
    (native first) or named with a prefix (``sae_lens:``, ``sparsify:``, ``openai:``,
    ``dictionary_learning:``; see :mod:`saebench.formats`)."""
    if spec == "reference":
        spec = str(reference_sae_path())
    path = Path(spec)
    if spec.startswith("python:"):
        obj, label = _from_python_file(spec[len("python:"):])
        return _wrap_user(obj, spec, name or label, device)
    from saebench import formats

    prefixed = formats.split_prefix(spec) if not path.exists() else None
    if prefixed and prefixed[0] == "native":
        spec, path, prefixed = prefixed[1], Path(prefixed[1]), None
    fmt = prefixed[0] if prefixed else formats.detect_format(path)
    if fmt not in (None, "native"):
        conv = formats.load_format(fmt, prefixed[1] if prefixed else spec)
        sae = conv.sae.to(device)
        return LoadedSAE(sae, name or conv.name or path.resolve().name, spec, conv.architecture, sae.hook_name,
                         sae.model_name, fingerprint_module(sae),
                         [f"read from a {formats.LABELS[fmt]}: found architecture {conv.architecture}", *conv.notes])
    if path.is_dir():
        sae = load_native(path, device)
        return LoadedSAE(sae, name or path.resolve().name, str(path), sae.architecture,
                         sae.hook_name, sae.model_name, fingerprint_module(sae))
    if path.is_file() and path.suffix in (".pt", ".pth", ".bin"):
        return _from_torch_file(path, device, trust_pickle, name)
    if path.is_file() and path.suffix == ".safetensors":
        return load_sae(str(path.parent), device, trust_pickle, name)
    if ":" in spec and not path.exists():
        module, _, factory = spec.partition(":")
        obj = _call_factory(_import_module(module), factory, spec)
        return _wrap_user(obj, spec, name or factory, device)
    raise SaebenchError(
        f"--sae {spec!r} is neither a folder, a .pt/.safetensors file, 'reference', "
        "python:FILE.py:FACTORY nor MODULE:FACTORY; check the path"
    )


def reference_sae_path() -> Path:
    """The reference TopK SAE shipped with the package (see README: how it was trained)."""
    found = sorted(p for p in REFERENCE_DIR.glob("*") if (p / "cfg.json").is_file())
    if not found:
        raise SaebenchError(f"no reference SAE in {REFERENCE_DIR}; regenerate it with `saebench train-reference`")
    return found[0]


def _from_python_file(rest: str) -> tuple[Any, str]:
    file, sep, factory = rest.rpartition(":")
    if not sep or not file or not factory:
        raise SaebenchError(f"python:{rest!r} must look like python:FILE.py:FACTORY")
    fpath = Path(file)
    if not fpath.is_file():
        raise SaebenchError(f"factory file {file!r} does not exist; pass python:PATH/TO/FILE.py:FACTORY")
    mod_name = f"saebench_user_{hashlib.sha1(str(fpath.resolve()).encode()).hexdigest()[:10]}"
    spec = importlib.util.spec_from_file_location(mod_name, fpath)
    if spec is None or spec.loader is None:
        raise SaebenchError(f"cannot import {file!r} as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise SaebenchError(f"importing {file!r} failed: {type(exc).__name__}: {exc}") from exc
    return _call_factory(module, factory, f"python:{rest}"), factory


def _import_module(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise SaebenchError(f"cannot import module {module!r} ({exc}); is it installed / on PYTHONPATH?") from exc


def _call_factory(module: Any, factory: str, spec: str) -> Any:
    fn = getattr(module, factory, None)
    if fn is None:
        raise SaebenchError(f"{spec}: {module.__name__} has no attribute {factory!r}")
    if not callable(fn):
        raise SaebenchError(f"{spec}: {factory!r} is not callable; it must be a function or class returning an SAE")
    try:
        return fn()
    except Exception as exc:
        raise SaebenchError(f"{spec}: calling {factory}() failed: {type(exc).__name__}: {exc}") from exc


def _wrap_user(obj: Any, spec: str, name: str, device: str) -> LoadedSAE:
    missing = [m for m in ("encode", "decode") if not callable(getattr(obj, m, None))]
    missing += [m for m in ("d_in", "d_sae") if not isinstance(getattr(obj, m, None), int)]
    if missing:
        raise SaebenchError(
            f"{spec} returned a {type(obj).__name__} without {', '.join(missing)}; an SAE needs "
            "encode(x), decode(z) and integer d_in, d_sae"
        )
    notes = []
    if isinstance(obj, torch.nn.Module):
        obj = obj.to(device).eval()
        check_finite(dict(obj.state_dict()), spec)
        fp = fingerprint_module(obj, extra=f"{type(obj).__qualname__}|{obj.d_in}|{obj.d_sae}")
    else:
        fp = hashlib.sha256(f"{spec}|{type(obj).__qualname__}".encode()).hexdigest()[:16]
        notes.append("not a torch.nn.Module: fingerprint is the spec and class, not the weights")
    arch = getattr(obj, "architecture", None) or type(obj).__name__
    return LoadedSAE(obj, name, spec, str(arch), getattr(obj, "hook_name", None),
                     getattr(obj, "model_name", None), fp, notes)


def _from_torch_file(path: Path, device: str, trust_pickle: bool, name: str | None) -> LoadedSAE:
    """A ``.pt`` holding a state dict with native tensor names (+ cfg.json beside it).

    Loaded with ``weights_only=True``: a file that needs arbitrary unpickling is refused unless
    the user passes ``--trust-pickle`` (which runs code from the file: only for files you made).
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError) as exc:
        if "weights_only" not in str(exc) and not isinstance(exc, pickle.UnpicklingError):
            raise SaebenchError(f"{path} is not a readable torch file ({str(exc).splitlines()[0]})") from exc
        if not trust_pickle:
            raise SaebenchError(
                f"{path} needs unpickling arbitrary Python objects, which can run code; refusing. "
                "Re-save it as a state dict of tensors, or pass --trust-pickle if you made this file"
            ) from exc
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise SaebenchError(f"{path} is not a readable torch file ({type(exc).__name__}: {exc}); it may be truncated") from exc
    if isinstance(obj, torch.nn.Module):
        return _wrap_user(obj, str(path), name or path.stem, device)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SaebenchError(f"{path} does not hold a state dict of tensors; save sae.state_dict() instead")
    cfg_path = path.parent / "cfg.json"
    if not cfg_path.is_file():
        raise SaebenchError(f"{path}: a state-dict SAE needs a cfg.json beside it naming architecture, d_in, d_sae")
    with tempfile.TemporaryDirectory() as tmp:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in obj.items()}, os.path.join(tmp, "sae.safetensors"))
        Path(tmp, "cfg.json").write_text(cfg_path.read_text())
        sae = load_native(tmp, device)
    return LoadedSAE(sae, name or path.parent.resolve().name, str(path), sae.architecture,
                     sae.hook_name, sae.model_name, fingerprint_module(sae))


def fingerprint_module(module: torch.nn.Module, extra: str = "") -> str:
    """A short content hash of a module's parameters (identifies the SAE in results)."""
    h = hashlib.sha256(extra.encode())
    for key, val in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(val.detach().cpu().contiguous().to(torch.float32).numpy().tobytes())
    return h.hexdigest()[:16]
