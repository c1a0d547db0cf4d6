"""The one place for file plumbing: atomic writes, JSON reads, safe names, the cache root,
weights-only ``torch.load``, locks, checksummed tensor files and the memory/disk checks.

Every file saebench writes (results, cache entries, leaderboards, plots, saved SAEs' files) goes
through :func:`atomic_write_bytes`: a temp file in the target folder, flushed and fsynced, then
``os.replace``. A reader sees the old file or the whole new one, never a part, and a crash leaves
at most a ``.NAME.tmp-*`` file behind. Writers hold a shared ``flock`` on the folder while a temp
file exists (:func:`writing_in`); :func:`remove_stale_temps` takes the exclusive lock, so it only
ever deletes temp files whose writer is gone (a kill -9 mid-write), never one being written.

Concurrency: :func:`file_lock` is an exclusive ``flock`` on a ``.NAME.lock`` file; a second
process asking for it prints one line saying what it waits for and blocks. The lock file is
removed by its holder on release (a waiter re-checks the inode, so no two processes ever hold
"the same" lock on different files). Locks are released by the kernel when a process dies.

Messages that are not errors (a damaged cache entry recomputed, a full cache skipped, waiting
for a lock) go to the ``saebench`` logger at WARNING level: one line each. The CLI prints them
as ``warning: ...``; a library user without logging configured sees the bare line on stderr.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from saebench.errors import SaebenchError

try:  # POSIX only; elsewhere locks are no-ops (a concurrent run then merely duplicates work)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

TMP_MARK = ".tmp-"
LOCK_SUFFIX = ".lock"
LOCK_TAG = "saebench pid "  # what a lock file holds: only files saying so are ever cleaned up
WRITE_PROBE = ".write-test-"
# what mkstemp/mkdtemp make from our prefixes (8 random characters): only these are cleaned up
_STALE = re.compile(r"^\.(?:.+\.)?tmp-[a-z0-9_]{8}$|^\.write-test-[a-z0-9_]{8}$")
log = logging.getLogger("saebench")
_WARNED: set[str] = set()
SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def warn_once(key: str, message: str) -> None:
    """Log ``message`` (one line) the first time ``key`` is seen in this process."""
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(message)


def is_out_of_space(exc: BaseException) -> bool:
    """True for "no space left", "quota exceeded" and "file too large" errors."""
    return isinstance(exc, OSError) and exc.errno in SPACE_ERRNOS


def free_bytes(folder: Path) -> int | None:
    """Bytes free to this user on ``folder``'s filesystem (None when it cannot be asked)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def human_bytes(n: float) -> str:
    """``1536`` -> ``1.5 KiB``: sizes in messages."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def cache_dir() -> Path:
    """Root of saebench's on-disk caches (``$SAEBENCH_CACHE`` or ``~/.cache/saebench``).

    Created when possible; a root that cannot be created is returned anyway (the cache is an
    optimisation: writes into it fail later and are skipped with a warning)."""
    root = os.environ.get("SAEBENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "saebench"
    )
    path = Path(root)
    with contextlib.suppress(OSError):
        path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _flock_dir(folder: Path, op: int) -> Iterator[bool]:
    """``flock(op)`` on a folder's descriptor; yields whether the lock is held (False where the
    folder or the filesystem does not allow it, or ``op`` is non-blocking and it is taken)."""
    if fcntl is None:
        yield False
        return
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, op)
            held = True
        except OSError:  # BlockingIOError (taken, non-blocking) or a filesystem without flock
            held = False
        yield held
    finally:
        os.close(fd)


def writing_in(folder: Path) -> contextlib.AbstractContextManager[bool]:
    """Hold a shared lock on ``folder`` while creating temp files in it: :func:`remove_stale_temps`
    then never deletes a temp file whose writer is alive."""
    return _flock_dir(Path(folder), fcntl.LOCK_SH if fcntl else 0)


def atomic_write(path: Path, write: Callable[[str], None], mode: int = 0o644) -> None:
    """Create ``path`` atomically: ``write(tmp_path)`` fills a temp file beside it, which is
    fsynced and renamed over ``path``. ``mode`` replaces mkstemp's 0600 (results are shared).

    Errors are the filesystem's ``OSError`` (``is_out_of_space`` tells a full disk); the temp
    file is removed on any failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with writing_in(path.parent):
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
    """A safetensors file written atomically; I/O failures are raised as ``OSError`` with the
    system's errno (safetensors reports them as ``SafetensorError`` text)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    def write(tmp: str) -> None:
        try:
            save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        except SafetensorError as exc:
            raise as_os_error(exc, tmp) from exc

    atomic_write(path, write)


def as_os_error(exc: Exception, path: str) -> Exception:
    """``SafetensorError('... (os error 28)')`` -> ``OSError(28, ...)``; other errors unchanged."""
    m = re.search(r"\(os error (\d+)\)", str(exc))
    if not m:
        return exc
    code = int(m.group(1))
    return OSError(code, os.strerror(code), path)


def tensors_digest(tensors: dict[str, Any]) -> str:
    """SHA-256 over every tensor: for each name in sorted order, ``name|dtype|shape`` then its raw
    bytes (row-major, as stored). :func:`file_tensors_digest` computes the same value streaming
    from a safetensors file."""
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(tensor_head(name, str(t.dtype).removeprefix("torch."), tuple(t.shape)))
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def tensor_head(name: str, dtype: str, shape: tuple[int, ...]) -> bytes:
    """What :func:`tensors_digest` hashes before a tensor's bytes."""
    return f"{name}|{dtype}|{','.join(map(str, shape))}\n".encode()


ST_ITEMSIZE = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2}
ST_ITEMSIZE.update({"I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1})
MAX_HEADER = 100 << 20  # safetensors' own bound on the header length


def safetensors_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{name: (dtype, shape)}`` from a safetensors file's header, read with plain file reads
    (no mmap, no tensor data) and checked: the header length, every dtype, shape and data range
    must fit the file. A malformed or truncated file (a header-length bomb, say) is a one-line
    error before anything is allocated from it."""
    path = Path(path)

    def bad(why: str) -> SaebenchError:
        return SaebenchError(
            f"{path} is not a readable safetensors file ({why}); it may be truncated or another format: re-download "
            "or re-save it"
        )

    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise bad("shorter than a header")
            n = int.from_bytes(head, "little")
            if n > min(MAX_HEADER, size - 8):
                raise bad(f"header length {n} exceeds the file")
            raw = json.loads(fh.read(n).decode("utf-8"))
    except OSError as exc:
        raise bad(exc.strerror or type(exc).__name__) from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad("header is not JSON") from exc
    if not isinstance(raw, dict):
        raise bad("header is not a JSON object")
    data_len = size - 8 - n
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, info in raw.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (a, b) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            ok = dtype in ST_ITEMSIZE and all(isinstance(d, int) and d >= 0 for d in (*shape, a, b))
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise bad(f"tensor {name!r} has a malformed entry")
        if not a <= b <= data_len or b - a != math.prod(shape) * ST_ITEMSIZE[dtype]:
            raise bad(f"tensor {name!r} claims bytes {a}..{b} for shape {list(shape)} in {data_len} bytes of data")
        out[str(name)] = (dtype, shape)
    return out


_ST_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def file_tensors_digest(path: Path, chunk_bytes: int = 64 << 20) -> str:
    """:func:`tensors_digest` of a safetensors file, read ``chunk_bytes`` at a time (a streaming
    reader can verify an entry without holding it in memory). Raises what safetensors raises."""
    import torch
    from safetensors import safe_open

    h = hashlib.sha256()
    with safe_open(str(path), framework="pt") as fh:
        for name in sorted(fh.keys()):
            sl = fh.get_slice(name)
            shape = tuple(sl.get_shape())
            dtype = _ST_DTYPES.get(sl.get_dtype(), sl.get_dtype())
            h.update(tensor_head(name, dtype, shape))
            if not shape:
                h.update(fh.get_tensor(name).reshape(-1).view(torch.uint8).numpy())
                continue
            if 0 in shape:
                continue
            row = max(1, math.prod(shape[1:]) * _itemsize(dtype))
            step = max(1, chunk_bytes // row)
            for a in range(0, shape[0], step):
                h.update(sl[a : a + step].contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _itemsize(dtype: str) -> int:
    import torch

    return torch.empty((), dtype=getattr(torch, dtype)).element_size()


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
    """A safe single path component: runs of anything but ``A-Za-z0-9._+-`` (separators, control
    characters, spaces, non-ASCII) become ``_``; never empty, never ``.``/``..``, never starting
    with a dot (no hidden files, no ``..``), at most ``max_len`` characters. A longer name keeps
    its first characters and ends with a hash of the whole name, so long names stay distinct."""
    s = _UNSAFE.sub("_", str(text)).strip("_").lstrip("._")
    if len(s) > max_len:
        tag = hashlib.sha256(str(text).encode("utf-8", "surrogatepass")).hexdigest()[:10]
        s = s[: max_len - len(tag) - 1].rstrip("._") + "-" + tag
    return s if s and s not in (".", "..") else "_"


def torch_load_weights_only(
    path: Path, trust_pickle: bool = False, fix: str = "or pass --trust-pickle if you made this file"
) -> Any:
    """``torch.load`` that never unpickles arbitrary objects unless ``trust_pickle``.

    A file that needs arbitrary unpickling is refused with a one-line error naming the fix
    (``fix`` completes it); a truncated or foreign file is a one-line error too.
    """
    import torch

    with contextlib.suppress(OSError):  # torch.load holds at least the file's bytes
        check_memory(os.path.getsize(path), f"loading {path}", "load it on a machine with more memory")
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


# ---------------------------------------------------------------------------------------------
# locks and stale temp files


def lock_path(path: Path) -> Path:
    """The lock file guarding ``path`` (``.NAME.lock`` beside it)."""
    path = Path(path)
    return path.parent / f".{path.name}{LOCK_SUFFIX}"


@contextlib.contextmanager
def file_lock(path: Path, what: str) -> Iterator[bool]:
    """Exclusive lock on ``path`` (a ``.NAME.lock`` file, see :func:`lock_path`) for ``what``.

    When another process holds it, one line names what is being waited for and which process
    holds it, then this blocks until that process finishes (or dies: the kernel releases its
    locks). Yields True when locked, False when no lock could be taken (a read-only or full
    folder, a platform without ``flock``): the caller then goes on unlocked.
    """
    path = Path(path)
    if fcntl is None:
        yield False
        return
    fd = _acquire(path, what)
    if fd is None:
        yield False
        return
    try:
        yield True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still holding it: a waiter sees the inode change and retries
        os.close(fd)


def _acquire(path: Path, what: str) -> int | None:
    waited = False
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not waited:
                    holder = os.pread(fd, 64, 0).decode("ascii", "replace").removeprefix(LOCK_TAG).strip() or "?"
                    log.warning(f"waiting for saebench process {holder}, which is computing {what} ({path})")
                    waited = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, f"{LOCK_TAG}{os.getpid()}\n".encode(), 0)
                return fd
            os.close(fd)  # the holder removed the file on release: lock the current one
        except OSError:  # flock unsupported here: go on unlocked
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise


def _is_stale_name(name: str) -> bool:
    return bool(_STALE.match(name))


def remove_stale_temps(root: Path, depth: int = 1) -> list[Path]:
    """Delete temp files and folders left by writers that died (``.NAME.tmp-XXXXXXXX``, write
    probes) and unheld saebench ``.NAME.lock`` files, in ``root`` and its subfolders down to
    ``depth`` (hidden folders such as ``.git`` are never entered; other programs' files are never
    matched). A folder where a write is in flight (:func:`writing_in`) is skipped this time.
    Returns what was removed."""
    removed: list[Path] = []
    level = [Path(root)]
    folders = list(level)
    for _ in range(depth):
        level = [c for f in level for c in _subdirs(f)]
        folders += level
    for folder in folders:
        try:
            names = [e.name for e in os.scandir(folder)]
        except OSError:
            continue
        stale = [n for n in names if _is_stale_name(n)]
        locks = [n for n in names if n.startswith(".") and n.endswith(LOCK_SUFFIX)]
        if stale:
            with _flock_dir(folder, fcntl.LOCK_EX | fcntl.LOCK_NB if fcntl else 0) as held:
                if held:
                    for n in stale:
                        p = folder / n
                        with contextlib.suppress(OSError):
                            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
                            removed.append(p)
        for n in locks:
            if _remove_unheld_lock(folder / n):
                removed.append(folder / n)
    return removed


def _subdirs(folder: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(folder) if e.is_dir(follow_symlinks=False) and e.name[0] != "."]
    except OSError:
        return []


def _remove_unheld_lock(path: Path) -> bool:
    if fcntl is None:
        return False
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.stat(path).st_ino != os.fstat(fd).st_ino or not os.pread(fd, 64, 0).startswith(LOCK_TAG.encode()):
            return False
        os.unlink(path)  # held while unlinking, as file_lock's holders do
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# memory


def available_memory() -> tuple[int | None, str]:
    """Bytes this process can still allocate, and which limit says so (None when unknown).

    The smallest of: the system's ``MemAvailable``, the cgroup's memory limit minus its usage
    (containers), and ``RLIMIT_AS`` minus this process's current address space."""
    limits: list[tuple[int, str]] = []
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append((int(line.split()[1]) * 1024, "available system memory"))
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        with contextlib.suppress(OSError, ValueError):
            limit = Path(limit_file).read_text().strip()
            if limit != "max" and int(limit) < 1 << 60:
                limits.append((int(limit) - int(Path(usage_file).read_text().strip()), "the container's memory limit"))
            break
    with contextlib.suppress(ImportError, OSError, ValueError):
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            vm = 0
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmSize:"):
                    vm = int(line.split()[1]) * 1024
            limits.append((soft - vm, "this process's address-space limit (ulimit -v)"))
    if not limits:
        return None, "unknown"
    n, why = min(limits)
    return max(n, 0), why


def check_memory(need: int, what: str, fix: str) -> None:
    """Refuse (one line, before allocating) when ``need`` bytes exceed the memory available."""
    avail, why = available_memory()
    if avail is not None and need > avail:
        raise SaebenchError(
            f"{what} needs {human_bytes(need)} of memory but only {human_bytes(avail)} is available ({why}); {fix}"
        )
