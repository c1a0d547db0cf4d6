"""``mdl``: the description length of hand-made codes equals the hand computation; the histogram and
the quantiser follow ``torch.histogram`` / ``torch.bucketize`` exactly; the document jackknife's
leave-one-out values equal recomputations; an SAE that never fires costs 0 bits; bad settings are
one line. (Equality with SAEBench's own code: tests/test_crosscheck_meta_mdl.py.)"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import SMALL

from saebench.errors import SaebenchError
from saebench.probes.mdl import SparseCodes, bin_edges, histogram_bins, quantize


def codes_of(columns: list[list[float]], docs: list[int]) -> SparseCodes:
    """SparseCodes of tokens given as per-latent columns."""
    z = torch.tensor(columns, dtype=torch.float32).T
    sc = SparseCodes(z.shape[1])
    sc.add(z, torch.tensor([sc.doc(str(d)) for d in docs]))
    sc.finish()
    return sc


def h(*p: float) -> float:
    return -sum(q * math.log2(q) for q in p if 0 < q < 1)


def test_description_length_by_hand():
    # latent 0: fires on 4 of 8 tokens (10, 10, 60, 60); range [0, 100] (the floor); 4 bins of 25:
    #   bins hold 4 zeros + two 10s | - | two 60s | -  -> q = (6/8, 2/8)
    # latent 1: never fires -> 0 bits; latent 2: fires on 2 of 8 with 150 (range [0, 150]), 2 bins:
    #   zeros + nothing | two 150s (the closed last bin) -> q = (6/8, 2/8)
    cols = [[0, 10, 0, 10, 0, 60, 0, 60], [0] * 8, [150, 0, 0, 0, 0, 0, 150, 0]]
    sc = codes_of(cols, [0] * 8)
    assert sc.hist_max().tolist() == [100.0, 100.0, 150.0]
    dl4, _, info = sc.dl(bin_edges(sc.hist_max(), 4))
    expect4 = (h(0.5, 0.5) + 0.5 * h(0.75, 0.25)) + 0 + (h(0.25, 0.75) + 0.25 * h(0.75, 0.25))
    assert dl4 == pytest.approx(expect4, rel=1e-12) and info["n_tokens"] == 8
    # at 2 bins latent 0's 60s fall in the upper half of [0, 100]: the same split; latent 2 too
    dl2, _, _ = sc.dl(bin_edges(sc.hist_max(), 2))
    assert dl2 == pytest.approx(expect4, rel=1e-12)
    # at 8 bins of 12.5: 10 shares the first bin with the zeros, 60 is in bin 4; 150 in the last
    dl8, _, _ = sc.dl(bin_edges(sc.hist_max(), 8))
    assert dl8 == pytest.approx(expect4, rel=1e-12)
    # a latent whose values spread over two non-zero bins costs more
    sc2 = codes_of([[0, 10, 0, 40, 0, 60, 0, 90]], [0] * 8)
    dl, _, _ = sc2.dl(bin_edges(sc2.hist_max(), 4))
    assert dl == pytest.approx(h(0.5, 0.5) + 0.5 * h(5 / 8, 1 / 8, 1 / 8, 1 / 8), rel=1e-12)


def test_histogram_bins_and_quantiser_follow_torch_exactly():
    g = torch.Generator().manual_seed(0)
    maxes = torch.tensor([100.0, 137.3, 512.0])
    for nb in (4, 6, 32):
        edges = bin_edges(maxes, nb)
        for f in range(3):
            assert torch.equal(edges[f], torch.linspace(0.0, float(maxes[f]), nb + 1))
            v = torch.cat([torch.rand(500, generator=g) * maxes[f] * 1.1 - 5, edges[f], torch.zeros(3)])
            b = histogram_bins(v, torch.full(v.shape, f), edges)
            ours = torch.bincount(b[b >= 0], minlength=nb).float()
            assert torch.equal(ours, torch.histogram(v, bins=edges[f])[0]), (nb, f)
        z = torch.rand(50, 3, generator=g) * maxes * 1.2
        z[:10] = 0.0
        q = quantize(z, edges)
        mids = 0.5 * (edges[:, :-1] + edges[:, 1:])
        for f in range(3):
            idx = torch.bucketize(z[:, f].contiguous(), edges[f]).clamp(1, nb) - 1
            assert torch.equal(q[:, f], mids[f][idx])
        assert torch.equal(q[:10], mids[:, 0].expand(10, 3))  # zeros go to the first bin's midpoint


def test_leave_one_document_out_values_equal_recomputation():
    g = torch.Generator().manual_seed(1)
    z = torch.relu(torch.randn(60, 5, generator=g) * 80 - 40)
    docs = [i // 10 for i in range(60)]  # 6 documents
    sc = codes_of(z.T.tolist(), docs)
    edges = bin_edges(sc.hist_max(), 6)  # the range is fixed by all tokens, as in the evaluator
    value, loo, _ = sc.dl(edges)
    for d in range(6):
        keep = [i for i in range(60) if docs[i] != d]
        rest = codes_of(z[keep].T.tolist(), [docs[i] for i in keep])
        assert loo[d] == pytest.approx(rest.dl(edges)[0], rel=1e-12)
    assert value == pytest.approx(codes_of(z.T.tolist(), [0] * 60).dl(edges)[0], rel=1e-12)


class _Silent(torch.nn.Module):
    """Never fires; decodes to a fixed vector plus the codes."""

    def __init__(self, d_in: int = 576, d_sae: int = 16) -> None:
        super().__init__()
        self.d_in, self.d_sae = d_in, d_sae
        g = torch.Generator().manual_seed(2)
        self.W_dec = torch.randn(d_sae, d_in, generator=g) * 0.01

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*x.shape[:-1], self.d_sae)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W_dec


def test_silent_sae_costs_zero_bits_and_its_mse_is_the_first_midpoints(model, token_set, cache_env):
    from saebench import evaluate
    from saebench.evaluators.mdl import kept_batches

    sae = _Silent()
    run = evaluate(sae, model=model, evals=["mdl"], progress=False, hook="blocks.6.hook_resid_post",
                   token_set=token_set, batch_size=SMALL["batch_size"],
                   eval_config={"mdl": {"num_bins_values": [4, 8], "k_values": [2, None]}})  # fmt: skip
    m = run.metrics["mdl"]
    assert m["description_length_bins4"] == 0.0 and m["description_length_bins8"] == 0.0
    result = next(iter(run.results.values()))["mdl"]
    assert [(r["num_bins"], r["k"]) for r in result.details["eval_results"]] == [(4, 2), (4, None), (8, 2), (8, None)]
    # every code is 0 -> quantised to 100 / (2 nb) for every latent; x_hat = that constant decode
    from saebench.evaluators.base import EvalContext
    from saebench.pipeline import ActivationPipeline

    pipe = ActivationPipeline(model, token_set, "blocks.6.hook_resid_post", SMALL["batch_size"])
    x = torch.cat([b for b, _ in kept_batches(EvalContext(pipe, sae, "s", "f", 0, "quick"))]).double()
    for nb in (4, 8):
        x_hat = (torch.full((1, 16), 100.0 / (2 * nb)) @ sae.W_dec).double()
        expect = math.sqrt(float(((x - x_hat) ** 2).mean())) / 576
        assert m[f"mse_loss_bins{nb}_k2"] == pytest.approx(expect, rel=1e-5)
        assert m[f"mse_loss_bins{nb}_knone"] == pytest.approx(expect, rel=1e-5)
    assert m["n_tokens"] == x.shape[0]
    iv = result.uncertainty["mse_loss_bins4_k2"]
    assert iv["unit"] == "token" and iv["cluster_unit"] == "document" and iv["n"] == x.shape[0]
    assert result.details["selected"] == {"num_bins": 4, "k": 2, "any_within_threshold": False}
    assert m["description_length_min_viable"] == 0.0
    assert run.counters["blocks.6.hook_resid_post"].spliced_suffix_batches == 0  # states only


def test_bad_settings_are_one_line(model, tmp_path):
    from conftest import write_native

    from saebench import evaluate

    folder, _ = write_native(tmp_path / "sae", arch="relu", d_sae=32)
    for bad in ({"num_bins_values": [0]}, {"num_bins_values": []}, {"k_values": [0]},
                {"mse_epsilon_threshold": -1.0}):  # fmt: skip
        with pytest.raises(SaebenchError) as exc:
            evaluate(str(folder), model=model, evals=["mdl"], progress=False, eval_config={"mdl": bad}, **SMALL)
        assert str(exc.value).startswith("mdl:") and "\n" not in str(exc.value), bad


def test_jackknife_interval_is_reported_with_enough_documents():
    """Nine documents: the DL gets a jackknife-t interval over documents around its value."""
    from saebench.evaluators.mdl import doc_jackknife

    g = torch.Generator().manual_seed(3)
    z = torch.relu(torch.randn(90, 4, generator=g) * 60 - 30)
    sc = codes_of(z.T.tolist(), [i // 10 for i in range(90)])
    value, loo, _ = sc.dl(bin_edges(sc.hist_max(), 8))
    iv = doc_jackknife(value, loo, 90)
    assert iv.n_clusters == 9 and iv.low < value < iv.high
    se = math.sqrt(8 / 9 * float(np.sum((loo - loo.mean()) ** 2)))
    assert iv.se == pytest.approx(se)
