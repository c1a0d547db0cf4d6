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
    for key in ("ce_clean", "ce_spliced", "kl"):
        assert rows[key][0] == pytest.approx(rows[key][1], abs=1e-4), key
