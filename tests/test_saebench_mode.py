"""``mode=saebench``: SAEBench 0.6.0's own code, end to end, on the same model, SAE, local files and
seed gives every number ours gives (SCR, TPP, sparse probing); its datasets are read from the
documented local layout; a SAEBench-mode run without them is one line and exit 2."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import HOOK

from saebench.errors import SaebenchError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from crosscheck_saebench import local_load_dataset, saebench_view, view_for_saebench, write_layout  # noqa: E402


def relu_sae(d_sae: int = 64, seed: int = 3):
    from saebench.sae import NativeSAE, SAEConfig

    g = torch.Generator().manual_seed(seed)
    sae = NativeSAE(SAEConfig(architecture="relu", d_in=576, d_sae=d_sae, hook_name=HOOK, model_name="smollm2-135m"))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(576, d_sae, generator=g) * 0.05)
        sae.W_dec.copy_(torch.randn(d_sae, 576, generator=g) * 0.05)
        sae.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.1)
        sae.b_dec.copy_(torch.randn(576, generator=g) * 0.05)
    return sae.eval()


SMALL_SCR = {
    "mode": "saebench", "dataset_names": ["LabHC/bias_in_bios_class_set1"], "train_set_size": 24,
    "test_set_size": 8, "context_length": 16, "llm_batch_size": 8, "n_values": [2, 5, 20],
    "column1_vals_lookup": {"LabHC/bias_in_bios_class_set1": [["professor", "nurse"], ["architect", "journalist"]]},
}  # fmt: skip
SMALL_TPP = {
    "mode": "saebench", "dataset_names": ["LabHC/bias_in_bios_class_set1", "canrager/amazon_reviews_mcauley_1and5"],
    "train_set_size": 16, "test_set_size": 8, "context_length": 16, "llm_batch_size": 8, "n_values": [2, 5, 20],
}  # fmt: skip


def _saebench_config(small: dict, scr: bool):
    from sae_bench.evals.scr_and_tpp.eval_config import ScrAndTppEvalConfig

    cfg = ScrAndTppEvalConfig(model_name="smollm2-135m", perform_scr=scr)
    for k, v in small.items():
        if k != "mode":
            setattr(cfg, k, {d: [tuple(p) for p in ps] for d, ps in v.items()} if k == "column1_vals_lookup" else v)
    cfg.llm_dtype, cfg.random_seed = "float32", 7
    return cfg


@pytest.mark.parametrize("scr", [True, False], ids=["scr", "tpp"])
def test_scr_tpp_equal_saebench_run_eval_single_sae(scr, model, token_set, cache_env, tmp_path, monkeypatch):
    """SAEBench's ``run_eval_single_sae`` (its data sampling, tokenization, activations, AdamW probe
    training with the best-test-accuracy epoch, node effects, ablations with freshly drawn TPP
    negatives, aggregation) on local stand-in files gives every number our ``mode=saebench`` gives,
    at several N and over two runs (the generator's stream carries across runs)."""
    sb = pytest.importorskip("sae_bench.evals.scr_and_tpp.main", reason="sae-bench not installed")
    import sae_bench.evals.scr_and_tpp.dataset_creation as dc
    import sae_bench.sae_bench_utils.dataset_utils as du

    from saebench.runner import evaluate

    root = write_layout(tmp_path / "data")
    small = SMALL_SCR if scr else SMALL_TPP
    sae = relu_sae()
    ev = "scr" if scr else "tpp"
    ours = evaluate(sae, model=model, hook=HOOK, evals=[ev], token_set=token_set, seed=7, progress=False,
                    eval_config={ev: {**small, "data_dir": str(root)}}, name="sae").results["sae"][ev]  # fmt: skip
    assert ours.details["naming"]["names"] == "variant"  # small sizes: SAEBench's procedure, our names
    monkeypatch.setattr(dc, "load_dataset", local_load_dataset(root))
    monkeypatch.setattr(du, "load_dataset", local_load_dataset(root))
    with saebench_view(model) as ht, torch.random.fork_rng():
        theirs, _ = sb.run_eval_single_sae(_saebench_config(small, scr), view_for_saebench(sae), ht, "cpu",
                                           str(tmp_path / "artifacts"), save_activations=False)  # fmt: skip
    from saebench.evaluators.scr import variant_name as scr_name
    from saebench.evaluators.tpp import variant_name as tpp_name

    rename = scr_name if scr else tpp_name
    keys = [k for k in theirs if isinstance(theirs[k], float)]
    assert len(keys) == 3 * len(small["n_values"])
    for k in keys:
        assert ours.metrics[rename(k)] == pytest.approx(theirs[k], abs=1e-6), k
    per_run = [k for k in theirs if isinstance(theirs[k], dict)]
    assert len(per_run) == len(ours.details["runs"]) == (2 if scr else 2)
    for row in ours.details["runs"]:
        for k, v in theirs[f"{row['run']}_results"].items():
            got = (
                row[rename(k)] if scr else sum(c[rename(k)] for c in row["per_class"].values()) / len(row["per_class"])
            )
            assert got == pytest.approx(v, abs=1e-6), (row["run"], k)


def test_saebench_names_only_with_saebench_settings():
    """The names a result carries: SAEBench's only for its procedure, data and every setting."""
    from saebench.evaluators.scr import ScrConfig
    from saebench.evaluators.scr_tpp_saebench import naming
    from saebench.evaluators.tpp import TppConfig

    assert naming(ScrConfig())["names"] == "variant" and ScrConfig().data == "offline"
    assert naming(ScrConfig(mode="saebench"))["names"] == "saebench" and ScrConfig(mode="saebench").data == "saebench"
    assert naming(TppConfig(mode="saebench", llm_batch_size=4, sae_batch_size=3))["names"] == "saebench"
    for change in ({"train_set_size": 400}, {"context_length": 64}, {"probe_epochs": 5}, {"n_values": [2, 20]},
                   {"dataset_names": ["LabHC/bias_in_bios_class_set1"]}):  # fmt: skip
        got = naming(TppConfig(mode="saebench", **change))
        assert got["names"] == "variant" and next(iter(change)) in got["why"]
    assert naming(ScrConfig(use_hub=True))["names"] == "variant"  # our probes on SAEBench's data


def test_missing_saebench_data_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    """A SAEBench-mode run without SAEBench's files: one line naming the files and the layout, exit
    2, before the model loads, and nothing written."""
    from saebench.cli import main

    monkeypatch.delenv("SAEBENCH_DATA_DIR", raising=False)
    out = tmp_path / "out"
    for ev in ("scr", "tpp", "sparse_probing"):
        mode = [] if ev == "sparse_probing" else ["--set", f"{ev}.mode=saebench"]
        rc = main(["run", "--sae", "reference", "--evals", ev, *mode, "--set", f"{ev}.data_dir={tmp_path / 'nothing'}",
                   "--out", str(out), "--threads", "1"])  # fmt: skip
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1, err
        assert "LabHC/bias_in_bios/{test,train}.parquet" in err[0] and "docs/saebench_mode.md" in err[0]
    assert not out.exists() or not any(out.rglob("*.json"))
    with pytest.raises(SaebenchError, match="mode=variant"):
        from saebench.evaluators.scr import ScrConfig, ScrEvaluator

        ScrEvaluator().preflight(ScrConfig(mode="saebench", data="offline"))


def test_local_layout_reads_saebench_samplers_like_saebench(tmp_path, monkeypatch):
    """SAEBench's own samplers on its loader patched to the local files give our texts, key for key."""
    pytest.importorskip("sae_bench")
    import sae_bench.evals.scr_and_tpp.dataset_creation as dc
    import sae_bench.sae_bench_utils.dataset_utils as du

    from saebench.tasks.saebench_data import missing_files, multi_label_data, scr_data

    root = write_layout(tmp_path / "data", per_cell=24)
    assert missing_files(["LabHC/bias_in_bios_class_set1", "canrager/amazon_reviews_mcauley_1and5"], str(root)) == []
    assert missing_files(["fancyzhx/ag_news"], str(root)) == ["fancyzhx/ag_news/test", "fancyzhx/ag_news/train"]
    monkeypatch.setattr(dc, "load_dataset", local_load_dataset(root))
    monkeypatch.setattr(du, "load_dataset", local_load_dataset(root))
    for d in ("LabHC/bias_in_bios_class_set1", "canrager/amazon_reviews_mcauley_1and5"):
        pair = {"LabHC/bias_in_bios_class_set1": ("professor", "nurse"),
                "canrager/amazon_reviews_mcauley_1and5": ("Books", "CDs_and_Vinyl")}[d]  # fmt: skip
        col2 = {
            "LabHC/bias_in_bios_class_set1": ("male", "female"),
            "canrager/amazon_reviews_mcauley_1and5": (1.0, 5.0),
        }
        assert scr_data(d, pair, 40, 20, 5, str(root), False) == dc.get_train_test_data(
            d, True, 40, 20, 5, pair, col2[d]
        )
        theirs = du.get_multi_label_train_test_data(d, 32, 16, 5)
        ours = multi_label_data(d, 32, 16, 5, str(root), False)
        chosen = list(ours[0])
        assert ours == ({c: theirs[0][c] for c in chosen}, {c: theirs[1][c] for c in chosen})


def test_sparse_probing_equals_saebench_run_eval_single_sae(model, token_set, cache_env, tmp_path, monkeypatch):
    """SAEBench's sparse-probing ``run_eval_single_sae`` (torch probes with early stopping on the
    pooled residual and on the SAE's pooled latents, sklearn top-k probes on raw inputs, one
    generator through every dataset) on local stand-in files gives every number ours gives."""
    sp = pytest.importorskip("sae_bench.evals.sparse_probing.main", reason="sae-bench not installed")
    import sae_bench.evals.sparse_probing.probe_training as pt
    import sae_bench.sae_bench_utils.dataset_utils as du
    from sae_bench.evals.sparse_probing.eval_config import SparseProbingEvalConfig

    from saebench.evaluators.sparse_probing import variant_name
    from saebench.runner import evaluate

    root = write_layout(tmp_path / "data")
    small = {"dataset_names": ["LabHC/bias_in_bios_class_set1", "canrager/amazon_reviews_mcauley_1and5_sentiment"],
             "probe_train_set_size": 16, "probe_test_set_size": 8, "context_length": 16, "llm_batch_size": 8,
             "k_values": [1, 2]}  # fmt: skip
    sae = relu_sae()
    ours = evaluate(sae, model=model, hook=HOOK, evals=["sparse_probing"], token_set=token_set, seed=7, progress=False,
                    eval_config={"sparse_probing": {**small, "data_dir": str(root)}}, name="sae")  # fmt: skip
    ours = ours.results["sae"]["sparse_probing"]
    assert ours.details["naming"]["names"] == "variant"
    monkeypatch.setattr(du, "load_dataset", local_load_dataset(root))
    # SAEBench's sklearn probe is beartype-checked against the caller's jaxtyping dimensions, which its
    # own top-k path violates (per-class size vs probe-set size) with the jaxtyping installed here: the
    # same function without the check
    monkeypatch.setattr(pt, "train_sklearn_probe", pt.train_sklearn_probe.__wrapped__)
    cfg = SparseProbingEvalConfig(model_name="smollm2-135m", random_seed=7, llm_dtype="float32", **small)
    with saebench_view(model) as ht, torch.random.fork_rng():
        theirs, _ = sp.run_eval_single_sae(cfg, view_for_saebench(sae), ht, "cpu", str(tmp_path / "artifacts"),
                                           save_activations=False)  # fmt: skip
    keys = [k for k, v in theirs.items() if isinstance(v, float)]
    want = ["llm_test_accuracy", "sae_test_accuracy"] + [
        f"{w}_top_{k}_test_accuracy" for w in ("llm", "sae") for k in (1, 2)
    ]
    assert sorted(keys) == sorted(want)
    for k in keys:
        assert ours.metrics[variant_name(k)] == pytest.approx(theirs[k], abs=1e-6), k
    for row in ours.details["datasets"]:
        for k, v in theirs[f"{row['dataset_name']}_results"].items():
            got = row[variant_name(k)]
            assert sum(got.values()) / len(got) == pytest.approx(v, abs=1e-6), (row["dataset_name"], k)
