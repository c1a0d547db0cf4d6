"""Result files: round trip, atomic writes, resume keys, leaderboard grouping and determinism."""

from __future__ import annotations

import pytest

from saebench.errors import SaebenchError
from saebench.leaderboard import render
from saebench.results import (
    Result,
    SAERecord,
    complete_result,
    load_results,
    metrics_frame,
    read_result,
    results_frame,
    write_result,
)


def _result(name="a", model="m1", hook="blocks.0.hook_resid_post", fvu=0.25, key="k1"):
    return Result(
        evaluator="core",
        run_key=key,
        sae=SAERecord(name=name, source="x", architecture="topk", d_in=4, d_sae=8, fingerprint="f"),
        config={
            "model": model,
            "hook": hook,
            "profile": "quick",
            "n_tokens": 10,
            "ctx_len": 5,
            "seed": 0,
            "corpus": "c",
        },
        metrics={"fvu": fvu, "l0": 3.0, "delta_ce": 0.1, "ce_loss_score": None},
        uncertainty={"fvu": {"se": 0.05, "ci_low": fvu - 0.1, "ci_high": fvu + 0.1, "n": 64, "unit": "sequence"}},
        details={"density_histogram": {"counts": [1]}},
    )


def test_round_trip_and_complete(tmp_path):
    r = _result()
    path = tmp_path / "a" / "core.json"
    write_result(r, path)
    assert read_result(path) == r
    assert complete_result(path, "k1") == r
    assert complete_result(path, "other") is None
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_corrupt_file_is_named(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"evaluator": "core"')
    with pytest.raises(SaebenchError, match="bad.json"):
        read_result(bad)
    assert complete_result(bad, "k1") is None
    with pytest.raises(SaebenchError, match="no readable saebench results .*bad.json"):
        load_results([tmp_path])  # all there is: named in the error, not "no results"
    write_result(_result(), tmp_path / "a" / "core.json")
    with pytest.warns(UserWarning, match="bad.json"):
        assert len(load_results([tmp_path])) == 1  # beside a readable one: named in a warning


def test_frame_and_leaderboard_grouping(tmp_path):
    results = [_result("b", fvu=0.5), _result("a"), _result("c", model="m2")]
    df = results_frame(results)
    assert list(df["sae.name"]) == ["b", "a", "c"] and "fvu" in df and "density_histogram" not in df
    assert list(df["fvu.ci_low"]) == pytest.approx([0.4, 0.15, 0.15]) and list(df["fvu.n"]) == [64] * 3  # kept
    long = metrics_frame(results)
    row = long[(long["sae"] == "b") & (long["metric"] == "fvu")].iloc[0]
    assert (row["value"], row["unit"]) == (0.5, "sequence") and row["ci_high"] == pytest.approx(0.6)
    text = render(results)
    assert text.index("## m1") < text.index("## m2")
    m1 = text[text.index("## m1") : text.index("## m2")]
    assert m1.index("| a ") < m1.index("| b ") and "| c " not in m1
    assert "n/a" in text  # None metric shown as undefined
    assert render(list(reversed(results))) == text  # byte-for-byte, whatever the input order


def test_schema_1_files_are_read_and_never_complete(tmp_path):
    import json

    old = _result().model_dump()
    old.update(schema_version=1, metrics={**old["metrics"], **old.pop("details")})
    for key in ("uncertainty", "samples"):
        old.pop(key)
    path = tmp_path / "a" / "core.json"
    path.parent.mkdir()
    path.write_text(json.dumps(old))
    r = read_result(path)
    assert r.metrics["fvu"] == 0.25 and r.details == {"density_histogram": {"counts": [1]}}
    assert complete_result(path, "k1") is None  # an old schema is recomputed, never trusted as complete
