"""Prefix states on disk, read a batch slice at a time: bounded memory for any token count.

``ActivationPipeline.states()`` returns a :class:`PrefixStates`: a ``[n_seq, T, d_model]``
array that lives in a safetensors file (the activation cache entry, or an anonymous temporary
file with ``--no-cache``) and is indexed like a tensor on its first axis (``states[a:b]``,
``states[idx]``, ``states[idx, :end]``, ``states.shape``). Each index reads only the rows it
names, so a pass over the token set holds one batch of states in memory, whatever the token
count (the paper profile on a 2304-wide model is ~3.8 GB of states per hook; a 2M-token run on
a 3584-wide model ~29 GB).

Why positioned reads and not ``mmap``: pages of a memory-mapped file count toward the process's
resident set until they are unmapped, so one full pass over a mapped 29 GB file shows 29 GB of
RSS (and a cgroup or ``--max-memory`` would see it). ``readinto`` copies each batch from the OS
page cache into one tensor; the page cache still makes a warm pass run at memory speed, but it
belongs to the kernel, which drops it under pressure.

The file is written the same way: the header first (with a fixed-width checksum placeholder),
then each batch as it is computed, then the header again with the SHA-256 of the data section,
so the states never exist in memory whole. The file is a standard safetensors file (any
safetensors reader opens it); its metadata holds the cache key and the checksum, and
:func:`open_states` refuses an entry whose checksum, key, dtype or shape does not match (the
caller recomputes it).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import torch

from saebench.errors import SaebenchError
from saebench.io import atomic_write, tensor_head

TENSOR = "states"
ENTRY_FORMAT = "1"  # the metadata every activation cache entry carries (see saebench.pipeline.states)
_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}
_FROM_NAME = {v: k for k, v in _DTYPES.items()}
_HASH_CHUNK = 16 << 20


def _header(shape: tuple[int, ...], dtype: torch.dtype, key: str, digest: str) -> bytes:
    """The safetensors header (8-byte length + JSON padded with spaces to a multiple of 8)."""
    nbytes = _nbytes(shape, dtype)
    meta = {"saebench_entry": ENTRY_FORMAT, "what": TENSOR, "key": key, "sha256": digest}
    body = json.dumps(
        {TENSOR: {"dtype": _DTYPES[dtype], "shape": list(shape), "data_offsets": [0, nbytes]}, "__metadata__": meta},
        separators=(",", ":"),
    ).encode()
    body += b" " * (-len(body) % 8)
    return struct.pack("<Q", len(body)) + body


def _digest_start(shape: tuple[int, ...], dtype: torch.dtype) -> Any:
    """A SHA-256 fed what :func:`saebench.io.tensors_digest` hashes before the states' bytes, so the
    entry's checksum is the one every cache entry carries (``verify_entry`` checks it too)."""
    h = hashlib.sha256()
    h.update(tensor_head(TENSOR, str(dtype).removeprefix("torch."), tuple(shape)))
    return h


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n * torch.empty((), dtype=dtype).element_size()


def _as_bytes(t: torch.Tensor) -> memoryview:
    """A contiguous CPU tensor's bytes without a copy (any dtype, bfloat16 included)."""
    return memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy())


def write_states(fh: IO[bytes], shape: tuple[int, ...], dtype: torch.dtype, key: str, batches: Iterable[torch.Tensor]):
    """Stream ``batches`` (consecutive row blocks of a ``shape`` array) into ``fh`` as safetensors."""
    if dtype not in _DTYPES:
        raise SaebenchError(f"prefix states of dtype {dtype} cannot be cached; use --dtype float32/float16/bfloat16")
    fh.write(_header(shape, dtype, key, "0" * 64))
    h = _digest_start(shape, dtype)
    rows = 0
    for b in batches:
        if tuple(b.shape[1:]) != tuple(shape[1:]) or b.dtype != dtype:
            raise SaebenchError(f"prefix batch {list(b.shape)} {b.dtype} does not fit states {list(shape)} {dtype}")
        data = _as_bytes(b.detach().cpu())
        h.update(data)
        fh.write(data)
        rows += int(b.shape[0])
    if rows != shape[0]:
        raise SaebenchError(f"prefix pass gave {rows} contexts, expected {shape[0]}")
    fh.seek(0)
    fh.write(_header(shape, dtype, key, h.hexdigest()))
    fh.flush()


def save_states(path: Path, shape: tuple[int, ...], dtype: torch.dtype, key: str, batches: Iterable[torch.Tensor]):
    """:func:`write_states` into ``path`` atomically (temp file, fsync, rename)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            write_states(fh, shape, dtype, key, batches)

    atomic_write(path, write)


class PrefixStates:
    """A ``[n_seq, T, d]`` array read a row block at a time from a safetensors file (or, when no
    file could be used, held in memory). Indexing follows torch on the first axis."""

    def __init__(self, fh: IO[bytes] | None, offset: int, shape: tuple[int, ...], dtype: torch.dtype, path: str = ""):
        self._fh, self._offset, self.path = fh, offset, path
        self.shape = torch.Size(shape)
        self.dtype = dtype
        self._row_bytes = _nbytes(tuple(shape[1:]), dtype)
        self._tensor: torch.Tensor | None = None
        self._lock = threading.Lock()

    @classmethod
    def in_memory(cls, tensor: torch.Tensor) -> PrefixStates:
        st = cls(None, 0, tuple(tensor.shape), tensor.dtype)
        st._tensor = tensor
        return st

    @property
    def nbytes(self) -> int:
        return self._row_bytes * int(self.shape[0])

    def __len__(self) -> int:
        return int(self.shape[0])

    def __repr__(self) -> str:
        where = f"file {self.path or '(temporary)'}" if self._tensor is None else "memory"
        return f"PrefixStates({list(self.shape)}, {self.dtype}, {where})"

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def _read(self, start: int, n: int, out: torch.Tensor) -> None:
        """Rows ``start .. start+n`` into ``out`` (a contiguous ``[n, T, d]`` tensor)."""
        if self._fh is None:
            raise SaebenchError("prefix states were closed; rebuild the pipeline")
        view = _as_bytes(out)
        with self._lock:
            self._fh.seek(self._offset + start * self._row_bytes)
            got = 0
            while got < len(view):
                k = self._fh.readinto(view[got:])
                if not k:
                    raise SaebenchError(
                        f"activation cache entry {self.path} ended early (truncated?); delete it and rerun"
                    )
                got += k

    def rows(self, index: Any) -> torch.Tensor:
        """The rows named by ``index`` (int, slice, list or 1-D integer tensor), in that order."""
        n = int(self.shape[0])
        if isinstance(index, slice):
            start, stop, step = index.indices(n)
            if step != 1:
                return self.rows(torch.arange(start, stop, step))
            stop = max(start, stop)
            if self._tensor is not None:
                return self._tensor[start:stop]
            out = torch.empty((stop - start, *self.shape[1:]), dtype=self.dtype)
            if stop > start:
                self._read(start, stop - start, out)
            return out
        idx = torch.as_tensor(index)
        if idx.dtype == torch.bool or idx.is_floating_point() or idx.ndim > 1:
            raise SaebenchError("prefix states take an int, a slice or a 1-D list/tensor of row indices")
        idx = idx.reshape(-1).long()
        idx = torch.where(idx < 0, idx + n, idx)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise IndexError(f"row index out of range for {n} contexts")
        if self._tensor is not None:
            return self._tensor[idx]
        out = torch.empty((idx.numel(), *self.shape[1:]), dtype=self.dtype)
        ids = idx.tolist()
        i = 0
        while i < len(ids):  # runs of consecutive rows: one read each
            j = i + 1
            while j < len(ids) and ids[j] == ids[j - 1] + 1:
                j += 1
            self._read(ids[i], j - i, out[i:j])
            i = j
        return out

    def __getitem__(self, key: Any) -> torch.Tensor:
        rest: tuple[Any, ...] = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        if isinstance(key, int):
            if not -len(self) <= key < len(self):
                raise IndexError(f"row {key} out of range for {len(self)} contexts")
            k = key % len(self)
            out = self.rows(slice(k, k + 1))[0]
            return out[rest] if rest else out
        out = self.rows(key)
        return out[(slice(None), *rest)] if rest else out

    def batches(self, batch_size: int) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start, rows start..start+batch_size)`` over all contexts."""
        for s in range(0, len(self), batch_size):
            yield s, self.rows(slice(s, s + batch_size))

    def tensor(self) -> torch.Tensor:
        """All states in memory (``[n_seq, T, d]``): only for callers that know they fit."""
        return self._tensor if self._tensor is not None else self.rows(slice(None))


def open_states(
    path: Path, key: str, shape: tuple[int, ...], dtype: torch.dtype, verify: bool = True
) -> PrefixStates | None:
    """The cached states at ``path`` when present, complete and intact; None otherwise.

    Intact means: a safetensors header naming this ``key``, ``shape`` and ``dtype``, a file of
    exactly header + data bytes, and a data section whose SHA-256 equals the one in the header
    (read in 16 MB chunks: memory stays bounded; ``verify=False`` skips only this last check,
    for a file this process has just written)."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - kept open by PrefixStates
    except OSError:
        return None
    try:
        (n,) = struct.unpack("<Q", fh.read(8))
        if n > 1 << 20:
            raise ValueError("header too long")
        head = json.loads(fh.read(n))
        info, meta = head[TENSOR], head.get("__metadata__") or {}
        offset = 8 + n
        nbytes = _nbytes(shape, dtype)
        ok = (
            meta.get("saebench_entry") == ENTRY_FORMAT
            and meta.get("key") == key
            and info["dtype"] == _DTYPES.get(dtype)
            and tuple(info["shape"]) == tuple(shape)
            and info["data_offsets"] == [0, nbytes]
            and os.fstat(fh.fileno()).st_size == offset + nbytes
        )
        if ok and verify:
            h = _digest_start(shape, dtype)
            buf = bytearray(_HASH_CHUNK)
            view = memoryview(buf)
            while True:
                k = fh.readinto(view)
                if not k:
                    break
                h.update(view[:k])
            ok = h.hexdigest() == meta.get("sha256")
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        ok = False
    if not ok:
        fh.close()
        return None
    return PrefixStates(fh, offset, shape, dtype, str(path))
