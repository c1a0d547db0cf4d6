"""What a run settles before the model loads (issue 24): names of a sweep's SAEs, nothing overwritten
silently, the place (hook, width, model) checked in one line, and SAELens / sparsify objects taken
as they are. Planning needs no model: these tests are fast."""

from __future__ import annotations

import pytest
import torch
from conftest import HOOK, write_native

from saebench.cli import main
from saebench.errors import SaebenchError
from saebench.leaderboard import render
from saebench.loading import as_loaded, distinct_names
from saebench.results import load_results
from saebench.runner import plan_run
from saebench.spec import RunSpec


def test_sweep_folders_are_named_by_their_shortest_distinguishing_paths(tmp_path, caplog):
    """``--sae runs/*/final``: every folder is called ``final``; the names become ``a/final`` ..."""
    specs = []
    for run in ("lr1e-4", "lr3e-4", "lr1e-3"):
        folder, _ = write_native(tmp_path / "runs" / run / "final", arch="topk", d_sae=32, seed=len(specs))
        specs.append(str(folder))
    with caplog.at_level("INFO", logger="saebench"):
        plan = plan_run(specs, RunSpec(out=tmp_path / "out"))
    assert sorted(plan.handles) == ["lr1e-3/final", "lr1e-4/final", "lr3e-4/final"]
    assert "named by their shortest distinguishing paths" in caplog.text
    assert sorted(p.parent.name for p in (j.path for j in plan.pending)) == [
        "lr1e-3_final",
        "lr1e-4_final",
        "lr3e-4_final",
    ]
    # explicit names are never changed; two factories both called build are told apart by file
    a, b = tmp_path / "a.py", tmp_path / "sub" / "a.py"
    names, notes = distinct_names([f"python:{a}:build", f"python:{b}:build"], ["build", "build"])
    assert names == [f"{tmp_path.name}/a.py/build", "sub/a.py/build"] and len(notes) == 1
    assert distinct_names([f"python:{a}:build", object()], ["build", "build"])[0] == ["build", "build"]  # refused later


def test_a_result_of_another_sae_under_the_same_name_is_never_replaced_silently(tmp_path, capsys, caplog):
    """Two runs, two SAEs, one default name (the weight file's folder): the second is refused in one
    line naming both; --force replaces, saying what it leaves; the board flags a mixed row."""
    first, _ = write_native(tmp_path / "one" / "build", arch="topk", d_sae=32, seed=1)
    second, _ = write_native(tmp_path / "two" / "build", arch="topk", d_sae=32, seed=2)
    out = tmp_path / "out"
    _fake_results(first, out, evaluators=("core", "probing"))
    with pytest.raises(SaebenchError, match=r"holds results of another SAE named 'build'.*--name to keep both") as e:
        plan_run(str(second / "sae.safetensors"), RunSpec(out=out))
    assert "\n" not in str(e.value)
    code = main(["run", "--sae", str(second), "--out", str(out), "--quiet"])
    assert code == 2 and "another SAE named 'build'" in capsys.readouterr().err
    with caplog.at_level("WARNING", logger="saebench"):
        plan = plan_run(str(second), RunSpec(out=out, force=True))
    assert plan.pending and "replacing results of another SAE" in caplog.text
    assert "its probing result(s) stay there" in caplog.text
    # what --force leaves behind is flagged on the board: one row, two fingerprints
    _fake_results(second, out, evaluators=("core",))
    board = render(load_results([out]))
    assert "build ⚠" in board and "holds results of different SAEs" in board
    # until the leftover is removed or redone, a plain rerun keeps refusing (the folder is mixed)
    with pytest.raises(SaebenchError, match="another SAE named 'build'"):
        plan_run(str(second), RunSpec(out=out))
    (out / "build" / "probing.json").unlink()
    assert plan_run(str(second), RunSpec(out=out)).pending  # one SAE in the folder again: planned, no refusal


def _fake_results(folder, out, evaluators):
    """Results of the SAE in ``folder`` as a run would write them (no model pass: metrics made up)."""
    from saebench.loading import load_sae
    from saebench.results import Result, SAERecord, result_path, write_result

    ls = load_sae(str(folder))
    for ev in evaluators:
        r = Result(
            evaluator=ev,
            run_key="fake",
            sae=SAERecord(
                name=ls.name, source=ls.source, architecture="topk", d_in=576, d_sae=32, fingerprint=ls.fingerprint
            ),  # fmt: skip
            config={"model": "smollm2-135m", "hook": HOOK, "profile": "quick", "tokens": 8192, "seed": 0},
            metrics={"l0": 8.0, "fvu": 0.5},
        )
        write_result(r, result_path(out, ls.name, ev))


def test_place_and_model_are_checked_before_the_model_loads(tmp_path, monkeypatch):
    """Hook, width and model mistakes are one short line from planning (the model never loads)."""
    import saebench.runner

    monkeypatch.setattr(saebench.runner, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    folder, _ = write_native(tmp_path / "sae", arch="topk", d_sae=32)
    with pytest.raises(SaebenchError, match=r"trained at blocks.6.hook_resid_post .* --hook asks for blocks.3"):
        plan_run(str(folder), RunSpec(hook="blocks.3.hook_resid_post"))
    plan = plan_run(str(folder), RunSpec(hook="blocks.3.hook_resid_post", force_hook=True))
    assert plan.pending[0].hook == "blocks.3.hook_resid_post"
    assert any("--force-hook" in n for n in plan.pending[0].sae.notes)
    wide, _ = write_native(tmp_path / "wide", arch="relu", d_in=1536, d_sae=32)
    with pytest.raises(SaebenchError, match=r"d_in=1536 but hook blocks.6.hook_resid_post .* has width 576"):
        plan_run(str(wide), RunSpec())
    assert plan_run(str(wide), RunSpec(hook="blocks.6.mlp.hook_post", force_hook=True)).pending  # d_mlp = 1536
    with pytest.raises(SaebenchError, match=r"names layer 40 but the model has 30 layers"):
        plan_run(str(folder), RunSpec(hook="blocks.40.hook_resid_post", force_hook=True))
    base, _ = write_native(tmp_path / "base", arch="topk", d_sae=32, model_name="HuggingFaceTB/SmolLM2-135M")
    with pytest.raises(SaebenchError, match=r"embedded model is SmolLM2-135M-Instruct .* --model smollm2-135m") as e:
        plan_run(str(base), RunSpec())
    assert len(str(e.value)) < 300
    assert plan_run(str(base), RunSpec(model="smollm2-135m")).pending  # asked for: evaluated, with a note
    inst, _ = write_native(tmp_path / "inst", arch="topk", d_sae=32, model_name="HuggingFaceTB/SmolLM2-135M-Instruct")
    assert plan_run(str(inst), RunSpec()).model_name == "smollm2-135m"


def test_an_unloadable_model_is_one_short_line(monkeypatch):
    """transformer-lens lists every model it knows in one 8 KB line; we keep the fix in view."""
    import transformer_lens

    from saebench.models import load_model

    def refuse(name, **kw):
        raise ValueError(f"{name} not found. Valid official model names (excl aliases): " + ", ".join(["m"] * 4000))

    monkeypatch.setattr(transformer_lens.HookedTransformer, "from_pretrained_no_processing", refuse)
    with pytest.raises(SaebenchError) as e:
        load_model("HuggingFaceTB/SmolLM2-360M")
    assert len(str(e.value)) < 400 and "--model smollm2-135m" in str(e.value) and "Instruct" in str(e.value)


def _sae_lens_objects():
    from sae_lens import (
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )

    common = {"d_in": 576, "d_sae": 64, "dtype": "float32", "device": "cpu"}
    out = []
    for cls, cfg in (
        (TopKSAE, TopKSAEConfig(k=8, **common)),
        (StandardSAE, StandardSAEConfig(**common)),
        (JumpReLUSAE, JumpReLUSAEConfig(**common)),
    ):
        sae = cls(cfg)
        g = torch.Generator().manual_seed(len(out))
        with torch.no_grad():
            for p in sae.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            if hasattr(sae, "threshold"):
                sae.threshold.copy_(torch.rand(sae.threshold.shape, generator=g) * 0.05)
        sae.cfg.metadata.hook_name = HOOK
        out.append(sae)
    return out


def test_sae_lens_and_sparsify_objects_are_taken_as_they_are():
    """The object a SAELens or sparsify user holds: read through its own config, equal to its own
    encode/decode (sparsify's encode returns top-k indices: compared through its decode)."""
    pytest.importorskip("sae_lens")
    x = torch.randn(20, 576, generator=torch.Generator().manual_seed(5))
    for obj in _sae_lens_objects():
        ls = as_loaded(obj)
        assert (ls.sae.d_in, ls.sae.d_sae, ls.hook_name) == (576, 64, HOOK)
        assert ls.source.startswith("object:sae_lens") and ls.notes[0].startswith("converted from a live sae_lens")
        with torch.no_grad():
            torch.testing.assert_close(ls.sae.encode(x), obj.encode(x), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(ls.sae.decode(ls.sae.encode(x)), obj.decode(obj.encode(x)), rtol=1e-5, atol=1e-5)
    sparsify = pytest.importorskip("sparsify")
    sp = sparsify.Sae(576, sparsify.SaeConfig(num_latents=64, k=8))
    ls = as_loaded(sp)
    assert (ls.sae.d_in, ls.sae.d_sae, ls.architecture) == (576, 64, "topk")
    with torch.no_grad():
        out = sp.encode(x)
        torch.testing.assert_close(ls.sae.decode(ls.sae.encode(x)), sp.decode(out.top_acts, out.top_indices), rtol=1e-5,
                                   atol=1e-5)  # fmt: skip


def test_a_sae_lens_object_evaluates_end_to_end(model, cache_env):
    pytest.importorskip("sae_lens")
    import saebench

    run = saebench.evaluate(_sae_lens_objects()[0], model=model, tokens=128, ctx_len=32, batch_size=4, progress=False)
    m = run.metrics["core"]
    assert m["l0"] == pytest.approx(8.0) and m["fvu"] > 0
