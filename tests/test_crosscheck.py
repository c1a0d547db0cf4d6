"""Our core metrics agree with SAELens's reference implementation on the same inputs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import HOOK

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_core_metrics_match_sae_lens(model, token_set, cache_env):
    from crosscheck_saelens import crosscheck

    from saebench.loading import load_sae

    ref = load_sae("reference")
    rows = crosscheck(model, ref.sae, HOOK, token_set.tokens, batch_size=4)
    assert rows["explained_variance"][0] == pytest.approx(rows["explained_variance"][1], abs=1e-5)
    assert rows["mse_per_token_sum"][0] == pytest.approx(rows["mse_per_token_sum"][1], rel=1e-5)
    for key in ("ce_loss_without_sae", "ce_loss_with_sae", "kl"):
        assert rows[key][0] == pytest.approx(rows[key][1], abs=1e-4), key


def test_core_metrics_equal_saebench(model, cache_env):
    """Every metric we publish under a SAEBench name equals SAEBench 0.6.0's own core eval (1e-4
    relative) on identical token ids, model and SAE (needs ``bash setup.sh --crosscheck``)."""
    pytest.importorskip("sae_bench", reason="sae-bench not installed: bash setup.sh --crosscheck")
    from crosscheck_saebench import SHARED, crosscheck

    from saebench.data import build_token_set
    from saebench.loading import load_sae

    ref = load_sae("reference")
    ts = build_token_set(model.tokenize, model.bos_id, 1024, 128, seed=0)  # 8 contexts, with separators
    assert int((ts.tokens[:, 1:] == model.bos_id).sum()) > 0  # mid-context BOS separators are exercised
    rows = crosscheck(model, ref.sae, HOOK, ts.tokens, batch_size=4)
    for key in SHARED:
        ours, theirs = rows[key]
        assert ours == pytest.approx(theirs, rel=1e-4, abs=1e-9), key
