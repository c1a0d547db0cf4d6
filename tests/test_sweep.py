"""Sweeps in bounded memory: streamed prefix states, SAE groups under --max-memory, identical results."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import HOOK, SMALL, write_native

from saebench import evaluate
from saebench.budget import batch_working_set, parse_size, plan_groups, stats_bytes
from saebench.cli import main
from saebench.errors import SaebenchError
from saebench.pipeline import ActivationPipeline
from saebench.pipeline.stored import PrefixStates, open_states, write_states


def test_parse_size():
    assert parse_size("8GB") == 8 * 10**9 and parse_size("8GiB") == 8 * 2**30 and parse_size("8Gi") == 8 * 2**30
    assert parse_size("512MB") == 512 * 10**6 and parse_size("1.5G") == 1_500_000_000 and parse_size(4096) == 4096
    for bad in ("lots", "8XB", "-1GB", "0"):
        with pytest.raises(SaebenchError, match="--max-memory"):
            parse_size(bad)


def test_prefix_states_index_like_a_tensor(tmp_path):
    full = torch.randn(11, 5, 3)
    path = tmp_path / "s.safetensors"
    with open(path, "wb") as fh:
        write_states(fh, tuple(full.shape), full.dtype, "k", [full[s : s + 4] for s in range(0, 11, 4)])
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(path))["states"], full)  # a standard safetensors file
    st = open_states(path, "k", tuple(full.shape), full.dtype)
    assert st is not None and st.shape == full.shape and len(st) == 11
    idx = torch.tensor([7, 2, 3, 4, 2, 10])
    for key in (slice(0, 4), slice(8, 99), slice(None), slice(1, 9, 3), 3, -1, idx, [5, 6], (idx, slice(0, 2)), (2, 1)):
        assert torch.equal(st[key], full[key]), key
    assert st[slice(4, 2)].shape == (0, 5, 3)
    with pytest.raises(IndexError):
        st[11]
    assert open_states(path, "other-key", tuple(full.shape), full.dtype) is None  # key checked
    assert open_states(path, "k", (11, 5, 4), full.dtype) is None  # shape checked
    data = bytearray(path.read_bytes())
    data[-7] ^= 0xFF  # one flipped byte in the data section: the checksum refuses the entry
    path.write_bytes(bytes(data))
    assert open_states(path, "k", tuple(full.shape), full.dtype) is None
    bf = PrefixStates.in_memory(full.to(torch.bfloat16))
    assert torch.equal(bf[idx], full.to(torch.bfloat16)[idx])


def test_states_stream_from_the_cache_and_a_damaged_entry_is_recomputed(model, token_set, cache_env, caplog):
    pipe = ActivationPipeline(model, token_set, HOOK, SMALL["batch_size"], progress=False)
    states = pipe.states()
    assert isinstance(states, PrefixStates) and states.path  # backed by the cache file, not held in memory
    ref = states.tensor().clone()
    direct = model.prefix(token_set.tokens[:4], model.hook_site(HOOK))
    assert torch.equal(states[0:4], direct)
    files = list((cache_env / "activations").rglob("states-*.safetensors"))
    assert len(files) == 1
    data = bytearray(files[0].read_bytes())
    data[len(data) // 2] ^= 0x10  # damaged in the middle of the data section, header intact
    files[0].write_bytes(bytes(data))
    again = ActivationPipeline(model, token_set, HOOK, SMALL["batch_size"], progress=False)
    with caplog.at_level(logging.WARNING, logger="saebench"):
        fresh = again.states()
    assert "is unusable (damaged, stale, or of another shape); deleted, recomputing it" in caplog.text
    assert again.counters.prefix_batches == len(token_set.tokens) // SMALL["batch_size"]  # recomputed
    assert torch.equal(fresh.tensor(), ref)
    warm = ActivationPipeline(model, token_set, HOOK, SMALL["batch_size"], progress=False)
    assert torch.equal(warm.states()[:], ref) and warm.counters.prefix_batches == 0
    nocache = ActivationPipeline(model, token_set, HOOK, SMALL["batch_size"], use_cache=False, progress=False)
    assert torch.equal(nocache.states()[:], ref)  # --no-cache: an anonymous temporary file


def test_plan_groups():
    names = ["a", "b", "c", "d"]
    w = dict.fromkeys(names, 1000)
    d = dict.fromkeys(names, 10)
    per = 1000 + stats_bytes(4, 8, 10)
    assert plan_groups(names, w, d, None, 0, 0, 4, 8).groups == [names]
    budget = int((2000 + 2.5 * per) / 0.95) + 20
    assert plan_groups(names, w, d, budget, 0, 0, 4, 8).groups == [["a", "b"], ["c", "d"]]
    with pytest.raises(SaebenchError, match="cannot hold one SAE"):
        plan_groups(names, w, d, 2500, 0, 0, 4, 8)


def test_groups_under_a_budget_give_bit_identical_results(tmp_path, cache_env, monkeypatch):
    """Three SAEs spliced one group each (a budget that holds one), all in one group (no budget),
    and each alone: every metric equal bit for bit; the clean suffix runs once per token set (then cached).
    (A small random Qwen2: grouping is model-agnostic, and this keeps the test fast.)"""
    from test_models_families import build_model, random_tokens

    model = build_model("qwen2")
    tokens = random_tokens(n_seq=12, ctx_len=24)
    hook = "blocks.1.hook_resid_post"
    archs = ["topk", "relu", "jumprelu"]
    specs = [
        str(write_native(tmp_path / f"sae-{a}", arch=a, d_in=32, d_sae=96, seed=i, hook_name=hook)[0])
        for i, a in enumerate(archs)
    ]
    n_batches = 3
    kw = dict(model=model, hook=hook, progress=False, token_set=tokens, batch_size=4)
    together = evaluate(specs, **kw)
    assert together.counters[hook].clean_suffix_batches == n_batches

    import saebench.runner as runner

    monkeypatch.setattr(runner, "device_used", lambda device: 0)  # plan against a known baseline
    ws = batch_working_set(model, 4, 24, 32, 96)
    weights = 2 * 32 * 96 * 4 + 96 * 4 + 32 * 4 + 96 * 4  # the largest (jumprelu, with threshold)
    per = weights + stats_bytes(12, 24, 96)
    budget = int((ws + 2 * weights + 1.5 * per) / 0.95)
    grouped = evaluate(specs, max_memory=budget, **kw)
    assert grouped.groups[hook] == [1, 1, 1]
    # three groups of one, none running the clean suffix: the first run cached the clean side
    assert grouped.counters[hook].clean_suffix_batches == 0
    assert grouped.counters[hook].spliced_suffix_batches == 3 * n_batches
    for spec in specs:
        name = spec.rsplit("/", 1)[-1]
        alone = evaluate(spec, **kw)
        assert alone.metrics["core"] == together.results[name]["core"].metrics == grouped.results[name]["core"].metrics
    with pytest.raises(SaebenchError, match="cannot hold one SAE.*raise --max-memory"):
        evaluate(specs, max_memory="1kB", **kw)


def test_cli_max_memory_and_progress(tmp_path, capsys, cache_env):
    specs = [str(write_native(tmp_path / f"s{i}", arch="topk", d_sae=64, seed=i)[0]) for i in range(2)]
    base = ["run", "--sae", *specs, "--out", str(tmp_path / "out"), "--tokens", "256", "--ctx-len", "32"]
    base += ["--batch-size", "4"]
    assert main([*base, "--max-memory", "64GB"]) == 0
    captured = capsys.readouterr()
    assert "SAEs: 100%" in captured.err and "2/2" in captured.err  # the sweep's progress bar
    assert (tmp_path / "out" / "s0" / "core.json").is_file() and (tmp_path / "out" / "s1" / "core.json").is_file()


def test_cli_ray_flags_are_checked_before_work(capsys):
    assert main(["run", "--sae", "reference", "--ray-workers", "2"]) == 2
    assert "--ray-workers needs --ray" in capsys.readouterr().err
    assert main(["run", "--sae", "reference", "--ray", "--ray-workers", "0"]) == 2
    assert "must be at least 1" in capsys.readouterr().err
