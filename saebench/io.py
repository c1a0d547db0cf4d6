"""The one place for file plumbing: atomic writes, JSON reads, safe names, the cache root, and
weights-only ``torch.load``.

Every file saebench writes (results, cache entries, leaderboards, plots, saved SAEs' files) goes
through :func:`atomic_write_bytes`: a temp file in the target folder, flushed and fsynced, then
``os.replace``. A reader sees the old file or the whole new one, never a part, and a crash leaves
at most a ``.NAME.tmp-*`` file behind.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from saebench.errors import SaebenchError

TMP_MARK = ".tmp-"


def cache_dir() -> Path:
    """Root of saebench's on-disk caches (``$SAEBENCH_CACHE`` or ``~/.cache/saebench``)."""
    root = os.environ.get("SAEBENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "saebench"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write(path: Path, write: Callable[[str], None], mode: int = 0o644) -> None:
    """Create ``path`` atomically: ``write(tmp_path)`` fills a temp file beside it, which is
    fsynced and renamed over ``path``. ``mode`` replaces mkstemp's 0600 (results are shared)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{TMP_MARK}")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    atomic_write(path, write)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any, indent: int | None = 2) -> None:
    """JSON with a trailing newline, keys in insertion order, written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def atomic_save_tensors(path: Path, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> None:
    """A safetensors file written atomically."""
    from safetensors.torch import save_file

    atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata))


def read_json(path: Path, what: str = "file") -> Any:
    """Parse a JSON file; unreadable, non-UTF-8 or invalid JSON is a one-line error naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SaebenchError(
            f"{path} is not a readable JSON {what} ({type(exc).__name__}); fix or regenerate it"
        ) from exc


def read_json_object(path: Path, what: str = "file") -> dict[str, Any]:
    """:func:`read_json` that also requires a JSON object (``{...}``) at the top level."""
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise SaebenchError(f"{path} holds a JSON {type(data).__name__}, not an object ({what}); fix or regenerate it")
    return data


_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def slug(text: str, max_len: int = 120) -> str:
    """A safe single path component: runs of anything but ``A-Za-z0-9._+-`` become ``_``; never
    empty, never ``.``/``..``, never starting with a dot, at most ``max_len`` characters."""
    s = _UNSAFE.sub("_", str(text)).strip("_")[:max_len].lstrip(".")
    return s if s and s not in (".", "..") else "_"


def torch_load_weights_only(
    path: Path, trust_pickle: bool = False, fix: str = "or pass --trust-pickle if you made this file"
) -> Any:
    """``torch.load`` that never unpickles arbitrary objects unless ``trust_pickle``.

    A file that needs arbitrary unpickling is refused with a one-line error naming the fix
    (``fix`` completes it); a truncated or foreign file is a one-line error too.
    """
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError) as exc:
        if "weights_only" not in str(exc) and not isinstance(exc, pickle.UnpicklingError):
            raise SaebenchError(
                f"{path} is not a readable torch file ({str(exc).splitlines()[0][:160]}); it may be truncated"
            ) from exc
        if not trust_pickle:
            raise SaebenchError(
                f"{path} cannot be read with torch.load(weights_only=True): it needs unpickling arbitrary "
                f"Python objects, which can run code; refusing. Re-save it as a state dict of tensors, {fix}"
            ) from exc
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise SaebenchError(f"{path} is not a readable torch file ({type(exc).__name__}); it may be truncated") from exc
