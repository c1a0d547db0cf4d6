"""Matryoshka SAEs: prefix widths carried by every format, refused in one line when malformed, each
prefix evaluated as an SAE of its own width (equal to core on a hand-truncated SAE), and the other
evaluators running on a Matryoshka SAE unchanged."""

from __future__ import annotations

import importlib.util
import json
import sys
import types

import pytest
import torch
from conftest import HOOK, SMALL, write_native

from saebench import evaluate
from saebench.errors import SaebenchError
from saebench.evaluators.matryoshka import Prefix, prefix_widths
from saebench.formats import load_dictionary_learning, load_sae_lens_dir
from saebench.sae import NativeSAE, load_native, save_native

WIDTHS = [16, 32, 64]


def _matryoshka(tmp_path, d_sae: int = 64, widths: list[int] | None = None, threshold: float = 0.05):
    """A random BatchTopK SAE with prefix widths and a calibrated global threshold (so the latents
    are independent of each other and a prefix is exactly the truncated SAE)."""
    folder, sae = write_native(tmp_path / "matry", arch="batchtopk", d_sae=d_sae, matryoshka_widths=widths or WIDTHS)
    with torch.no_grad():
        sae.threshold.fill_(threshold)
        sae.W_enc.mul_(20)  # pre-activations of a few tenths: some latents fire on every token, many do not
    return save_native(sae, folder), sae


def _truncated(sae: NativeSAE, m: int) -> NativeSAE:
    """The SAE built by hand from the first ``m`` encoder columns and decoder rows."""
    cfg = sae.cfg.model_copy(update={"d_sae": m, "matryoshka_widths": None})
    t = {n: p.detach().clone() for n, p in sae.named_parameters()}
    t["W_enc"], t["b_enc"], t["W_dec"] = t["W_enc"][:, :m], t["b_enc"][:m], t["W_dec"][:m]
    return NativeSAE.from_tensors(cfg, t).eval()


def test_a_prefix_is_the_sae_truncated_by_hand(tmp_path):
    _, sae = _matryoshka(tmp_path)
    x = torch.randn(40, 576, generator=torch.Generator().manual_seed(3)) * 3
    with torch.no_grad():
        for m in WIDTHS:
            p, hand = Prefix(sae, m), _truncated(sae, m)
            z = p.encode(x)
            assert p.d_sae == m and z.shape == (40, m)
            assert torch.equal(z, hand.encode(x)) and (z > 0).any()
            assert torch.allclose(p.decode(z), hand.decode(z), atol=1e-5)
        assert torch.equal(Prefix(sae, 64).decode(sae.encode(x)), sae.decode(sae.encode(x)))  # the full width: the SAE


def test_bad_prefix_lists_are_one_line_errors(tmp_path, capsys):
    from saebench.cli import main
    from saebench.train import train_sae

    folder, _ = _matryoshka(tmp_path)
    cfg = json.loads((folder / "cfg.json").read_text())
    for bad, why in (([32, 16, 64], "not strictly increasing"), ([16, 16], "not strictly increasing"),
                     ([16, 128], "exceeds d_sae=64"), ([], "non-empty")):  # fmt: skip
        (folder / "cfg.json").write_text(json.dumps({**cfg, "matryoshka_widths": bad}))
        with pytest.raises(SaebenchError, match=why):
            load_native(folder)
        assert main(["run", "--sae", str(folder), "--evals", "matryoshka", "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "matryoshka_widths" in err and why in err and "\n" not in err
    with pytest.raises(SaebenchError, match="exceeds d_sae=8"):
        train_sae(torch.randn(64, 4), "batchtopk", 8, k=2, hook=HOOK, model_name="m", progress=False,
                  matryoshka_widths=[4, 16])  # fmt: skip

    class PythonSAE:  # a Python SAE declaring its prefixes as an attribute is checked the same way
        d_in, d_sae, matryoshka_widths = 4, 8, [6, 3]

    with pytest.raises(SaebenchError, match="not strictly increasing"):
        prefix_widths(PythonSAE())
    PythonSAE.matryoshka_widths = [2, 4]
    assert prefix_widths(PythonSAE()) == [2, 4, 8]  # the full width is always evaluated


def test_native_round_trip_keeps_the_prefixes(tmp_path):
    folder, sae = _matryoshka(tmp_path)
    again = load_native(folder)
    assert again.matryoshka_widths == WIDTHS and again.cfg.model_dump() == sae.cfg.model_dump()
    assert load_native(write_native(tmp_path / "plain", arch="batchtopk")[0]).matryoshka_widths is None


def test_sae_lens_matryoshka_keeps_its_widths(tmp_path):
    from sae_lens import JumpReLUSAE
    from sae_lens.saes.matryoshka_batchtopk_sae import (
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
    )

    train = MatryoshkaBatchTopKTrainingSAE(
        MatryoshkaBatchTopKTrainingSAEConfig(d_in=16, d_sae=48, k=5, matryoshka_widths=[8, 24, 48])
    )
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in sorted(train.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    train.topk_threshold = torch.tensor(0.4, dtype=torch.double)
    train.save_inference_model(tmp_path / "inference")  # SAELens saves it as a JumpReLU SAE
    train.save_model(tmp_path / "training")  # the training config: architecture matryoshka_batchtopk
    x = torch.randn(20, 16, generator=g) * 2
    ref = JumpReLUSAE.load_from_disk(tmp_path / "inference")
    for where in ("inference", "training"):
        conv = load_sae_lens_dir(tmp_path / where)
        assert conv.architecture == "batchtopk" and conv.sae.matryoshka_widths == [8, 24, 48], where
        assert any("Matryoshka prefix widths" in n for n in conv.notes)
        with torch.no_grad():
            assert torch.allclose(conv.sae.encode(x), ref.encode(x), atol=1e-5), where
        again = load_native(save_native(conv.sae, tmp_path / f"native-{where}"))
        assert again.matryoshka_widths == [8, 24, 48]


def test_dictionary_learning_matryoshka_keeps_its_group_sizes_as_widths(tmp_path):
    if importlib.util.find_spec("dictionary_learning") is None:
        pytest.skip("dictionary-learning not installed (pip install --no-deps dictionary-learning==0.1.0)")
    for name in ("nnsight", "wandb"):  # imported at module level by the package, unused here
        if importlib.util.find_spec(name) is None:
            sys.modules.setdefault(name, types.SimpleNamespace(LanguageModel=object))  # type: ignore[arg-type]
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKSAE

    ref = MatryoshkaBatchTopKSAE(16, 48, k=5, group_sizes=[8, 16, 24])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        ref.threshold.fill_(0.4)
    folder = tmp_path / "trainer_0"
    folder.mkdir()
    torch.save(ref.state_dict(), folder / "ae.pt")
    trainer = {"dict_class": "MatryoshkaBatchTopKSAE", "trainer_class": "MatryoshkaBatchTopKTrainer", "k": 5}
    (folder / "config.json").write_text(json.dumps({"trainer": trainer}))
    conv = load_dictionary_learning(folder)
    assert conv.architecture == "batchtopk" and conv.sae.matryoshka_widths == [8, 24, 48]
    x = torch.randn(20, 16, generator=g) * 2
    with torch.no_grad():
        assert torch.allclose(conv.sae.encode(x), ref.encode(x), atol=1e-5)
        assert torch.allclose(conv.sae.decode(ref.encode(x)), ref.decode(ref.encode(x)), atol=1e-5)
    assert load_native(save_native(conv.sae, tmp_path / "native")).matryoshka_widths == [8, 24, 48]


def test_prefix_sweep_equals_core_and_hand_truncated_saes(model, tmp_path, cache_env):
    folder, sae = _matryoshka(tmp_path)
    run = evaluate(str(folder), model=model, evals=["core", "matryoshka"], progress=False, **SMALL)
    core, mt = run.metrics["core"], run.metrics["matryoshka"]
    det = run.details["matryoshka"]
    sweep = det["sweep"]
    assert det["widths"] == sweep["width"] == WIDTHS and mt["smallest_width"] == 16 and mt["n_prefixes"] == 3
    at = {k: dict(zip(WIDTHS, sweep[k], strict=True)) for k in ("fvu", "delta_ce", "kl", "l0")}
    for k in ("fvu", "delta_ce", "kl", "l0"):
        assert at[k][64] == pytest.approx(core[k], rel=1e-12), k  # the full width is the SAE itself
    assert at["l0"][16] < at["l0"][32] < at["l0"][64]  # nested prefixes: each holds the smaller one's latents
    assert sweep["dead_frac"][-1] == pytest.approx(core["dead_frac"])
    assert mt["fvu_smallest"] == at["fvu"][16] and mt["l0_smallest"] == at["l0"][16]
    assert mt["fvu_cost_smallest"] == pytest.approx(at["fvu"][16] - at["fvu"][64], rel=1e-9)
    assert mt["delta_ce_cost_smallest"] == pytest.approx(at["delta_ce"][16] - at["delta_ce"][64], rel=1e-9)
    assert set(det["curves"]) == {"fvu", "delta_ce", "l0"} and det["curves"]["fvu"]["x"] == WIDTHS
    (result,) = (r["matryoshka"] for r in run.results.values())
    u = result.uncertainty["fvu_cost_smallest"]
    assert u["n"] == 8 and u["cluster_unit"] == "document"  # paired over the same contexts, as core's
    c = run.counters[HOOK]
    n_batches = SMALL["tokens"] // SMALL["ctx_len"] // SMALL["batch_size"]
    assert c.clean_suffix_batches == n_batches  # one clean pass, shared by core and all three prefixes
    assert c.spliced_suffix_batches == (1 + 3) * n_batches
    for m in (16, 32):  # a prefix equals core on the SAE truncated by hand, on the same tokens
        hand = _truncated(sae, m)
        one = evaluate(hand, model=model, hook=HOOK, evals=["core"], name=f"hand{m}", progress=False, **SMALL)
        for k in ("fvu", "delta_ce", "kl", "l0"):
            assert at[k][m] == pytest.approx(one.metrics["core"][k], rel=1e-6, abs=1e-9), (m, k)


def test_a_plain_sae_gets_undefined_metrics_and_a_note(model, tmp_path, cache_env):
    folder, _ = write_native(tmp_path / "relu", arch="relu", d_sae=64)
    run = evaluate(str(folder), model=model, evals=["matryoshka"], progress=False, **SMALL)
    assert run.metrics["matryoshka"]["fvu_smallest"] is None
    assert any("not a Matryoshka SAE" in n for n in next(iter(run.results.values()))["matryoshka"].notes)


def test_probing_absorption_and_autointerp_run_on_a_matryoshka_sae(model, tmp_path, cache_env):
    folder, _ = _matryoshka(tmp_path)
    cfg = {
        "probing": {"tasks": ["haystack_high-school", "agnews_sports"], "max_train": 24, "max_test": 24,
                    "max_tokens": 24},
        "absorption": {"n_words": 200, "icl_examples": 2, "min_probe_f1": 0.0, "min_letters": 1, "max_k": 2,
                       "min_true_positives": 1},
        "autointerp": {"n_latents": 2, "n_top_explain": 2, "n_sampled_explain": 1, "n_top_score": 1,
                       "n_sampled_score": 1, "n_random_score": 2, "n_random_simulation": 1, "n_random_fuzz": 1,
                       "window": 2},
    }  # fmt: skip
    run = evaluate(str(folder), model=model, evals=["probing", "absorption", "autointerp"], eval_config=cfg,
                   progress=False, tokens=1024, ctx_len=32, batch_size=8)  # fmt: skip
    m = run.metrics
    assert m["probing"]["n_tasks_scored"] == 2 and m["probing"]["heldout_probe_loss"] is not None
    assert m["absorption"]["n_letters_scored"] >= 1 and m["absorption"]["absorption_rate"] is not None
    ai = m["autointerp"]
    assert ai["n_latents_run"] >= 1 and ai["n_failed"] == 0 and ai["fuzzing_auroc"] is not None, ai
