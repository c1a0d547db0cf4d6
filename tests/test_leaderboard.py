"""Leaderboard: grouping, config header, PNG plots beside the markdown, byte-for-byte reruns."""

from __future__ import annotations

import pytest

from saebench.cli import main
from saebench.errors import SaebenchError
from saebench.leaderboard import render, write_leaderboard
from saebench.results import Result, SAERecord, result_path, write_result


def _result(name, arch="topk", l0=32.0, fvu=0.2, dce=0.3, model="m1", hook="blocks.6.hook_resid_post", tokens=8192):
    return Result(
        evaluator="core",
        run_key="k",
        sae=SAERecord(name=name, source="x", architecture=arch, d_in=4, d_sae=64, fingerprint="f"),
        config={
            "model": model,
            "hook": hook,
            "profile": "quick",
            "tokens": tokens,
            "ctx_len": 128,
            "seed": 0,
            "corpus": "c",
        },
        metrics={"l0": l0, "fvu": fvu, "delta_ce": dce},
        details={"density_histogram": {"counts": [1]}},
    )


ZOO = [
    _result("topk-k16", l0=16.0, fvu=0.3, dce=0.5),
    _result("topk-k32", l0=32.0, fvu=0.2, dce=0.3),
    _result("relu-a", arch="relu", l0=30.0, fvu=0.35, dce=0.6),
    _result("relu-b", arch="relu", l0=60.0, fvu=0.25, dce=0.4),
    _result("jr", arch="jumprelu", l0=25.0, fvu=0.22, dce=None),
]


def _write_all(root, results):
    for r in results:
        write_result(r, result_path(root, r.sae.name, r.evaluator))


def test_header_shows_the_config():
    text = render(ZOO)
    assert "profile quick, 8192 tokens, ctx 128, seed 0, corpus c" in text.split("## ")[0]


def test_plots_beside_markdown_and_byte_identical_reruns(tmp_path):
    pytest.importorskip("matplotlib")
    _write_all(tmp_path / "res", ZOO)
    (tmp_path / "res" / "junk.json").write_text("[1, 2")
    out = tmp_path / "lb" / "LEADERBOARD.md"
    with pytest.warns(UserWarning, match="junk.json"):
        write_leaderboard([tmp_path / "res"], out)
    pngs = sorted(p.name for p in out.parent.glob("*.png"))
    assert pngs == [  # one frontier per headline metric the results have (L0 vs FVU, L0 vs ΔCE)
        "LEADERBOARD-m1-blocks.6.hook_resid_post-core-delta_ce.png",
        "LEADERBOARD-m1-blocks.6.hook_resid_post-core-fvu.png",
    ]
    text = out.read_text()
    for name in pngs:
        assert f"]({name})" in text
        assert (out.parent / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    with pytest.warns(UserWarning):
        write_leaderboard([tmp_path / "res"], out)
    assert {p.name: p.read_bytes() for p in out.parent.iterdir()} == first
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_models_hooks_and_configs_are_grouped_never_merged(tmp_path):
    results = ZOO + [
        _result("topk-k32", model="m2", fvu=0.9),
        _result("topk-k32", hook="blocks.3.hook_resid_post", fvu=0.8),
        _result("topk-k32", tokens=131072, fvu=0.7),
    ]
    text = render(results)
    assert text.count("## m1 · `blocks.6.hook_resid_post`") == 2  # two configs, two tables
    assert "## m2" in text and "## m1 · `blocks.3.hook_resid_post`" in text
    assert text.count("| topk-k32 ") == 4 and "131072 tokens" in text
    assert render(list(reversed(results))) == text


def test_cli_no_plots_and_empty_folder(tmp_path, capsys):
    _write_all(tmp_path / "res", ZOO)
    assert main(["leaderboard", str(tmp_path / "res"), "-o", str(tmp_path / "LB.md"), "--no-plots"]) == 0
    assert not list(tmp_path.glob("*.png")) and "![" not in (tmp_path / "LB.md").read_text()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SaebenchError, match="no saebench results"):
        write_leaderboard([tmp_path / "empty"], tmp_path / "x.md")


def test_intervals_per_evaluator_tables_summary_and_plugin_columns():
    core = _result("sae-a")
    core.uncertainty["fvu"] = {"se": 0.01, "ci_low": 0.18, "ci_high": 0.22}
    plug = _result("sae-a")
    plug.evaluator = "my_eval"
    plug.metrics = {"my_score": 0.5}
    plug.declarations = {"my_score": {"meaning": "m", "direction": "up", "headline": True, "title": "my score"}}
    text = render([core, plug])
    assert "0.2 ± 0.02" in text  # value ± half-width of the 95% interval
    assert "### Summary" in text and "### core" in text and "### my_eval" in text
    assert "my score ↑" in text.split("### Summary")[1].split("### core")[0]  # a plugin's headline reaches the board


def test_frontier_labels_do_not_overlap():
    mpl = pytest.importorskip("matplotlib")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    from saebench.leaderboard import _place_labels

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    pts = [(16 + i * 0.5, 0.15 + 0.001 * (i % 3), f"topk-{i}-long-name") for i in range(13)]  # a crowded cluster
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o")
    ax.set_xscale("log", base=2)
    fig.canvas.draw()
    _place_labels(ax, fig, pts)
    boxes = [t.get_window_extent(fig.canvas.get_renderer()) for t in ax.texts]
    assert len(boxes) == 13
    overlaps = sum(boxes[i].overlaps(boxes[j]) for i in range(13) for j in range(i + 1, 13))
    assert overlaps == 0
    plt.close(fig)


def test_validity_rows_under_their_evaluator_and_in_their_own_section(tmp_path, capsys):
    """`--validity FILE`: each evaluator's synthetic ground-truth figures print under its table, a
    score that does not track its truth is flagged, and the section lists every row; a malformed
    file is one line naming it."""
    import json

    rows = [
        {"evaluator": "core", "score": "fvu", "truth": "t1", "sign": 1, "rho": 0.62, "p": 0.003, "n": 20},
        {"evaluator": "core (raw)", "score": "fvu", "truth": "t2", "sign": 1, "rho": 0.23, "p": 0.34, "n": 20},
        {"evaluator": "probing", "score": "s", "truth": "t3", "sign": -1, "rho": -0.53, "p": 0.016, "n": 20},
    ]
    (tmp_path / "v.json").write_text(json.dumps({"validity": rows}))
    _write_all(tmp_path / "res", ZOO)
    out = tmp_path / "LB.md"
    assert (
        main(
            ["leaderboard", str(tmp_path / "res"), "-o", str(out), "--no-plots", "--validity", str(tmp_path / "v.json")]
        )
        == 0
    )
    text = out.read_text()
    board, section = text.split("## Validity on synthetic ground truth")
    under = [ln for ln in board.splitlines() if ln.startswith("Validity on synthetic ground truth:")]
    assert len(under) == 1  # one line for core's two rows; probing has no table here
    assert "`fvu` vs true `t1`: Spearman ρ = +0.62" in under[0] and "tracks it" in under[0]
    assert "`fvu` vs true `t2`" in under[0] and "does not track it" in under[0]
    assert section.count("| core") == 2 and "| probing" in section and section.count("does not track") == 1
    (tmp_path / "bad.json").write_text(json.dumps({"validity": [{"evaluator": "core"}]}))
    assert main(["leaderboard", str(tmp_path / "res"), "-o", str(out), "--validity", str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err
    assert "cannot read validity rows from" in err and "bad.json" in err and "Traceback" not in err


def test_prefix_curve_is_drawn_next_to_the_plain_saes():
    """A curve naming a reference (Matryoshka: ``core.fvu``) gets every other non-baseline SAE's
    value of that metric placed at its d_sae; the curve's own SAE and baselines are not."""
    from saebench.leaderboard import group_results, reference_points

    matry = _result("matry", arch="batchtopk", fvu=0.16)
    curve = matry.model_copy(update={"evaluator": "matryoshka", "metrics": {"fvu_smallest": 0.3}, "details": {
        "curves": {"fvu": {"x": [16, 64], "y": [0.3, 0.16], "reference": "core.fvu"}}}})  # fmt: skip
    rows = next(iter(group_results([*ZOO, _result("baseline-pca", fvu=0.9), matry, curve]).values()))
    refs = reference_points(rows, "core.fvu", {"matry"})
    assert refs == {
        "topk": [(64.0, 0.3), (64.0, 0.2)],
        "relu": [(64.0, 0.35), (64.0, 0.25)],
        "jumprelu": [(64.0, 0.22)],
    }
    assert reference_points(rows, "", {"matry"}) == {}
    pytest.importorskip("matplotlib")
    from saebench.leaderboard import plot_curve

    assert plot_curve(rows, "matryoshka", "fvu", "t").startswith(b"\x89PNG")
