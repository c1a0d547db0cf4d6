"""``meta_structure``: a decoder built from a few shared directions is explained, a random one is not;
the evaluator needs no model pass; an SAE without ``W_dec`` uses its decoder directions; bad
settings are one line. (Equality with SAEBench's own code: tests/test_crosscheck_meta_mdl.py.)"""

from __future__ import annotations

import pytest
import torch
from conftest import HOOK, SMALL

from saebench.errors import SaebenchError
from saebench.evaluators.base import EvalContext
from saebench.evaluators.meta_structure import MetaStructureConfig, MetaStructureEvaluator
from saebench.probes.meta_sae import row_errors, train_meta_sae

FAST = {"train_steps": 300, "train_batch_size": 256, "learning_rate": 5e-3, "autocast": False}


def planted_rows(d: int = 64, n_shared: int = 32, n_rows: int = 128, seed: int = 0) -> torch.Tensor:
    """Rows that are positive combinations of exactly 2 of ``n_shared`` unit directions."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.nn.functional.normalize(torch.randn(n_shared, d, generator=g), dim=-1)
    idx = torch.stack([torch.randperm(n_shared, generator=g)[:2] for _ in range(n_rows)])
    coef = 0.5 + torch.rand(n_rows, 2, generator=g)
    return (coef.unsqueeze(-1) * shared[idx]).sum(1)


def fve(rows: torch.Tensor, seed: int = 42) -> float:
    meta = train_meta_sae(rows, rows.shape[0] // 4, 4, 300, 256, 5e-3, seed, autocast=False)
    err, var = row_errors(meta, rows, 4096)
    return 1.0 - float(err.sum() / var.sum())


def test_planted_structure_is_explained_and_random_rows_are_not():
    rows = planted_rows()
    random = torch.randn_like(rows)
    assert fve(rows) > 0.98  # a width-32 meta-SAE with k=4 holds the 32 shared directions
    assert fve(random) < 0.7  # 128 Gaussian rows in 64 dimensions share no such structure


class _Decoder:
    """A protocol-only SAE (no W_dec): decode(z) = z D + b."""

    def __init__(self, dec: torch.Tensor) -> None:
        self.dec, self.d_sae, self.d_in = dec, dec.shape[0], dec.shape[1]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.dec.T)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.dec + 0.25


def _run(sae, **cfg):
    ctx = EvalContext(None, sae, "s", "fp", 0, "quick")  # type: ignore[arg-type]  # no pipeline needed
    return MetaStructureEvaluator().run(ctx, MetaStructureConfig(**{**FAST, **cfg})), ctx


def test_an_sae_without_w_dec_is_read_through_decode_and_gives_the_same_number():
    from saebench.runner import finish_metrics

    rows = planted_rows(n_rows=64, n_shared=16)
    plain, ctx = _run(_Decoder(rows))
    with_w = _Decoder(rows)
    with_w.W_dec = rows.clone()  # type: ignore[attr-defined]
    direct, _ = _run(with_w)
    assert "no W_dec" in plain.details["decoder_source"] and direct.details["decoder_source"] == "W_dec"
    m_plain, u_plain, _ = finish_metrics(MetaStructureEvaluator(), plain)
    m_direct, _, _ = finish_metrics(MetaStructureEvaluator(), direct)
    assert m_plain["decoder_fraction_variance_explained"] == pytest.approx(
        m_direct["decoder_fraction_variance_explained"], abs=1e-5
    )
    cols = plain.samples["decoder_row"].columns
    by_hand = 1 - sum(cols["sq_err"]) / sum(cols["var"])
    assert m_plain["decoder_fraction_variance_explained"] == pytest.approx(by_hand, rel=1e-12)
    iv = u_plain["decoder_fraction_variance_explained"]
    assert iv["n"] == 64 and iv["unit"] == "decoder_row" and iv["ci_low"] <= by_hand <= iv["ci_high"]


def test_runs_with_no_model_pass(model, tmp_path, cache_env):
    from conftest import write_native

    from saebench import evaluate

    folder, _ = write_native(tmp_path / "sae", arch="relu", d_sae=64)
    run = evaluate(str(folder), model=model, evals=["meta_structure"], progress=False,
                   eval_config={"meta_structure": FAST}, **SMALL)  # fmt: skip
    c = run.counters[HOOK]
    assert c.prefix_batches == 0 and c.spliced_suffix_batches == 0 and c.clean_suffix_batches == 0
    m = run.metrics["meta_structure"]
    assert 0.0 < m["decoder_fraction_variance_explained"] < 1.0 and m["meta_width"] == 16
    result = next(iter(run.results.values()))["meta_structure"]
    assert result.timing["meta_sae_train_s"] > 0 and "decoder_fraction_variance_explained" in result.uncertainty


def test_bad_settings_are_one_line_before_any_work(model, tmp_path):
    from conftest import write_native

    from saebench import evaluate

    folder, _ = write_native(tmp_path / "sae", arch="relu", d_sae=64)
    for bad in ({"k": 0}, {"width_ratio": 0.0}, {"train_steps": 0}):
        with pytest.raises(SaebenchError) as exc:
            evaluate(str(folder), model=model, evals=["meta_structure"], progress=False,
                     eval_config={"meta_structure": bad}, **SMALL)  # fmt: skip
        assert "meta_structure" in str(exc.value) and "\n" not in str(exc.value), bad
