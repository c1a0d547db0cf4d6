"""The groundtruth evaluator on planted SAEs (known answers), its refusals, and SAELens' MCC."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import planted_synthetic_sae

from saebench.cli import main
from saebench.errors import SaebenchError
from saebench.results import load_results
from saebench.sae import save_native
from saebench.synthetic import RECORD_KEY, SYNTHETIC_MODEL, SyntheticConfig, SyntheticSource
from saebench.synthetic_zoo import evaluate_groundtruth

# orthonormal features: a planted SAE can be exact. Parents 0, 1; children 2-7; independents 8-23
ORTHO = SyntheticConfig(
    d=32, n_features=24, mean_l0=2.0, n_parents=2, children_per_parent=3, n_groups=2, group_size=2, superposition=False
)


def planted(source: SyntheticSource, enc: torch.Tensor, dec: torch.Tensor, folder: Path) -> str:
    """:func:`conftest.planted_synthetic_sae` saved natively; returns its folder."""
    save_native(planted_synthetic_sae(source, enc, dec), folder)
    return str(folder)


def test_perfect_sae_scores_perfectly(tmp_path: Path) -> None:
    src = SyntheticSource(ORTHO)
    f = src.features
    spec = planted(src, f, f, tmp_path / "perfect")
    r = evaluate_groundtruth([spec], out=tmp_path / "res")["perfect"]
    m = r.metrics
    assert m["mcc"] == pytest.approx(1.0, abs=1e-5)
    assert m["recovery"] == 1.0 and m["split_frac"] == 0.0 and m["merge_frac"] == 0.0
    assert m["gt_absorption"] == 0.0 and m["parent_miss_alone"] == 0.0
    assert m["magnitude_ratio"] == pytest.approx(1.0, abs=2e-4)
    assert m["fvu"] < 1e-6 and m["dead_frac"] == 0.0
    assert m["eval_l0"] == pytest.approx(ORTHO.mean_l0, rel=0.05)
    # intervals over their units; the file reloads with its checksum
    assert r.uncertainty["mcc"]["unit"] == "feature" and r.uncertainty["gt_absorption"]["unit"] == "child"
    (back,) = load_results([tmp_path / "res"])
    assert back.metrics == r.metrics and back.evaluator == "groundtruth"
    # a rerun reuses the complete result; --force recomputes the same numbers
    assert evaluate_groundtruth([spec], out=tmp_path / "res")["perfect"].created_at == back.created_at
    again = evaluate_groundtruth([spec], out=tmp_path / "res", force=True)["perfect"]
    assert again.metrics == back.metrics
    # the board renders a synthetic section from these results alone (no board change needed)
    from saebench.leaderboard import render

    board = render([back])
    assert "saebench-synthetic" in board and "MCC ↑" in board and "true absorption ↓" in board


def test_planted_absorption_shrinkage_split_and_merge(tmp_path: Path) -> None:
    src = SyntheticSource(ORTHO)
    f = src.features
    enc = f.clone()
    for p in (0, 1):  # the parent's latent is switched off by any of its children: full absorption
        enc[p] = f[p] - 100 * f[src.children_of(p)].sum(0)
    dec = f.clone()
    spare = torch.linalg.svd(torch.cat([f, torch.zeros(8, 32)]))[2][-1]  # a unit vector orthogonal to every feature
    extra_split = 0.8 * f[8] + 0.6 * spare  # a second latent for feature 8 (cos 0.8)
    extra_merge = (f[9] + f[10]) / math.sqrt(2)  # one latent for features 9 and 10 (cos 0.71 with each)
    dec = torch.cat([dec, extra_split[None], extra_merge[None]])
    enc = torch.cat([enc, extra_split[None], extra_merge[None]])
    dec[12] *= 0.5  # feature 12 is reconstructed at half its magnitude (decoder row norm 0.5)
    spec = planted(src, enc, dec, tmp_path / "absorbing")
    m = evaluate_groundtruth([spec])["absorbing"].metrics
    assert m["gt_absorption"] == 1.0 and m["parent_miss_alone"] == 0.0 and m["gt_absorption_excess"] == 1.0
    assert m["mcc"] == pytest.approx(1.0, abs=1e-5) and m["recovery"] == 1.0  # geometry cannot see absorption
    assert m["n_split"] == 2  # feature 8 (two latents) and feature 9 (its own + the merged one, best match)
    assert m["n_merged"] == 1 and m["merge_frac"] == pytest.approx(1 / 26)
    # feature 12 at ratio 0.5, every other recovered feature at 1 (the extra latents add along 8, 9, 10)
    assert m["magnitude_ratio"] < 1.0


def test_mcc_equals_saelens() -> None:
    evals = pytest.importorskip("sae_lens.synthetic.evals")
    from saebench.probes.groundtruth import cosines, matched_abs_cos

    gen = torch.Generator().manual_seed(0)
    feats = SyntheticSource(SyntheticConfig(d=16, n_features=80, n_parents=2, n_groups=2)).features
    for m in (40, 80, 120):  # fewer, as many and more latents than features
        dec = torch.randn(m, 16, generator=gen) * 3 + feats[torch.arange(m) % 80] * 5
        ours = float(torch.nanmean(matched_abs_cos(cosines(dec, feats))))
        assert ours == pytest.approx(evals.mean_correlation_coefficient(dec, feats), abs=1e-6)


def test_real_sae_refused_by_groundtruth_and_synthetic_sae_by_run(tmp_path: Path, capsys) -> None:
    with pytest.raises(SaebenchError, match="not trained on a synthetic source"):
        evaluate_groundtruth(["reference"])
    assert main(["groundtruth", "--sae", "reference", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not trained on a synthetic source" in err[0]
    src = SyntheticSource(ORTHO)
    spec = planted(src, src.features, src.features, tmp_path / "synth")
    assert main(["run", "--sae", spec, "--evals", "core", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained on a synthetic source" in err[0] and "saebench groundtruth" in err[0]
    assert main(["groundtruth", "--sae", spec, "--out", str(tmp_path / "r"), "--tokens", "4096"]) == 0
    assert (tmp_path / "r" / "synth" / "groundtruth.json").is_file()


def test_edited_source_record_is_refused(tmp_path: Path) -> None:
    import json

    src = SyntheticSource(ORTHO)
    spec = planted(src, src.features, src.features, tmp_path / "synth")
    cfg_path = Path(spec) / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    cfg[RECORD_KEY]["config"]["seed"] = 5
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(SaebenchError, match="fails its fingerprint"):
        evaluate_groundtruth([spec])


def test_zoo_training_records_its_source_and_learns_the_dictionary(tmp_path: Path) -> None:
    import json

    from saebench.synthetic_zoo import SyntheticMember, build_synthetic_zoo

    cfg = SyntheticConfig(
        d=32, n_features=32, mean_l0=2.0, n_parents=2, children_per_parent=2, n_groups=2, group_size=2,
        superposition=False,
    )  # fmt: skip
    member = SyntheticMember("topk", 32, 2)
    (log,) = build_synthetic_zoo(tmp_path, (member,), cfg=cfg, n_tokens=131_072, epochs=2, progress=False)
    assert build_synthetic_zoo(tmp_path, (member,), cfg=cfg, progress=False) == []  # present: kept
    saved = json.loads((tmp_path / member.name / "cfg.json").read_text())
    assert saved[RECORD_KEY]["config"] == cfg.to_dict() and saved["model_name"] == SYNTHETIC_MODEL
    assert log["wall_s"] > 0 and log["data_s"] > 0
    m = evaluate_groundtruth([str(tmp_path / member.name)], overrides={"n_tokens": 8192})[member.name].metrics
    # random decoder rows against 32 orthonormal features: matched |cos| ~0.4, nothing recovered
    assert m["mcc"] > 0.75 and m["recovery"] >= 0.5 and m["eval_l0"] == pytest.approx(2.0, abs=0.01)
