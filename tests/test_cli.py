"""The command line: one-line errors with exit 2 and no partial file; resume; leaderboard."""

from __future__ import annotations

import json

import pytest
from conftest import HOOK, write_native

from saebench.cli import main
from saebench.results import SCHEMA_VERSION

SMALL_ARGS = ["--tokens", "128", "--ctx-len", "32", "--batch-size", "4", "--quiet"]


def _run(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def _assert_clean_error(code, err, out_dir, needle):
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], err
    assert not list(out_dir.rglob("*.json")) if out_dir.exists() else True
    assert not list(out_dir.rglob(".*tmp*")) if out_dir.exists() else True


@pytest.fixture
def native(tmp_path):
    folder, _ = write_native(tmp_path / "sae", arch="topk", d_sae=128)
    return folder


def test_run_writes_result_then_skips_then_forces(native, tmp_path, capsys, cache_env, model):
    out = tmp_path / "res"
    code, stdout, _ = _run(["run", "--sae", str(native), "--out", str(out)] + SMALL_ARGS, capsys)
    assert code == 0 and "wrote" in stdout
    path = out / "sae" / "core.json"
    data = json.loads(path.read_text())
    assert data["schema_version"] == SCHEMA_VERSION and data["config"]["hook"] == HOOK
    assert data["env"]["packages"]["torch"] and "total_s" in data["timing"]
    mtime = path.stat().st_mtime_ns
    code, stdout, _ = _run(["run", "--sae", str(native), "--out", str(out)] + SMALL_ARGS, capsys)
    assert code == 0 and "skipped" in stdout and path.stat().st_mtime_ns == mtime
    code, stdout, _ = _run(["run", "--sae", str(native), "--out", str(out), "--force"] + SMALL_ARGS, capsys)
    assert code == 0 and path.stat().st_mtime_ns != mtime


def test_d_in_mismatch(tmp_path, capsys, cache_env, model):
    folder, _ = write_native(tmp_path / "wide", arch="relu", d_in=768, d_sae=64)
    out = tmp_path / "res"
    code, _, err = _run(["run", "--sae", str(folder), "--out", str(out)] + SMALL_ARGS, capsys)
    _assert_clean_error(code, err, out, "d_in=768 but hook blocks.6.hook_resid_post")


def test_bad_hook(native, tmp_path, capsys, cache_env, model):
    out = tmp_path / "res"
    args = ["run", "--sae", str(native), "--hook", "blocks.6.hook_nothing", "--out", str(out)] + SMALL_ARGS
    code, _, err = _run(args, capsys)  # not the SAE's own hook: refused before the model loads
    _assert_clean_error(code, err, out, "trained at blocks.6.hook_resid_post (its config) but --hook asks for")
    code, _, err = _run(args + ["--force-hook"], capsys)
    _assert_clean_error(code, err, out, "is not a hook of model")


def test_tokens_smaller_than_a_batch(native, tmp_path, capsys):
    out = tmp_path / "res"
    code, _, err = _run(
        [
            "run",
            "--sae",
            str(native),
            "--out",
            str(out),
            "--tokens",
            "16",
            "--ctx-len",
            "32",
            "--batch-size",
            "4",
            "--quiet",
        ],
        capsys,
    )
    _assert_clean_error(code, err, out, "smaller than one batch")


def test_unwritable_output(native, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = _run(["run", "--sae", str(native), "--out", str(blocker / "sub")] + SMALL_ARGS, capsys)
    assert code == 2 and "is not writable" in err


@pytest.mark.parametrize("problem", ["nan", "truncated", "unknown-arch", "pickle", "factory", "not-an-sae"])
def test_bad_sae_inputs(problem, tmp_path, capsys):
    import torch
    from safetensors.torch import load_file, save_file

    folder, sae = write_native(tmp_path / "bad", arch="relu", d_sae=64)
    spec, needle = str(folder), ""
    if problem == "nan":
        t = load_file(folder / "sae.safetensors")
        t["b_enc"][3] = float("inf")
        save_file(t, folder / "sae.safetensors")
        needle = "NaN/Inf"
    elif problem == "truncated":
        (folder / "sae.safetensors").write_bytes((folder / "sae.safetensors").read_bytes()[:100])
        needle = "truncated"
    elif problem == "unknown-arch":
        cfg = json.loads((folder / "cfg.json").read_text())
        (folder / "cfg.json").write_text(json.dumps({**cfg, "architecture": "magic"}))
        needle = "unknown architecture"
    elif problem == "pickle":
        import argparse

        torch.save({"W_enc": sae.W_enc, "cfg": argparse.Namespace(k=1)}, folder / "ae.pt")
        spec, needle = str(folder / "ae.pt"), "--trust-pickle"
    elif problem == "factory":
        spec, needle = f"python:{tmp_path}/nope.py:build", "does not exist"
    else:
        (tmp_path / "f.py").write_text("def build():\n    return 42\n")
        spec, needle = f"python:{tmp_path}/f.py:build", "without encode"
    out = tmp_path / "res"
    code, _, err = _run(["run", "--sae", spec, "--out", str(out)] + SMALL_ARGS, capsys)
    _assert_clean_error(code, err, out, needle)


def test_leaderboard_command(native, tmp_path, capsys, cache_env, model):
    out = tmp_path / "res"
    assert main(["run", "--sae", str(native), "--out", str(out)] + SMALL_ARGS) == 0
    (out / "junk.json").write_text("{not json")
    md = tmp_path / "LB.md"
    code, stdout, err = _run(["leaderboard", str(out), "-o", str(md)], capsys)
    assert code == 0 and "junk.json" in err
    text = md.read_text()
    assert "smollm2-135m" in text and "| sae " in text and "FVU ↓" in text


def test_help_teaches(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "python:FILE.py:FACTORY" in out and "--profile" in out


def test_zoo_list_names_the_reseeded_copies(capsys):
    """`saebench zoo list --seeds`: the 14 board members keep their names (seed 0) and the 14
    reseeded copies of the seven reliability configurations are named <config>-s<seed>."""
    from saebench.cli import main
    from saebench.zoo import RESEEDED_CONFIGS, SEED_ZOO, ZOO

    assert main(["zoo", "list"]) == 0
    plain = [ln.split()[0] for ln in capsys.readouterr().out.splitlines()]
    assert plain == [m.name for m in ZOO] and len(plain) == 14 and all(m.seed == 0 for m in ZOO)
    assert main(["zoo", "list", "--seeds"]) == 0
    names = [ln.split()[0] for ln in capsys.readouterr().out.splitlines()]
    assert names[:14] == plain and len(names) == len(set(names)) == 28
    assert {m.config for m in SEED_ZOO} == set(RESEEDED_CONFIGS) and {m.seed for m in SEED_ZOO} == {1, 2}
    assert "relu-2304-l0_32-s2" in names and "topk-2304-k16-s1" in names


def test_a_swallowed_ctrl_c_is_delivered_again_until_handled():
    """CPython drops a KeyboardInterrupt raised in an import-lock callback; the CLI's SIGINT handler
    re-sends SIGINT until main() has caught one, and never after."""
    import os
    import signal
    import time

    from saebench.cli import CtrlC

    ctrl = CtrlC()
    previous = signal.signal(signal.SIGINT, ctrl.on_sigint)
    try:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
        except KeyboardInterrupt:
            pass  # swallowed, as CPython does inside a weakref / import-lock callback
        with pytest.raises(KeyboardInterrupt):
            time.sleep(3)
        ctrl.handled()
        time.sleep(1.2)  # handled: no further SIGINT arrives
    finally:
        signal.signal(signal.SIGINT, previous)
