"""Subprocess helpers for the tests that run the real CLI (the fault matrix, interrupts)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

LIMIT = 600  # seconds any one subprocess may take (2 shared cores can be slow); typical: 5-20 s


def models_dir() -> Path:
    """The default cache's converted-model folder (converted here first on a fresh machine, so
    no subprocess pays for it)."""
    from saebench.models import _hf_folder

    return _hf_folder().parent


def fresh_cache(root: Path) -> Path:
    """An empty activation cache sharing the converted model with the default cache."""
    cache = root / "cache"
    cache.mkdir(parents=True)
    (cache / "models").symlink_to(models_dir())
    return cache


def run_env(cache: Path, tmp: Path) -> dict[str, str]:
    tmp.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "SAEBENCH_CACHE": str(cache),
        "TMPDIR": str(tmp),  # where an unwritable result's fallback goes
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
    }


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """``python -m saebench.cli ARGS`` with stdout/stderr in ``LOG.out``/``LOG.err`` (pollable)."""
    out, err = open(f"{log}.out", "w"), open(f"{log}.err", "w")  # noqa: SIM115 - closed by finish
    proc = subprocess.Popen(
        [sys.executable, "-m", "saebench.cli", *map(str, args)],
        stdout=out,
        stderr=err,
        env=env,
        # a foreground run, as at a terminal: a CI job started in the background (`cmd &` without job
        # control) passes SIGINT down ignored, and Python then never raises KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    proc.logs = (Path(f"{log}.out"), Path(f"{log}.err"), out, err)  # type: ignore[attr-defined]
    return proc


def finish(proc: subprocess.Popen) -> SimpleNamespace:
    rc = proc.wait(timeout=LIMIT)
    out_p, err_p, out_f, err_f = proc.logs  # type: ignore[attr-defined]
    out_f.close()
    err_f.close()
    return SimpleNamespace(rc=rc, out=out_p.read_text(), err=err_p.read_text(), pid=proc.pid)


def cli(args: list[str], env: dict[str, str], log: Path) -> SimpleNamespace:
    return finish(spawn(args, env, log))


def wait_for(predicate, timeout: float = LIMIT, procs: tuple = ()) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if any(p.poll() is not None for p in procs):
            raise AssertionError(f"a process ended early (rc {[p.poll() for p in procs]})")
        if time.monotonic() > end:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def lines_of(err: str, prefix: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(prefix)]


def one_error(res: SimpleNamespace, rc: int, needle: str) -> str:
    """Exit ``rc``, exactly one ``error:`` line containing ``needle``, no traceback."""
    assert res.rc == rc, (res.rc, res.err[-3000:])
    assert "Traceback" not in res.err, res.err[-3000:]
    errors = lines_of(res.err, "error:")
    assert len(errors) == 1 and needle in errors[0], res.err[-3000:]
    return errors[0]


def ok(res: SimpleNamespace, warnings: int = 0) -> None:
    """Exit 0, no traceback, no error, exactly ``warnings`` one-line warnings."""
    assert res.rc == 0 and "Traceback" not in res.err and not lines_of(res.err, "error:"), res.err[-3000:]
    assert len(lines_of(res.err, "warning:")) == warnings, res.err


def leftovers(*roots: Path) -> list[Path]:
    """Temp and lock files anywhere under ``roots`` (a finished run leaves none)."""
    return [p for r in roots for p in r.rglob(".*") if ".tmp-" in p.name or p.name.endswith(".lock")]
