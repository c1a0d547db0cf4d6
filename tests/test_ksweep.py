"""Test-time sparsity sweep: one clean pass for every k', the trained k reproduces core."""

from __future__ import annotations

import pytest
from conftest import HOOK, SMALL, write_native

from saebench import evaluate


def test_ksweep_on_the_reference_topk(model, cache_env):
    run = evaluate("reference", model=model, evals=["core", "ksweep"], progress=False,
                   eval_config={"ksweep": {"ks": [16]}}, **SMALL)  # fmt: skip
    core, ks = run.metrics["core"], run.metrics["ksweep"]
    sweep = run.details["ksweep"]["sweep"]
    assert ks["k"] == 32 and sweep["k"] == [16, 32, 64, 128]  # 16 asked; k/2 = 16, k, 2k, 4k added
    at = dict(zip(sweep["k"], sweep["fvu"], strict=True))
    assert at[32] == pytest.approx(core["fvu"], rel=1e-12)  # k' = k is the SAE itself
    assert sweep["l0"] == pytest.approx([16, 32, 64, 128])
    assert at[16] > at[32]  # fewer latents than trained: worse reconstruction
    assert ks["fvu_k_div2"] == pytest.approx(at[16]) and ks["fvu_k_x2"] == pytest.approx(at[64])
    (result,) = (r["ksweep"] for r in run.results.values())
    u = result.uncertainty["fvu_k_x2"]  # contexts grouped by source document, as core's
    assert u["n"] == 8 and u["cluster_unit"] == "document"
    assert (u["ci_low"] is None and "fewer than" in u["reason"]) or u["ci_low"] <= ks["fvu_k_x2"] <= u["ci_high"]
    c = run.counters[HOOK]
    n_batches = SMALL["tokens"] // SMALL["ctx_len"] // SMALL["batch_size"]
    # core's splice loop runs the clean suffix once; ksweep's loop (all four k' variants) reads it from the memo
    assert c.clean_suffix_batches == n_batches
    assert c.spliced_suffix_batches == (1 + 4) * n_batches


def test_ksweep_skips_an_sae_without_k(model, tmp_path, cache_env):
    folder, _ = write_native(tmp_path / "relu", arch="relu", d_sae=64)
    run = evaluate(str(folder), model=model, evals=["ksweep"], progress=False, **SMALL)
    assert run.metrics["ksweep"]["fvu_k_x2"] is None
    assert any("not TopK-like" in n for n in next(iter(run.results.values()))["ksweep"].notes)
