"""Fault matrix (issue 13): the real CLI in subprocesses, hit the way a hostile or unlucky user would.

Every case asserts the exit code, a one-line message, no traceback, nothing lost, and metrics
equal (bit for bit) to a clean run. The clean run is the computing process of the concurrent
scenario (a fresh cache and output folder, nothing special happens to it). Sizes are tiny
(256 tokens, contexts of 32, batches of 4) and the converted model cache is shared, so each
subprocess costs its start and model load; the fast in-process checks of the mechanisms
(checksums, locks, cleanup, names, fallbacks) follow at the end. docs/reliability.md lists the
matrix with the observed results.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import write_native
from procs import (
    LIMIT,
    cli,
    finish,
    fresh_cache,
    leftovers,
    lines_of,
    models_dir,
    ok,
    one_error,
    run_env,
    spawn,
    wait_for,
)
from safetensors.torch import save_file

from saebench.errors import SaebenchError
from saebench.io import file_lock, lock_path, remove_stale_temps, slug, writing_in
from saebench.results import complete_result, read_result, result_path

fcntl = pytest.importorskip("fcntl", reason="locks need POSIX flock")

SAE = "smollm2-135m-topk-2304-k32"  # the reference SAE's folder name, its default result name
RUN = ["run", "--sae", "reference", "--tokens", "256", "--ctx-len", "32", "--batch-size", "4", "--quiet"]
RUN += ["--threads", "1"]


def _entry(cache: Path, what: str) -> Path:
    found = sorted((cache / "activations").rglob(f"{what}-*.safetensors"))
    assert len(found) == 1, found
    return found[0]


# ---------------------------------------------------------------------------------------------
# the subprocess matrix


@pytest.fixture(scope="module")
def concurrent(tmp_path_factory):
    """Three identical runs into one --out and cache, all started while a lock holder (this test)
    keeps the result busy: each waits with one line; one then computes, one reuses its result,
    one is sent SIGTERM while waiting. The computed result is the clean baseline for the matrix."""
    root = tmp_path_factory.mktemp("concurrent")
    cache, out = fresh_cache(root), root / "out"
    env = run_env(cache, root / "tmp")
    target = result_path(out, SAE, "core")
    with file_lock(lock_path(target), "a test holding the result"):
        procs = [spawn(RUN + ["--out", out], env, root / f"p{i}") for i in range(3)]
        for p in procs:
            wait_for(lambda p=p: "waiting for" in p.logs[1].read_text(), procs=tuple(procs))
        procs[2].send_signal(signal.SIGTERM)
        terminated = finish(procs[2])
    runs = [finish(p) for p in procs[:2]]
    return SimpleNamespace(
        cache=cache, out=out, runs=runs, terminated=terminated, metrics=read_result(target).metrics, path=target
    )


def test_concurrent_runs_wait_and_reuse_one_result(concurrent):
    runs = concurrent.runs
    for r in runs:
        ok(r, warnings=1)
        assert f"waiting for saebench process {os.getpid()}" in r.err  # the holder is named
    wrote = [r for r in runs if f"wrote {concurrent.path}" in r.out]
    kept = [r for r in runs if f"kept {concurrent.path} (complete, skipped)" in r.out]
    assert len(wrote) == 1 and len(kept) == 1, [r.out for r in runs]  # computed once, reused once
    assert complete_result(concurrent.path, read_result(concurrent.path).run_key) is not None
    assert not leftovers(concurrent.out, concurrent.cache / "activations")
    m = concurrent.metrics
    assert 0 < m["fvu"] < 1 and m["l0"] == 32 and 0 < m["ce_loss_score"] <= 1  # a sane clean run


def test_sigterm_while_waiting(concurrent):
    res = concurrent.terminated
    one_error(res, 143, "terminated (SIGTERM); completed results are kept")
    assert len(lines_of(res.err, "warning:")) == 1  # the wait it was in


def test_kill9_then_sigint_then_resume(concurrent, tmp_path):
    """kill -9 after the prefix states are cached, SIGINT while the next run is under way (its
    result claimed), then a rerun: it resumes from the cached states and gives the clean metrics. The run is named
    ``..`` (issue 13: that name once wrote outside --out). Planted temp files of dead writers are
    removed at start."""
    cache, out = fresh_cache(tmp_path), tmp_path / "out"
    env = run_env(cache, tmp_path / "tmp")
    args = RUN + ["--out", out, "--name", ".."]

    p = spawn(args, env, tmp_path / "killed")
    wait_for(lambda: list((cache / "activations").rglob("states-*.safetensors")), procs=(p,))
    p.kill()
    assert finish(p).rc == -signal.SIGKILL
    assert not list(out.rglob("*.json"))

    (out / "_" / ".core.json.lock").unlink(missing_ok=True)  # the killed run's (its flock died with it)
    p = spawn(args, env, tmp_path / "interrupted")
    # its result is claimed (locked) before the model loads: SIGINT lands mid-run, never after it
    wait_for(lambda: (out / "_" / ".core.json.lock").exists(), procs=(p,))
    p.send_signal(signal.SIGINT)
    res = finish(p)
    one_error(res, 130, "interrupted; completed results are kept, rerun the same command to resume")  # never -2
    assert not list(out.rglob("*.json"))

    (out / "_").mkdir(parents=True, exist_ok=True)
    planted = [out / "_" / ".core.json.tmp-dead0001", _entry(cache, "states").parent / ".x.safetensors.tmp-dead0002"]
    for f in planted:
        f.write_text("left by a writer that was killed")
    res = cli(args, env, tmp_path / "resumed")
    ok(res)
    assert not any(f.exists() for f in planted)
    logs = {f"{run}.{ext}" for run in ("killed", "interrupted", "resumed") for ext in ("out", "err")}
    assert {p.name for p in tmp_path.iterdir()} == {"cache", "out", "tmp"} | logs  # nothing beside --out
    assert [p.relative_to(out) for p in out.rglob("*.json")] == [Path("_/core.json")]
    assert read_result(out / "_" / "core.json").metrics == concurrent.metrics
    assert not leftovers(out, cache / "activations")


def _overwrite_middle(path: Path) -> None:
    """Overwrite a third of the data section, mid-file, with other real activations from the same
    file (header intact): the damage issue 13 found gave wrong numbers with exit 0."""
    data = bytearray(path.read_bytes())
    n = len(data) // 3
    data[n : 2 * n] = data[2 * n : 3 * n]
    path.write_bytes(bytes(data))


def _flip_digit(path: Path, key: str) -> None:
    """Change one digit of a metric in a result file: still valid JSON, a different number."""
    text = path.read_text()
    i = text.index(f'"{key}": ') + len(key) + 4
    j = next(k for k in range(i, i + 30) if text[k] in "123456789")
    path.write_text(text[:j] + str(int(text[j]) % 9 + 1) + text[j + 1 :])


def test_damaged_cache_and_result_files_are_recomputed(concurrent, tmp_path):
    import shutil

    cache, out = tmp_path / "cache", tmp_path / "out"
    shutil.copytree(concurrent.cache, cache, symlinks=True)
    shutil.copytree(concurrent.out, out)
    states, ablation = _entry(cache, "states"), _entry(cache, "ablation")
    _overwrite_middle(states)
    ablation.write_bytes(ablation.read_bytes()[: ablation.stat().st_size // 2])  # truncated
    result = result_path(out, SAE, "core")
    _flip_digit(result, "fvu")
    res = cli(RUN + ["--out", out], run_env(cache, tmp_path / "tmp"), tmp_path / "damaged")
    ok(res, warnings=3)
    assert "fails its checksum" in res.err and res.err.count("is unusable") == 2
    assert read_result(result).metrics == concurrent.metrics
    from saebench.pipeline.states import verify_entry

    for entry in (states, ablation):  # rewritten whole
        assert verify_entry(entry, entry.stem.rsplit("-", 1)[1]) is None


def _tmpfs(mount: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("out-of-space cases mount a small tmpfs, which needs root (CI runs as root)")
    mount.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()[:200]})")


def test_out_of_space_keeps_the_result_and_goes_on_without_cache(concurrent, tmp_path):
    """--out and the activation cache on a full filesystem: one warning (the cache is skipped),
    one error naming the folder and the bytes needed, the result kept in a fallback file that the
    message says how to move in place; after that a rerun finds it complete."""
    disk = tmp_path / "disk"
    _tmpfs(disk, "1m")
    try:
        cache = disk / "cache"
        cache.mkdir()
        (cache / "models").symlink_to(models_dir())
        with open(disk / "filler", "wb") as fh:  # fill the disk
            with pytest.raises(OSError) as exc:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            assert exc.value.errno == errno.ENOSPC
        out = disk / "out"
        env = run_env(cache, tmp_path / "tmp")
        res = cli(RUN + ["--out", out], env, tmp_path / "full")
        line = one_error(res, 2, f"out of space: writing {out / SAE / 'core.json'} needs ")
        assert f"{out / SAE} has 0 bytes free" in line
        warns = lines_of(res.err, "warning:")
        assert len(warns) == 1 and "cannot write the activation cache" in warns[0] and "out of space" in warns[0]
        fallback = Path(line.split("the computed result is kept in ")[1].split(": ")[0])
        assert fallback.is_relative_to(tmp_path / "tmp") and read_result(fallback).metrics == concurrent.metrics
        (disk / "filler").unlink()  # free space, then do what the message says
        mv = line.split("`")[1].split()
        assert mv[0] == "mv" and subprocess.run(mv).returncode == 0
        res = cli(RUN + ["--out", out], env, tmp_path / "after")
        ok(res)
        assert f"kept {out / SAE / 'core.json'} (complete, skipped)" in res.out
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


CEILING_SCRIPT = r"""
import contextlib, io, json, resource, sys
import torch, safetensors.torch, saebench.cli, saebench.loading, saebench.runner, saebench.formats  # noqa
from saebench.cli import main

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

_, hard = resource.getrlimit(resource.RLIMIT_AS)
results = []
for argv, headroom in json.loads(sys.argv[1]):
    resource.setrlimit(resource.RLIMIT_AS, (status("VmSize") + headroom, hard))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except BaseException as exc:  # a traceback would land here
            rc, err = 99, io.StringIO(f"{type(exc).__name__}: {exc}")
    resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
    results.append({"rc": rc, "err": err.getvalue()})
print(json.dumps({"results": results, "peak_rss": status("VmHWM")}))
"""


def test_hostile_configs_refused_before_allocating(tmp_path):
    """Configs that lie (d_sae 10**6 or 10**12 with small tensors, a JSON list, wrong types, k >
    d_sae, in every format), a real file larger than the memory left, and a batch of latents too
    big: each a one-line error before anything big is allocated, under an address-space ceiling
    (a lie that allocated first would show up as an out-of-memory error instead) with peak RSS
    measured."""
    small = {"W_enc": torch.zeros(576, 8), "b_enc": torch.zeros(8), "W_dec": torch.zeros(8, 576)}
    small["b_dec"] = torch.zeros(576)

    def native(name, cfg, tensors=small, file="sae.safetensors"):
        d = tmp_path / name
        d.mkdir()
        (d / "cfg.json").write_text(json.dumps(cfg))
        save_file(tensors, str(d / file))
        return str(d)

    base = {"architecture": "relu", "d_in": 576, "hook_name": "blocks.6.hook_resid_post"}
    sparsify = {"encoder.weight": torch.zeros(8, 576), "encoder.bias": torch.zeros(8), "W_dec": torch.zeros(8, 576)}
    sparsify["b_dec"] = torch.zeros(576)
    big = 20_000  # a real 88 MiB file, refused under a 48 MiB ceiling
    big_t = {"W_enc": torch.zeros(576, big), "b_enc": torch.zeros(big), "W_dec": torch.zeros(big, 576)}
    big_t["b_dec"] = torch.zeros(576)
    dl = tmp_path / "dl"
    dl.mkdir()
    torch.save(
        {"encoder.weight": torch.zeros(8, 576), "decoder.weight": torch.zeros(576, 8), "bias": torch.zeros(576)},
        dl / "ae.pt",
    )
    (dl / "config.json").write_text(json.dumps({"trainer": [1, 2]}))
    out = tmp_path / "out"
    gb = 1 << 30
    cases = [
        (
            native("d6", {**base, "d_sae": 10**6}),
            gb,
            "tensor W_enc has shape [576, 8], cfg.json implies [576, 1000000]",
        ),
        (native("d12", {**base, "d_sae": 10**12}), gb, "cfg.json implies [576, 1000000000000]"),
        (native("lst", [1, 2, 3]), gb, "holds a JSON list, not an object"),
        (native("bool", {**base, "d_sae": True}), gb, "field d_sae: Input should be a valid integer"),
        (native("k", {**base, "architecture": "topk", "d_sae": 8, "k": 100}), gb, "k=100 exceeds d_sae=8"),
        (native("nan", {**base, "d_sae": 8, "act_scale": float("nan")}), gb, "field act_scale"),
        (
            native("sl", {**base, "d_sae": 10**12}, file="sae_weights.safetensors"),
            gb,
            "tensor W_enc has shape [576, 8], but its config implies [576, 1000000000000]",
        ),
        (native("sl_lst", [1], file="sae_weights.safetensors"), gb, "holds a JSON list, not an object"),
        (
            native("sp", {"k": 4, "num_latents": 10**12}, sparsify),
            gb,
            "tensor encoder.weight has shape [8, 576], but its config implies [1000000000000, '*']",
        ),
        (str(dl), gb, "could not be read as a dictionary_learning ae.pt (AttributeError"),
        (native("big", {**base, "d_sae": big}, big_t), 48 << 20, "of memory but only"),
        ("reference", gb, "encoding one batch (65536 x 128 tokens) with SAE"),
    ]
    argv = [
        ["run", "--sae", sae, "--out", str(out), "--quiet"]
        + (["--batch-size", "65536", "--tokens", str(65536 * 128)] if sae == "reference" else [])
        for sae, _, _ in cases
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SAEBENCH_CACHE": str(fresh_cache(tmp_path))}
    done = subprocess.run(
        [sys.executable, "-c", CEILING_SCRIPT, json.dumps([[a, h] for a, (_, h, _) in zip(argv, cases, strict=True)])],
        capture_output=True,
        text=True,
        env=env,
        timeout=LIMIT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for (sae, _, needle), got in zip(cases, report["results"], strict=True):
        res = SimpleNamespace(rc=got["rc"], err=got["err"])
        one_error(res, 2, needle)
        assert "out of memory" not in res.err, (sae, res.err)
    assert report["peak_rss"] < 1 << 30, report["peak_rss"]  # torch + saebench imported: ~0.25 GiB seen
    assert not list(out.rglob("*.json"))


# ---------------------------------------------------------------------------------------------
# the mechanisms, in-process (fast)

HOSTILE_NAMES = ["..", ".", "/", "a/../b", "/etc/passwd", "x\x1b[31m\ny\x00z", "n" * 300, "-", "~", "\u202e"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_names_become_one_safe_component(tmp_path, name):
    s = slug(name)
    assert s and len(s) <= 120 and "/" not in s and not s.startswith(".") and s.isprintable()
    path = result_path(tmp_path, name, name)
    assert path.parent.parent == tmp_path and path.resolve().is_relative_to(tmp_path.resolve())
    from saebench.leaderboard import plot_names

    row = {"results": {"core": SimpleNamespace(details={"curves": {name: {}}})}}
    for files in plot_names({(name, name, "cfg"): {name: row}}, "LB", []).values():
        assert files and all("/" not in f and not f.startswith(".") for f in files.values())


def test_long_names_stay_distinct():
    a, b = "n" * 300 + "a", "n" * 300 + "b"
    assert slug(a) != slug(b) and len(slug(a)) == 120 and slug("n" * 120) == "n" * 120


def test_hostile_names_end_to_end(tmp_path, model):
    """A run of several SAEs named as a hostile user would (and an evaluator plugin whose name
    is a path) writes every result inside --out, under printable names."""
    from saebench.loading import clean_name
    from saebench.runner import evaluate

    plugin = tmp_path / "ev.py"
    plugin.write_text(
        "from saebench.evaluators import EvalConfig, EvalOutput\n"
        "class Evil:\n"
        "    name = '../../evil'\n    needs = frozenset()\n    metrics = ()\n"
        "    class Config(EvalConfig):\n        pass\n"
        "    def run(self, ctx, cfg):\n        return EvalOutput(metrics={'one': 1})\n"
    )
    names = ["..", "a/../b", "/etc/passwd", "x\x1b[31m\ny", "n" * 300]
    own, _ = write_native(tmp_path / "..\x1b[2J\x07evil", d_sae=16)  # a name read from the SAE's own folder
    out = tmp_path / "deep" / "out"
    run = evaluate(
        ["reference"] * len(names) + [str(own)], model=model, evals=[f"python:{plugin}:Evil"], tokens=256,
        ctx_len=32, batch_size=4, out=out, name=[*names, None], progress=False, use_cache=False,
    )  # fmt: skip
    names.append(own.name)
    written = sorted(out.rglob("*.json"))
    assert len(written) == len(names) and all(p.parent.parent == out and p.name == "evil.json" for p in written)
    assert {p.parent.name for p in written} == {slug(clean_name(n)) for n in names}
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["out"]
    assert all(n.isprintable() for n in run.results)  # no terminal escapes or line breaks in names
    with pytest.raises(SaebenchError, match="would both write"):
        evaluate(["reference"] * 2, model=model, evals=["core"], tokens=256, ctx_len=32, batch_size=4,
                 out=out, name=["..", "/"], progress=False)  # fmt: skip
    with pytest.raises(SaebenchError, match="--name is empty"):
        evaluate("reference", model=model, out=out, name=" ", progress=False)


def _entry_files(tmp_path):
    from saebench.pipeline.states import save_entry

    tensors = {"states": torch.randn(6, 5, 7), "bf": torch.randn(3, 4).bfloat16(), "s": torch.tensor(2.5)}
    path = tmp_path / "states-x-k1.safetensors"
    assert save_entry(path, "states", "k1", tensors)
    return path, tensors


def test_cache_entry_checksum_catches_every_damage(tmp_path, caplog):
    from saebench.io import file_tensors_digest, tensors_digest
    from saebench.pipeline.states import _try_load, verify_entry

    path, tensors = _entry_files(tmp_path)
    assert file_tensors_digest(path, chunk_bytes=16) == tensors_digest(tensors)  # streaming == in memory
    got, why = _try_load(path, "k1")
    assert why is None and all(torch.equal(got[k], tensors[k]) for k in tensors)
    assert verify_entry(path, "k1") is None
    good = path.read_bytes()
    assert "holds key 'k1'" in _try_load(path, "k2")[1] == verify_entry(path, "k2")  # a renamed/copied entry
    n = len(good)
    damages = {
        "truncated": good[: n - 7],
        "bit flip": good[: n - 5] + bytes([good[n - 5] ^ 1]) + good[n - 4 :],
        "real data moved": good[: n - 40] + good[n - 20 :] + good[n - 40 : n - 20],
    }
    for label, data in damages.items():
        path.write_bytes(data)
        why = _try_load(path, "k1")[1]
        assert why and verify_entry(path, "k1"), label
    save_file(tensors, str(path))  # an entry written before checksums existed
    assert "no checksum" in _try_load(path, "k1")[1]


class _StubModel:
    """What ActivationPipeline's cache code reads from a model (no passes are made)."""

    name, dtype = "stub", torch.float32

    def hook_site(self, hook):
        from saebench.models import HookSite

        return HookSite(hook, 1, True)


def _pipe(use_cache=True):
    from saebench.pipeline.states import ActivationPipeline

    tokens = SimpleNamespace(tokens=torch.zeros(4, 8, dtype=torch.long), ctx_len=8)
    return ActivationPipeline(_StubModel(), tokens, "blocks.0.hook_resid_post", 2, use_cache=use_cache, progress=False)


def test_cache_entry_is_computed_once_across_processes_and_recomputed_when_damaged(cache_env, caplog):
    """Two workers (separate lock descriptors, as two processes have) ask for one entry: one
    computes while the other waits and reads it. A damaged entry is reported once and replaced."""
    calls = []

    def compute():
        calls.append(1)
        time.sleep(0.5)
        return {"x": torch.arange(10.0)}

    got = {}

    def worker(i):
        got[i] = _pipe().cached_tensors("ablation", "k", compute)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    with caplog.at_level(logging.WARNING, logger="saebench"):
        for t in threads:
            t.start()
            time.sleep(0.1)
        for t in threads:
            t.join()
    assert len(calls) == 1 and sorted(c for _, c in got.values()) == [False, True]
    assert "waiting for saebench process" in caplog.text
    path = _pipe().cache_path("ablation", "k")
    path.write_bytes(path.read_bytes()[:-3])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="saebench"):
        tensors, cached = _pipe().cached_tensors("ablation", "k", compute)
    assert not cached and len(calls) == 2 and torch.equal(tensors["x"], torch.arange(10.0))
    assert len(caplog.records) == 1 and "is unusable (unreadable" in caplog.text
    assert _pipe().cached_tensors("ablation", "k", compute)[1] and not leftovers(cache_env)


def test_full_cache_warns_once_and_goes_on(cache_env, monkeypatch, caplog):
    import saebench.pipeline.states as states

    def full(path, tensors, metadata=None):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(states, "atomic_save_tensors", full)
    with caplog.at_level(logging.WARNING, logger="saebench"):
        for what in ("states", "ablation", "task"):
            tensors, cached = _pipe().cached_tensors(what, "k", lambda: {"x": torch.ones(3)})
            assert not cached and torch.equal(tensors["x"], torch.ones(3))
    assert len(caplog.records) == 1 and "out of space" in caplog.text and "going on without caching" in caplog.text


def test_result_checksum(tmp_path, caplog):
    from test_results import _result

    from saebench.results import write_result

    path = tmp_path / "core.json"
    write_result(_result(fvu=0.123456), path)
    assert complete_result(path, "k1") is not None
    _flip_digit(path, "fvu")
    json.loads(path.read_text())  # still valid JSON: only the checksum tells
    with caplog.at_level(logging.WARNING, logger="saebench"):
        assert complete_result(path, "k1") is None
    assert "fails its checksum" in caplog.text and "recomputing it" in caplog.text
    with pytest.raises(SaebenchError, match="fails its checksum"):
        read_result(path)
    data = json.loads(path.read_text())
    del data["checksum"]  # the documented way to accept a hand edit
    path.write_text(json.dumps(data))
    assert read_result(path).metrics["fvu"] != 0.123456
    path.write_text(path.read_text()[:50])  # truncated
    with caplog.at_level(logging.WARNING, logger="saebench"):
        assert complete_result(path, "k1") is None


def test_result_that_cannot_be_written_is_kept(tmp_path, monkeypatch, capsys):
    from test_results import _result

    import saebench.results as results

    real = results.atomic_write_text
    target = tmp_path / "out" / "a" / "core.json"

    def full_here(path, text):
        if Path(path).is_relative_to(tmp_path / "out"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, text)

    monkeypatch.setattr(results, "atomic_write_text", full_here)
    monkeypatch.setattr(results.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    r = _result()
    with pytest.raises(SaebenchError) as exc:
        results.write_result(r, target)
    msg = str(exc.value)
    assert "\n" not in msg and f"writing {target} needs {len(results.result_text(r).encode())} bytes" in msg
    kept = Path(msg.split("kept in ")[1].split(": ")[0])
    assert kept.is_relative_to(tmp_path / "tmp") and read_result(kept) == r

    monkeypatch.setattr(results, "atomic_write_text", lambda path, text: full_here(tmp_path / "out", text))
    with pytest.raises(SaebenchError, match="printed on stdout"):
        results.write_result(r, target)
    assert json.loads(capsys.readouterr().out)["metrics"] == r.metrics


def test_stale_temps_removed_only_when_their_writer_is_gone(tmp_path):
    a, b, git = tmp_path / "a", tmp_path / "b", tmp_path / ".git"
    for d in (a, b, git):
        d.mkdir()
    dead = [a / ".core.json.tmp-k2j4_9zq", a / ".write-test-0a1b2c3d", b / ".states.safetensors.tmp-abcdefgh"]
    for f in dead:
        f.write_text("x")
    (a / ".model.tmp-qwertyui").mkdir()
    busy = b / ".ablation.safetensors.tmp-12345678"
    busy.write_text("x")
    keep = [a / "core.json", a / ".hidden", a / ".notes.tmp-x", git / ".x.tmp-abcdefgh", a / ".other-tool.lock"]
    for f in keep:
        f.write_text("x")
    unheld = lock_path(a / "core.json")
    unheld.write_text("saebench pid 999999\n")  # its process died
    with file_lock(lock_path(a / "probing.json"), "test"):
        with writing_in(b):  # a writer is active in b: nothing there is touched
            removed = remove_stale_temps(tmp_path, depth=1)
        assert lock_path(a / "probing.json").exists()  # held: kept
    assert set(removed) == {dead[0], dead[1], a / ".model.tmp-qwertyui", unheld}
    assert busy.exists() and dead[2].exists() and all(f.exists() for f in keep)
    assert not lock_path(a / "probing.json").exists()  # its holder removes it on release
    assert set(remove_stale_temps(tmp_path, depth=1)) == {busy, dead[2]}


def test_model_cache_that_cannot_be_written_runs_from_memory(tmp_path, monkeypatch, caplog):
    """The converted model is kept in memory (one warning) when the model cache is full; the
    folder API used to serve it names the problem in one line."""
    import saebench.models as models

    monkeypatch.setenv("SAEBENCH_CACHE", str(tmp_path / "cache"))

    class Saver:
        def save_pretrained(self, folder):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))

    hf, tok = Saver(), Saver()
    monkeypatch.setattr(models, "_convert_embedded", lambda: (hf, tok))
    with caplog.at_level(logging.WARNING, logger="saebench"):
        assert models.load_embedded_hf() == (hf, tok)
    assert len(caplog.records) == 1 and "cannot cache the converted embedded model" in caplog.text
    assert "out of space" in caplog.text and "using it from memory" in caplog.text
    with pytest.raises(SaebenchError, match="cannot cache the converted embedded model .* out of space"):
        models._hf_folder()
    assert not leftovers(tmp_path / "cache")


def test_header_bombs_and_lies_are_one_line_errors(tmp_path):
    from saebench.io import safetensors_header

    path = tmp_path / "x.safetensors"
    save_file({"a": torch.zeros(3, 4)}, str(path))
    assert safetensors_header(path) == {"a": ("F32", (3, 4))}
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    bombs = {
        "header length": (10**15).to_bytes(8, "little") + raw[8:],
        "shape": None,
        "short": raw[:5],
    }
    header["a"]["shape"] = [3, 10**12]
    text = json.dumps(header).encode()
    bombs["shape"] = len(text).to_bytes(8, "little") + text + raw[8 + n :]
    for label, data in bombs.items():
        path.write_bytes(data)
        with pytest.raises(SaebenchError, match="is not a readable safetensors file") as exc:
            safetensors_header(path)
        assert "\n" not in str(exc.value), label


def test_memory_estimate_refuses_a_file_that_cannot_fit(tmp_path, monkeypatch):
    import saebench.io as io
    from saebench.sae import load_native

    folder, _ = write_native(tmp_path / "sae", d_sae=64)
    avail, why = io.available_memory()
    assert avail is None or (avail > 0 and why)
    monkeypatch.setattr(io, "available_memory", lambda: (1000, "a test limit"))
    with pytest.raises(SaebenchError, match=r"needs 290\.5 KiB of memory but only 1000 B is available \(a test"):
        load_native(folder)


def test_resource_errors_are_one_line():
    from saebench.cli import _resource_error

    full = OSError(errno.ENOSPC, "No space left on device", "/x/y")
    assert _resource_error(full).startswith("no space left on device writing /x/y; free space")
    oom = RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory: 9 bytes")
    assert "out of memory" in _resource_error(oom) and "--batch-size" in _resource_error(oom)
    assert _resource_error(MemoryError()).startswith("out of memory")
    assert _resource_error(RuntimeError("a bug")) is None and _resource_error(ValueError("x")) is None
