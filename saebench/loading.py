"""Resolve a ``--sae`` spec into a :class:`LoadedSAE`: the SAE plus what we know of its origin.

Specs: ``reference`` (the TopK SAE shipped with saebench), a native folder, a ``.pt`` state dict
with ``cfg.json`` beside it, ``python:FILE.py:FACTORY`` / ``MODULE:FACTORY`` (a user's own
class, see :mod:`saebench.plugins`), and other ecosystems' files, detected from the files
(native first) or named with a prefix (``sae_lens:``, ``sparsify:``, ``openai:``,
``dictionary_learning:``; see :mod:`saebench.formats`). An object following the SAE protocol
is wrapped with :func:`wrap_sae`.

Untrusted files: every loader checks a file's config and tensor shapes (from the header) before
reading tensors, and the memory they need against what is available. Whatever else a malformed
file trips over (a missing key, a wrong type, an odd shape) becomes a one-line error naming the
file, never a traceback. Names (``--name``, or read from an SAE's own files) lose control
characters and are bounded in length; :func:`saebench.io.slug` makes them path components.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from saebench import formats, plugins
from saebench.errors import SaebenchError
from saebench.io import torch_load_weights_only
from saebench.sae import check_finite, fingerprint_module, load_native

REFERENCE_DIR = Path(__file__).parent / "reference"
MAX_NAME = 200


def clean_name(name: str, fallback: str = "sae") -> str:
    """A name fit to print and record: control and format characters become ``?`` (no terminal
    escapes, no line breaks in tables), surrounding space is dropped, at most ``MAX_NAME``
    characters; ``fallback`` when nothing is left. Paths use ``slug(name)`` on top of this."""
    text = "".join("?" if unicodedata.category(c)[0] == "C" else c for c in str(name)).strip()
    if len(text) > MAX_NAME:
        text = text[: MAX_NAME - 3] + "..."
    return text or fallback


def check_name(name: str | None) -> None:
    """An explicit ``--name`` must say something."""
    if name is not None and not str(name).strip():
        raise SaebenchError("--name is empty; give each --sae a non-empty name (or leave --name out)")


@contextlib.contextmanager
def malformed_as_error(spec: str, what: str) -> Iterator[None]:
    """Turn what a malformed file makes a loader trip over into a one-line error naming it."""
    try:
        yield
    except (KeyError, ValueError, TypeError, IndexError, AttributeError, RuntimeError, OverflowError) as exc:
        detail = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise SaebenchError(
            f"{spec} could not be read as a {what} ({type(exc).__name__}: {detail}); the file is malformed or an "
            "unsupported variant"
        ) from exc


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
    """Resolve a ``--sae`` spec (see the module docstring)."""
    check_name(name)
    loaded = _load_sae(spec, device, trust_pickle, name)
    loaded.name = clean_name(loaded.name, fallback=clean_name(Path(spec).name))
    return loaded


def _load_sae(spec: str, device: str, trust_pickle: bool, name: str | None) -> LoadedSAE:
    if spec == "reference":
        spec = str(reference_sae_path())
    path = Path(spec)
    if plugins.is_python_spec(spec):
        obj, label = plugins.load_object(spec)
        return wrap_sae(obj, spec, name or label, device)
    prefixed = formats.split_prefix(spec) if not path.exists() else None
    if prefixed and prefixed[0] == "native":
        spec, path, prefixed = prefixed[1], Path(prefixed[1]), None
    fmt = prefixed[0] if prefixed else formats.detect_format(path)
    if fmt not in (None, "native"):
        with malformed_as_error(spec, formats.LABELS[fmt]):
            conv = formats.load_format(fmt, prefixed[1] if prefixed else spec)
        sae = conv.sae.to(device)
        target = Path(prefixed[1]) if prefixed else path
        return LoadedSAE(
            sae,
            name or conv.name or default_name(target),
            spec,
            conv.architecture,
            sae.hook_name,
            sae.model_name,
            fingerprint_module(sae),
            [f"read from a {formats.LABELS[fmt]}: found architecture {conv.architecture}", *conv.notes],
        )
    if path.is_dir():
        with malformed_as_error(spec, formats.LABELS["native"]):
            sae = load_native(path, device)
        return LoadedSAE(
            sae,
            name or path.resolve().name,
            str(path),
            sae.architecture,
            sae.hook_name,
            sae.model_name,
            fingerprint_module(sae),
        )
    if path.is_file() and path.suffix in (".pt", ".pth", ".bin"):
        with malformed_as_error(spec, "state dict with cfg.json"):
            return _from_torch_file(path, device, trust_pickle, name)
    if path.is_file() and path.suffix == ".safetensors":
        return _load_sae(str(path.parent), device, trust_pickle, name or path.resolve().parent.name)
    if ":" in spec and not path.exists():
        obj, label = plugins.load_object(spec)
        return wrap_sae(obj, spec, name or label, device)
    raise SaebenchError(
        f"--sae {spec!r} is neither a folder, a .pt/.safetensors file, 'reference', "
        "python:FILE.py:FACTORY nor MODULE:FACTORY; check the path"
    )


def default_name(path: Path) -> str:
    """An SAE's name when none is given: its folder's name (a weights file is named by its folder:
    ``run/sae_weights.safetensors`` is ``run``, not ``sae_weights.safetensors``)."""
    p = path.resolve()
    return p.parent.name if p.is_file() or p.suffix in (".safetensors", ".pt", ".pth", ".bin") else p.name


def _spec_path(spec: Any) -> Path | None:
    """The file or folder a spec names (``python:FILE.py:F`` → ``FILE.py/F``), None for objects."""
    if not isinstance(spec, (str, Path)):
        return None
    text = str(spec)
    if plugins.is_python_spec(text):
        file, _, fn = text[len("python:") :].rpartition(":")
        return Path(file).resolve() / fn
    prefixed = formats.split_prefix(text) if not Path(text).exists() else None
    target = Path(prefixed[1]) if prefixed else Path(text)
    if text == "reference" or (":" in text and not target.exists()):
        return None
    target = target.resolve()
    return target.parent if target.is_file() else target


def distinct_names(specs: list[Any], names: list[str]) -> tuple[list[str], list[str]]:
    """Default names made distinct: SAEs whose default names coincide (a sweep's ``runs/*/final``,
    two factories both called ``build``) are named by the shortest path suffix that tells them
    apart (``a/final``, ``b/final``). Returns the names and one note per renamed group; names
    that still coincide are left for the caller to refuse."""
    out, notes = list(names), []
    groups: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        groups.setdefault(n, []).append(i)
    for n, idx in groups.items():
        paths = [_spec_path(specs[i]) for i in idx]
        if len(idx) < 2 or any(p is None for p in paths):
            continue
        parts = [p.parts for p in paths]  # type: ignore[union-attr]
        for depth in range(2, max(len(x) for x in parts) + 1):
            cand = ["/".join(x[-depth:]) for x in parts]
            if len(set(cand)) == len(cand):
                for i, c in zip(idx, cand, strict=True):
                    out[i] = clean_name(c)
                notes.append(
                    f"{len(idx)} SAEs share the name {n!r}; named by their shortest distinguishing paths: "
                    f"{', '.join(cand[:4])}{'...' if len(cand) > 4 else ''} (--name to choose)"
                )
                break
    return out, notes


def reference_sae_path() -> Path:
    """The reference TopK SAE shipped with the package (see README: how it was trained)."""
    found = sorted(p for p in REFERENCE_DIR.glob("*") if (p / "cfg.json").is_file())
    if not found:
        raise SaebenchError(f"no reference SAE in {REFERENCE_DIR}; regenerate it with `saebench train-reference`")
    return found[0]


def wrap_sae(obj: Any, spec: str, name: str, device: str) -> LoadedSAE:
    """Check that ``obj`` follows the SAE protocol and wrap it (weights fingerprinted when a module)."""
    missing = [m for m in ("encode", "decode") if not callable(getattr(obj, m, None))]
    missing += [m for m in ("d_in", "d_sae") if not isinstance(getattr(obj, m, None), int)]
    if missing:
        cfg = getattr(obj, "cfg", None)
        hint = (
            "; its config has them (obj.cfg.d_in): expose them as attributes"
            if isinstance(getattr(cfg, "d_in", None), int)
            else ""
        )
        raise SaebenchError(
            f"{spec} returned a {type(obj).__name__} without {', '.join(missing)}; an SAE needs "
            f"encode(x), decode(z) and integer d_in, d_sae{hint}"
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
    return LoadedSAE(
        obj, name, spec, str(arch), getattr(obj, "hook_name", None), getattr(obj, "model_name", None), fp, notes
    )


def as_loaded(sae: Any, device: str = "cpu", trust_pickle: bool = False, name: str | None = None) -> LoadedSAE:
    """A spec string/path, a :class:`LoadedSAE` or an SAE object, as a :class:`LoadedSAE`."""
    if isinstance(sae, LoadedSAE):
        return sae
    check_name(name)
    if isinstance(sae, (str, Path)):
        return load_sae(str(sae), device=device, trust_pickle=trust_pickle, name=name)
    with malformed_as_error(f"a {type(sae).__name__} object", "SAELens / sparsify SAE"):
        conv = formats.from_library_object(sae)
    if conv is not None:
        native = conv.sae.to(device)
        return LoadedSAE(
            native,
            clean_name(name or conv.name or type(sae).__name__),
            f"object:{type(sae).__module__}.{type(sae).__name__}",
            conv.architecture,
            native.hook_name,
            native.model_name,
            fingerprint_module(native),
            conv.notes,
        )
    label = name or getattr(sae, "name", None) or type(sae).__name__
    loaded = wrap_sae(sae, f"object:{type(sae).__name__}", str(label), device)
    loaded.name = clean_name(loaded.name, fallback=type(sae).__name__)
    return loaded


def _from_torch_file(path: Path, device: str, trust_pickle: bool, name: str | None) -> LoadedSAE:
    """A ``.pt`` holding a state dict with native tensor names (+ cfg.json beside it), or a whole
    module when ``trust_pickle`` (the only way a pickle that runs code is ever read)."""
    obj = torch_load_weights_only(path, trust_pickle=trust_pickle)
    if isinstance(obj, torch.nn.Module):
        return wrap_sae(obj, str(path), name or path.stem, device)
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
    return LoadedSAE(
        sae,
        name or path.parent.resolve().name,
        str(path),
        sae.architecture,
        sae.hook_name,
        sae.model_name,
        fingerprint_module(sae),
    )
