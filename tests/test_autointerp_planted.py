"""Autointerp validated on planted latents, end to end through ``saebench.evaluate`` with the default
offline scorer (the embedded SmolLM2-135M in process, surprisal method).

- ``Planted`` reads ``blocks.0.hook_resid_pre``, which on this model is exactly the token embedding:
  latent 0 fires (1.0) on " the" and nowhere else, latent 1 on " and", latents 2 and 3 are copies
  of 0 and 1 (so one run scores true and wrong explanations of the same latents);
- ``Hashed`` reads ``blocks.0.hook_resid_post`` (after one block, so the residual depends on the
  context) and fires where a hash of its sign pattern hits a residue: random positions that no
  explanation can describe.

The margins come from the measurement (OMP_NUM_THREADS=1, these sizes; docs/autointerp.md has the
per-latent table): true explanations (both runs) scored detection AUROC 0.80-1.0, fuzzing 0.94-1.0 and
simulation r 0.58-0.90; wrong ones 0.57-0.60 and r 0.05; the hashed latents detection 0.36-0.88
(mean 0.63), fuzzing 0.40-0.49, r -0.17-0.02. Under the null hypothesis (a scorer that ignores the
explanation) one latent's AUROC with 5 positives and 5 negatives has standard deviation
sqrt((5+5+1)/(12*5*5)) = 0.19, so a mean over two latents has 0.14 and over four 0.10: ">= 0.8" for
two true explanations is 2.2 null SDs above chance (and below every measured mean), "within 0.5 +-
0.3" for the two wrong ones 2.2 SDs, "within 0.5 +- 0.25" for the four hashed latents 2.5 SDs.

The given true explanations are the baseline explainer's own phrasing, so the baseline run (same
latents, same examples where the sample coincides) is answered mostly from the shared cache.
"""

from __future__ import annotations

import pytest
import torch
from conftest import SMALL

SIZES = {
    "n_top_explain": 4,
    "n_sampled_explain": 2,
    "n_top_score": 4,
    "n_sampled_score": 1,
    "n_random_score": 5,
    "n_random_simulation": 1,
    "n_random_fuzz": 2,
    "window": 4,
    "transcripts": False,
}
WRONG = "musical instruments"


class Planted(torch.nn.Module):
    """Latent i fires (1.0) exactly where the hook input equals the embedding of a token in groups[i]."""

    hook_name = "blocks.0.hook_resid_pre"
    model_name = "smollm2-135m"

    def __init__(self, W_E: torch.Tensor, groups: list[list[int]]) -> None:
        super().__init__()
        self.d_in, self.d_sae = int(W_E.shape[1]), len(groups)
        self.groups = [W_E[torch.tensor(g)].clone() for g in groups]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).float()
        cols = []
        for E in self.groups:
            d = torch.cdist(flat, E.float()).min(-1).values
            cols.append((d < 1e-3 * float(E.norm(dim=-1).min())).to(x.dtype))
        return torch.stack(cols, -1).reshape(*x.shape[:-1], self.d_sae)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*z.shape[:-1], self.d_in, dtype=z.dtype)


class Hashed(torch.nn.Module):
    """Latent i fires (1.0) where a hash of the residual is i mod 6: random positions.

    After one block the residual still looks mostly like the token's embedding (a hash of its sign
    pattern fired on HTML tokens), but its exact values depend on the whole preceding context: the
    hash of the values rounded to 1e-3 is a function of the context that no explanation describes.
    """

    hook_name = "blocks.0.hook_resid_post"
    model_name = "smollm2-135m"

    def __init__(self, n: int = 4) -> None:
        super().__init__()
        self.d_in, self.d_sae = 576, n
        g = torch.Generator().manual_seed(0)
        self.register_buffer("w", torch.randint(1, 1 << 20, (576,), generator=g, dtype=torch.int64))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        q = (x.double() * 1000).round().long()
        h = (q * self.w).sum(-1) % 1000003 % 6
        return torch.stack([(h == i).to(x.dtype) for i in range(self.d_sae)], -1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*z.shape[:-1], self.d_in, dtype=z.dtype)


def _rows(run, name: str) -> dict[int, dict]:
    return {r["latent"]: r for r in run.results[name]["autointerp"].details["latents"]}


@pytest.fixture(scope="module")
def planted_runs(model, tmp_path_factory):
    """Two runs sharing one response cache: given (true / wrong) explanations, and the baseline explainer."""
    import os

    import saebench
    from saebench.io import cache_dir

    root = tmp_path_factory.mktemp("cache")
    models = cache_dir() / "models"
    if models.exists():
        (root / "models").symlink_to(models)
    old = os.environ.get("SAEBENCH_CACHE")
    os.environ["SAEBENCH_CACHE"] = str(root)
    try:
        tok = model.tokenizer
        the = tok(" the", add_special_tokens=False)["input_ids"]
        and_ = tok(" and", add_special_tokens=False)["input_ids"]
        planted = Planted(model.model.W_E.detach(), [the, and_, the, and_])
        kw = {"model": model, "evals": ["autointerp"], "tokens": 4096, "ctx_len": 64, "progress": False}
        kw["batch_size"] = SMALL["batch_size"]
        given = {0: 'the token "the"', 1: 'the token "and"', 2: WRONG, 3: WRONG}
        explained = saebench.evaluate(
            planted, name="planted", eval_config={"autointerp": {**SIZES, "explanations": given}}, **kw
        )
        baseline = saebench.evaluate(
            planted, name="planted", eval_config={"autointerp": {**SIZES, "latents": [0, 1]}}, **kw
        )
        hashed = saebench.evaluate(Hashed(), name="hashed", eval_config={"autointerp": SIZES}, **kw)
        return explained, baseline, hashed
    finally:
        if old is None:
            os.environ.pop("SAEBENCH_CACHE", None)
        else:
            os.environ["SAEBENCH_CACHE"] = old


def _mean(rows: dict[int, dict], latents: list[int], kind: str, key: str) -> float:
    vals = [rows[i][kind][key] for i in latents]
    assert all(v is not None for v in vals), vals
    return sum(vals) / len(vals)


def test_true_explanation_of_a_planted_latent_scores_far_above_chance(planted_runs):
    explained = planted_runs[0]
    rows = _rows(explained, "planted")
    for i in (0, 1):
        d = rows[i]["detection"]
        assert d["n_positive"] >= 5 and d["n_negative"] >= 5, d
    assert _mean(rows, [0, 1], "detection", "auroc") >= 0.8
    assert _mean(rows, [0, 1], "fuzzing", "auroc") >= 0.8
    assert _mean(rows, [0, 1], "simulation", "r") >= 0.3  # measured 0.5-0.8; a scorer ignoring it: ~0
    res = explained.results["planted"]["autointerp"]
    assert res.details["scorer"].startswith("embedded smollm2-135m-instruct in process (surprisal")
    assert res.details["explainer"].startswith("given")
    iv = res.uncertainty["fuzzing_auroc"]  # per-latent samples; 4 latents are too few for an interval
    assert iv["n"] == 4 and iv["unit"] == "latent" and iv["ci_low"] is None and "fewer than 8" in iv["reason"]


def test_wrong_explanation_falls_to_chance(planted_runs):
    explained = planted_runs[0]
    rows = _rows(explained, "planted")
    assert rows[2]["explanation"] == WRONG
    for kind in ("detection", "fuzzing"):
        assert abs(_mean(rows, [2, 3], kind, "auroc") - 0.5) <= 0.3, kind
        assert _mean(rows, [2, 3], kind, "auroc") < _mean(rows, [0, 1], kind, "auroc") - 0.2, kind
    assert abs(_mean(rows, [2, 3], "simulation", "r")) <= 0.3


def test_baseline_explainer_finds_the_planted_token_and_random_latents_stay_at_chance(planted_runs):
    _, baseline, hashed_run = planted_runs
    planted, hashed = _rows(baseline, "planted"), _rows(hashed_run, "hashed")
    assert planted[0]["explanation"] == 'the token "the"'
    assert planted[1]["explanation"] == 'the token "and"'
    assert _mean(planted, [0, 1], "fuzzing", "auroc") >= 0.8
    usage = baseline.results["planted"]["autointerp"].details["embedded_usage"]
    assert usage["cached_prompts"] > usage["prompts"]  # the same questions as the given run: cached by content
    for kind in ("detection", "fuzzing"):
        assert abs(_mean(hashed, [0, 1, 2, 3], kind, "auroc") - 0.5) <= 0.25, kind
    assert abs(_mean(hashed, [0, 1, 2, 3], "simulation", "r")) <= 0.3
    res = hashed_run.results["hashed"]["autointerp"]
    assert res.details["explainer"].startswith("top-tokens") and res.metrics["n_latents_run"] == 4
