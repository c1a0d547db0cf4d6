"""Ctrl-C at every stage of a run: exit 130 (never death by the signal), one line, no traceback,
nothing partial, and a rerun that completes. The real CLI in subprocesses, as a user presses it.

Why "never -2": CPython kills itself with SIGINT at exit when a KeyboardInterrupt once left code
run by ``exec`` of a string (dataclasses and pydantic define methods that way during the imports
of a model load), even if the program caught it; :func:`saebench.cli.entry` exits 130 itself.
The first test reproduces that deterministically; the others interrupt each stage for real.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from procs import cli, finish, fresh_cache, leftovers, ok, one_error, run_env, spawn, wait_for

from saebench.results import read_result

NEEDLE = "interrupted; completed results are kept, rerun the same command to resume"
RUN = ["run", "--sae", "reference", "--tokens", "256", "--ctx-len", "32", "--batch-size", "4", "--threads", "1"]


def test_ctrl_c_inside_exec_string_code_still_exits_130(tmp_path):
    """The CI flake, made deterministic: the interrupt lands while exec'd string code runs."""
    factory = tmp_path / "evil.py"
    factory.write_text(
        "def build():\n    exec('import signal, time\\nsignal.raise_signal(signal.SIGINT)\\ntime.sleep(30)')\n"
    )
    env = run_env(fresh_cache(tmp_path), tmp_path / "tmp")
    res = cli(["run", "--sae", f"python:{factory}:build", "--out", tmp_path / "out", "--quiet"], env, tmp_path / "r")
    one_error(res, 130, NEEDLE)


def _markers(out: Path) -> dict[str, object]:
    """What a run shows at each stage: stderr progress bars (prefix, splice) and the claimed result lock."""
    return {
        "start": 1.0,  # seconds: Python is up (its SIGINT handler installed) and importing torch
        "claimed": out / "ref" / ".core.json.lock",  # result locked, model about to load (its imports)
        "prefix": "prefix to blocks.6",
        "splice": "spliced (",  # the splice loop's bar (after the clean side's "clean suffix")
    }


@pytest.mark.parametrize("stage", ["start", "claimed", "prefix", "splice"])
def test_ctrl_c_at_each_stage(tmp_path, stage):
    out = tmp_path / "out"
    cache = fresh_cache(tmp_path)
    env = run_env(cache, tmp_path / "tmp")
    args = [*RUN, "--out", out, "--name", "ref"]
    p = spawn(args, env, tmp_path / "interrupted")
    marker = _markers(out)[stage]
    if isinstance(marker, Path):
        wait_for(lambda: marker.exists(), procs=(p,))
    elif isinstance(marker, str):
        wait_for(lambda: marker in p.logs[1].read_text(), procs=(p,))
    else:
        time.sleep(marker)
    p.send_signal(signal.SIGINT)
    res = finish(p)
    one_error(res, 130, NEEDLE)
    assert not list(out.rglob("*.json")), "an interrupted run left a result"
    assert not leftovers(out, cache / "activations")
    resumed = cli([*args, "--quiet"], env, tmp_path / "resumed")
    ok(resumed)
    assert read_result(out / "ref" / "core.json").metrics["l0"] == 32
