"""Unlearning by clamping SAE latents (``--evals unlearning``): SAEBench's selection and clamp as
known-answer unit tests, and end-to-end oracles on the embedded model with stand-in forget/retain
files: a planted latent that fires on one token of the forget texts only, a silent SAE, and the
same planted latent with a zero decoder row."""

from __future__ import annotations

import json

import pytest
import torch

from saebench.cli import main
from saebench.probes import unlearning as U

EMBED_HOOK = "blocks.0.hook_resid_pre"  # the token embedding: a latent can read one token exactly


def test_selection_follows_saebench_get_top_features():
    forget = torch.tensor([0.5, 0.0, 0.3, 0.3, 0.9, 0.2])
    retain = torch.tensor([0.0, 0.0, 0.0005, 0.002, 0.05, 0.0])
    assert U.select_latents(forget, retain, 0.001) == [0, 2, 5]  # 3 and 4 fire on retain; 1 never on forget
    assert U.select_latents(forget, retain, 0.01) == [0, 2, 3, 5]  # ties by index
    grid = U.sweep(forget, retain, [0.001, 0.01], [1, 3], [25, 50])
    assert [(g.retain_threshold, g.n_latents, g.multiplier) for g in grid][:4] == [
        (0.001, 1, 25.0), (0.001, 1, 50.0), (0.001, 3, 25.0), (0.001, 3, 50.0)
    ]  # fmt: skip
    assert grid[2].latents == (0, 2, 5) and grid[6].latents == (0, 2, 3)


def test_clamp_sets_firing_latents_to_minus_multiplier_only():
    z = torch.tensor([[0.0, 2.0, 0.5], [1.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    z2, hit = U.clamp_codes(z, [0, 1], 25.0)
    assert torch.equal(z2, torch.tensor([[0.0, -25.0, 0.5], [-25.0, 0.0, 0.0], [0.0, 0.0, 3.0]]))
    assert hit.tolist() == [True, True, False]
    assert torch.equal(U.clamp_codes(z, [], 5.0)[0], z)


def test_choice_is_the_largest_forget_rise_within_the_retain_bound():
    assert U.choose([0.1, 0.5, 0.3], [0.0, 0.05, 0.01], retain_clean=2.0, tolerance=0.01) == 2  # 0.05 > 0.02
    assert U.choose([0.1, 0.5], [0.5, 0.5], retain_clean=2.0, tolerance=0.01) is None
    assert U.choose([0.0, -0.1], [0.0, 0.0], retain_clean=2.0, tolerance=0.01) is None  # nothing unlearned


def test_clamp_edit_and_selection_equal_saebench_code():
    """SAEBench 0.6.0's own hook function and latent ranking on the same SAE, activations and sparsities."""
    pytest.importorskip("sae_bench")
    from sae_bench.evals.unlearning.utils.feature_activation import get_top_features
    from sae_bench.evals.unlearning.utils.intervention import anthropic_clamp_resid_SAE_features

    from saebench.sae import NativeSAE, SAEConfig

    g = torch.Generator().manual_seed(0)
    sae = NativeSAE(SAEConfig(architecture="relu", d_in=16, d_sae=32))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    x = torch.randn(3, 7, 16, generator=g) * 2
    keep = torch.ones(3, 7, dtype=torch.bool)
    keep[:, 0] = False  # SAEBench leaves position 0 alone
    for latents, mult in (([0, 3, 5, 9], 25.0), ([1], 100.0), (list(range(32)), 50.0)):
        theirs = anthropic_clamp_resid_SAE_features(x.clone(), None, sae, latents, multiplier=mult)
        delta, hit = U.clamp_edit(sae, x, keep, latents, mult)
        assert bool(hit.any())
        torch.testing.assert_close(x + delta, theirs, atol=1e-4, rtol=1e-5)
    forget = torch.rand(200, generator=g) * (torch.rand(200, generator=g) > 0.3)
    retain = torch.rand(200, generator=g) * 0.02
    for thr in (0.001, 0.005, 0.01):
        want = get_top_features(forget.numpy().copy(), retain.numpy(), retain_threshold=thr).tolist()
        assert U.select_latents(forget, retain, thr) == want


class Planted(torch.nn.Module):
    """Latent 0 fires (value 1) exactly where the activation is one token's embedding; latent 1
    fires everywhere (retain sparsity 1: SAEBench's selection must drop it). ``silent``: latent 0
    never fires; ``zero_dec``: latent 0's decoder row is 0 (clamping it changes nothing)."""

    def __init__(self, w_e: torch.Tensor, token: int, silent: bool = False, zero_dec: bool = False) -> None:
        super().__init__()
        d = w_e.shape[1]
        self.d_in, self.d_sae, self.silent = d, 2, silent
        e = w_e[token].float()
        g = torch.Generator().manual_seed(0)
        other = torch.randn(d, generator=g)
        self.register_buffer("e", e)
        self.register_buffer("dec", torch.stack([torch.zeros(d) if zero_dec else e / e.norm(), other / other.norm()]))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        at = ((x.float() - self.e).norm(dim=-1) < 1e-3 * self.e.norm()).float() * (0.0 if self.silent else 1.0)
        return torch.stack([at, torch.ones_like(at)], -1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.dec


FORGET = [
    f"Study {i}: zebrafish larvae were imaged after {i + 3} days; the zebrafish heart and zebrafish fins regrew "
    f"in {10 + i} percent of the zebrafish tested, so zebrafish models of repair look promising for group {i}."
    for i in range(20)
]
RETAIN = [
    f"Recipe {i}: whisk {i + 2} eggs with flour, add butter and a pinch of salt, then bake the cake for "
    f"{20 + i} minutes until golden; serve it warm with cream and fresh berries to {i + 4} guests."
    for i in range(20)
]
SIZES = {"n_select_docs": 4, "n_tune_docs": 4, "n_test_docs": 8, "ctx_len": 32, "min_doc_tokens": 8}


def _jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return str(path)


@pytest.fixture(scope="module")
def planted_run(model, tmp_path_factory):
    from saebench import evaluate

    tmp = tmp_path_factory.mktemp("unlearn")
    forget_file, retain_file = _jsonl(tmp / "forget.jsonl", FORGET), _jsonl(tmp / "retain.jsonl", RETAIN)
    f_ids = {t for s in FORGET for t in model.tokenize(s)}
    r_ids = {t for s in RETAIN for t in model.tokenize(s)}
    token = model.tokenize(" zebrafish")[0]
    assert token in f_ids and token not in r_ids
    w_e = model.model.W_E.detach().float()
    near = (w_e - w_e[token]).norm(dim=-1) < 1e-3 * w_e[token].norm()
    assert near.nonzero().flatten().tolist() == [token]  # latent 0 reads that token only
    saes = {
        "planted": Planted(w_e, token),
        "silent": Planted(w_e, token, silent=True),
        "zero_dec": Planted(w_e, token, zero_dec=True),
    }
    cfg = {**SIZES, "forget_file": forget_file, "retain_file": retain_file, "multipliers": [25.0, 100.0]}
    run = evaluate(
        list(saes.values()),
        model=model,
        hook=EMBED_HOOK,
        name=list(saes),
        evals=["unlearning"],
        progress=False,
        use_cache=False,
        eval_config={"unlearning": cfg},
        tokens=64,
        ctx_len=16,
        batch_size=4,
        out=str(tmp / "results"),
    )
    return {**{k: run.results[k]["unlearning"] for k in saes}, "out": tmp}


def test_planted_forget_latent_raises_forget_loss_and_leaves_retain_exactly(planted_run):
    r = planted_run["planted"]
    m, det = r.metrics, r.details
    assert det["candidates"][0]["latent"] == 0 and all(c["latent"] != 1 for c in det["candidates"])
    assert m["unlearn_n_latents"] == 1 and m["unlearn_multiplier"] in (25.0, 100.0)
    assert m["unlearn_settings"] == 2  # the four (threshold, n) pairs select the same latent: two interventions
    assert m["unlearn_forget_loss_increase"] > 0.1
    assert r.uncertainty["unlearn_forget_loss_increase"]["ci_low"] > 0  # paired over 8 held-out documents
    assert m["unlearn_retain_loss_increase"] == 0.0  # the latent never fires there: no retain row is touched
    assert m["unlearn_forget_docs_touched"] == 1.0 and m["unlearn_retain_docs_touched"] == 0.0
    assert m["n_forget_docs"] == m["n_retain_docs"] == 8
    assert r.samples["forget_doc"]["unit"] == "forget_doc" and len(r.samples["forget_doc"]["ids"]) == 8
    chosen = [s for s in det["sweep"] if s["chosen"]]
    assert chosen and chosen[0]["forget_loss_increase"] == max(s["forget_loss_increase"] for s in det["sweep"])


def test_silent_sae_has_no_setting_and_changes_nothing(planted_run):
    r = planted_run["silent"]
    assert r.metrics["unlearn_settings"] == 0 and r.metrics["unlearn_multiplier"] is None
    assert r.metrics["unlearn_forget_loss_increase"] == 0.0 and r.metrics["unlearn_retain_loss_increase"] == 0.0
    assert any("no setting" in n for n in r.notes)


def test_zero_decoder_row_touches_documents_but_changes_no_loss(planted_run):
    sweep = planted_run["zero_dec"].details["sweep"]
    assert all(s["latents"] == [0] for s in sweep)  # selected: it fires on forget only
    assert all(s["forget_loss_increase"] == 0.0 and s["retain_loss_increase"] == 0.0 for s in sweep)
    assert planted_run["zero_dec"].metrics["unlearn_forget_docs_touched"] == 0.0  # no setting chosen: none applied


def test_planted_result_pairs_documents_with_the_silent_one(planted_run):
    assert planted_run["planted"].samples["forget_doc"]["ids"] == planted_run["silent"].samples["forget_doc"]["ids"]


def test_export_skips_it_as_not_saebench_unlearning_score(planted_run):
    from saebench.export import export_saebench

    tmp = planted_run["out"]
    written, skipped = export_saebench([tmp / "results"], tmp / "export")
    assert written == [] and len(skipped) == 3
    assert all("/unlearning: " in s and "not its unlearning_score" in s for s in skipped)


@pytest.mark.parametrize(
    "content,needle",
    [(None, "does not exist"), ("", "holds no text"), ("{not json\n", "line 1 is not JSON"), ('{"t": 1}\n', "no text")],
)
def test_bad_forget_file_is_one_line_exit_2_before_the_model(tmp_path, capsys, content, needle):
    path = tmp_path / "forget.jsonl"
    if content is not None:
        path.write_text(content)
    out = tmp_path / "res"
    args = ["run", "--sae", "reference", "--evals", "unlearning", "--out", str(out), "--quiet"]
    code = main([*args, "--set", f"unlearning.forget_file={path}"])
    err = capsys.readouterr().err
    lines = [x for x in err.strip().splitlines() if x.startswith("error:")]
    assert code == 2 and len(lines) == 1 and needle in lines[0] and "forget_file" in lines[0], err
    assert not list(out.rglob("*.json")) if out.exists() else True


def _words(text: str) -> list[int]:
    return [len(w) for w in text.split()]


def test_documents_split_into_three_disjoint_seeded_parts():
    from saebench.evaluators.unlearning import UnlearningConfig, split_docs

    cfg = UnlearningConfig(**SIZES)
    parts = split_docs(_words, 0, FORGET, cfg, 0, "forget", "file x.jsonl")
    ids = [set(parts[p].ids) for p in ("select", "tune", "test")]
    assert [len(i) for i in ids] == [4, 4, 8] and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert parts["test"].ids == split_docs(_words, 0, FORGET, cfg, 0, "forget", "x")["test"].ids
    assert parts["test"].ids != split_docs(_words, 1, FORGET, cfg, 1, "forget", "x")["test"].ids
    row = parts["test"]
    assert row.tokens.shape == (8, 32) and bool((row.tokens[:, 0] == 0).all())
    assert row.keep[:, 0].sum() == 0 and row.n_targets.tolist() == (row.lengths - 2).tolist()


def test_too_few_documents_is_one_line():
    from saebench.errors import SaebenchError
    from saebench.evaluators.unlearning import UnlearningConfig, split_docs

    cfg = UnlearningConfig(**SIZES)
    with pytest.raises(SaebenchError, match=r"the forget set \(file x.jsonl\) has 5 documents .* fewer than the 16"):
        split_docs(_words, 0, FORGET[:5], cfg, 0, "forget", "file x.jsonl")
