"""RAVEL (``--evals ravel``): the answer check against SAEBench's, the early verdict, the score
estimators, pair sampling, known answers of the intervention on the embedded model (an identity
SAE: no latent patched leaves every answer, all latents patched moves the attribute), the bad
hook and the empty knowledge filter refused, and the export round trip."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest
import torch
from conftest import HOOK, SMALL, Identity, write_native

from saebench import SaebenchError, evaluate
from saebench.probes.ravel import (
    Prompt,
    city_entities,
    completion_correct,
    completion_decided,
    sample_pairs,
    score_columns,
    scores,
)
from saebench.stats import Samples, estimate


def _saebench_validation():
    """SAEBench 0.6.0's ``evaluate_completion`` loaded from its file alone (the package import pulls
    sae_lens and takes ~20 s; this module imports only the standard library)."""
    spec = importlib.util.find_spec("sae_bench")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("sae-bench is not installed (bash setup.sh --crosscheck)")
    path = Path(next(iter(spec.submodule_search_locations))) / "evals" / "ravel" / "validation.py"
    mod_spec = importlib.util.spec_from_file_location("_sb_ravel_validation", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod.evaluate_completion


LABELS = ["France", "China", "United States", "United Kingdom", "South Korea", "North America", "Asia", "Europe"]
OUTPUTS = [
    " France", " france is", " Fr", "France", ' "France" is', " the United States", " United States of",
    " England and", " Korea", " south korea", " North America", " America", " na", " Asia.", "\nAsia", " Europe",
    " Eur", "", "  ", " Germany", " Chinese", " China\n", " the", ' "', " United", " Asian",
]  # fmt: skip


def test_answer_check_equals_saebenchs():
    sb = _saebench_validation()
    for label in LABELS:
        for out in OUTPUTS:
            text = "Paris is a city in the country of"
            assert completion_correct(label, out) == sb(text, label, out), (label, out)


def test_early_verdict_never_changes_with_more_tokens():
    rng = random.Random(0)
    pieces = [" Fr", "ance", " is", " a", '"', " Asia", " Eu", "rope", " China", "\n", " United", " States", " the"]
    for _ in range(3000):
        label = rng.choice(LABELS + ["Germany"])
        parts = [rng.choice(pieces) for _ in range(rng.randint(1, 6))]
        full = "".join(parts)
        for k in range(1, len(parts) + 1):
            v = completion_decided(label, "".join(parts[:k]))
            if v is not None:
                assert v == completion_correct(label, full), (label, parts, k)


def test_ratio_estimators_equal_saebenchs_order_of_averaging():
    rng = random.Random(1)
    scored = [(rng.choice("ab"), rng.choice(["cause", "isolation"]), rng.random() < 0.6) for _ in range(77)]
    direct = scores(scored)
    cols = score_columns(scored)
    s = {"pair": Samples("pair", [str(i) for i in range(len(scored))], cols)}
    from saebench.evaluators.ravel import METRICS

    for m in METRICS:
        assert estimate(m.estimator, s) == pytest.approx(direct[m.name], abs=1e-12)
    per = direct["per_attribute"]
    assert direct["cause_score"] == pytest.approx((per["a"]["cause_score"] + per["b"]["cause_score"]) / 2)


def _prompt(entity: str, attr: str, label: str, first: int) -> Prompt:
    return Prompt(entity, attr, label, "%s", entity, (0, 1), 1, "", first, True)


def test_pairs_follow_saebench_rules():
    prompts = [_prompt(f"e{i}", "country", ["A", "B", "C"][i % 3], 100 + i % 3) for i in range(30)]
    prompts += [_prompt(f"e{i}", "continent", ["X", "Y"][i % 2], 200 + i % 2) for i in range(30)]
    prompts[0] = _prompt("e0", "country", "A", 101)  # first answer token shared with label B's
    split = sample_pairs(random.Random(0), prompts, "country", ["country", "continent"], 10, 0.7)
    pairs = split.train + split.val
    assert split.n_cause == 10 and split.n_isolation == 10 and len(split.train) == 14
    for p in pairs:
        b, s = prompts[p.base], prompts[p.source]
        assert b.attribute == s.attribute and b.label != s.label
        assert (b.attribute == "country") == (p.kind == "cause")
        assert p.label == (s.label if p.kind == "cause" else b.label)
        assert p.target_token == (s.first_token if p.kind == "cause" else b.first_token)
        assert p.counted_as == ("isolation" if b.first_token == p.target_token else "cause")


def test_city_data_ship_offline():
    cities = city_entities(50)
    assert len(cities) == 50 and len({c.name for c in cities}) == 50
    by = {c.name: c.attributes for c in cities}
    assert by["Tokyo"] == {"country": "Japan", "continent": "Asia"}
    assert "London" not in by  # also a city in Canada: ambiguous names are left out


# -- on the embedded model ---------------------------------------------------------------------


def test_bad_hook_is_refused_before_any_model_pass(tmp_path, model, token_set, monkeypatch):
    from saebench.models import SubjectModel

    folder, _ = write_native(tmp_path / "mlp", hook_name="blocks.6.hook_mlp_out")

    def no_pass(*a, **k):
        raise AssertionError("a model pass ran before the hook was refused")

    monkeypatch.setattr(SubjectModel, "prefix", no_pass)
    with pytest.raises(SaebenchError, match="residual stream.*hook_mlp_out"):
        evaluate(str(folder), model=model, evals=["ravel"], token_set=token_set, progress=False, out=tmp_path / "o")
    assert not list((tmp_path / "o").rglob("ravel.json"))


def test_bad_hook_is_one_line_exit_2_from_the_cli(tmp_path, capsys):
    from saebench.cli import main

    folder, _ = write_native(tmp_path / "mlp", hook_name="blocks.6.hook_mlp_out")
    assert main(["run", "--sae", str(folder), "--evals", "ravel", "--out", str(tmp_path / "o"), "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ravel patches the residual stream") and "hook_mlp_out" in err[0]
    assert not list((tmp_path / "o").rglob("ravel.json"))


def test_no_entity_surviving_is_one_line_and_writes_nothing(tmp_path, model, token_set, monkeypatch):
    import saebench.probes.ravel as pr

    folder, _ = write_native(tmp_path / "s")
    monkeypatch.setattr(pr, "completion_decided", lambda label, text: False)
    cfg = {"ravel": {"n_entities": 2}}
    with pytest.raises(SaebenchError, match=r"no entity survives the model-knowledge filter \(0 of 2 cities"):
        evaluate(str(folder), model=model, evals=["ravel"], token_set=token_set, progress=False,
                 out=tmp_path / "o", eval_config=cfg)  # fmt: skip
    assert not list((tmp_path / "o").rglob("ravel.json"))


@pytest.fixture(scope="module")
def task(model, token_set):
    from saebench.evaluators.ravel import RavelConfig, make_task
    from saebench.pipeline import ActivationPipeline

    pipe = ActivationPipeline(model, token_set, HOOK, batch_size=SMALL["batch_size"], progress=False)
    cfg = RavelConfig(n_entities=24, num_pairs_per_attribute=16)
    return pipe, make_task(pipe, cfg, 0), cfg


def test_identity_sae_known_answers(task):
    """No latent patched: the reconstruction is exact, every answer stays (isolation 1, cause 0);
    every latent patched: the entity's residual is the source's, and the attribute moves."""
    from saebench.evaluators.ravel import score_pairs

    pipe, t, cfg = task
    assert t.filter["surviving_entities"] > 10
    sae = Identity()
    pairs = [p for s in t.splits for p in s.val + s.train]
    none = score_pairs(pipe, t, sae, torch.full((576,), -1.0), pairs, cfg)
    kept = [ok for p, ok in zip(pairs, none, strict=True) if p.kind == "isolation"]
    moved = [ok for p, ok in zip(pairs, none, strict=True) if p.kind == "cause"]
    assert all(kept) and not any(moved)
    full = score_pairs(pipe, t, sae, torch.ones(576), pairs, cfg)
    cause = [ok for p, ok in zip(pairs, full, strict=True) if p.kind == "cause"]
    assert sum(cause) / len(cause) > 0.6


def test_mdbm_moves_the_answer_on_a_planted_sae(task):
    """An SAE whose latents are the residual's coordinates: the trained mask (SAEBench's MDBM) selects
    latents, and patching them moves cause pairs' answers where no mask moves none."""
    from saebench.evaluators.ravel import RavelConfig, score_pairs, train_mask

    pipe, t, _ = task
    cfg = RavelConfig(learning_rate=0.05, num_epochs=3, llm_batch_size=8)
    split = t.splits[0]
    mask = train_mask(pipe, t, Identity(), split.train, cfg)
    assert 0 < int((mask > 0).sum()) < 576
    ok = score_pairs(pipe, t, Identity(), mask, split.train, cfg)
    cause = [o for p, o in zip(split.train, ok, strict=True) if p.kind == "cause"]
    assert sum(cause) / len(cause) > 0.3


def test_two_saes_share_the_filter_and_pair_exactly(tmp_path, model, token_set):
    """One run, two SAEs at one hook: one knowledge filter (prepared once per hook) serves both, both
    are scored on the same validation pairs (identical sample ids: paired comparisons), and the
    scores' intervals are over entities."""
    a, _ = write_native(tmp_path / "a", arch="topk", d_sae=128, seed=1)
    b, _ = write_native(tmp_path / "b", arch="topk", d_sae=128, seed=2)
    cfg = {"ravel": {"n_entities": 12, "num_pairs_per_attribute": 12, "llm_batch_size": 4}}
    run = evaluate([str(a), str(b)], model=model, evals=["ravel"], token_set=token_set, progress=False,
                   eval_config=cfg)  # fmt: skip
    ra, rb = run.results["a"]["ravel"], run.results["b"]["ravel"]
    assert ra.details["filter"] == rb.details["filter"] and ra.details["filter"]["surviving_entities"] > 4
    assert ra.samples["pair"]["ids"] == rb.samples["pair"]["ids"] and len(set(ra.samples["pair"]["ids"])) == len(
        ra.samples["pair"]["ids"]
    )
    assert ra.samples["pair"]["clusters"] and ra.uncertainty["disentanglement_score"]["cluster_unit"] == "entity"
    for k in ("cause_score", "isolation_score", "disentanglement_score"):
        assert 0.0 <= ra.metrics[k] <= 1.0


# -- export ------------------------------------------------------------------------------------


def test_export_round_trip_through_saebenchs_output_class(tmp_path):
    import dataclasses
    import json

    from saebench.cli import main
    from saebench.evaluators.base import EvalOutput
    from saebench.evaluators.ravel import UNIT, RavelConfig, RavelEvaluator
    from saebench.results import Result, SAERecord, load_results, result_path, write_result
    from saebench.runner import finish_metrics

    rng = random.Random(3)
    scored = [(rng.choice(["country", "continent"]), rng.choice(["cause", "isolation"]), rng.random() < 0.5)
              for _ in range(60)]  # fmt: skip
    direct = scores(scored)
    samples = Samples(UNIT, [f"p{i}" for i in range(60)], score_columns(scored), [f"e{i % 20}" for i in range(60)],
                      "entity")  # fmt: skip
    out = EvalOutput({"n_entities": 20}, {"per_attribute": direct["per_attribute"], "filter": {"kept_prompts": 9}},
                     samples={UNIT: samples})  # fmt: skip
    ev = RavelEvaluator()
    metrics, uncertainty, _ = finish_metrics(ev, out)
    config = {"model": "smollm2-135m", "hook": HOOK, "seed": 7, "dtype": "float32",
              "evaluator_config": RavelConfig().model_dump()}  # fmt: skip
    sae = SAERecord(name="sae", source="native", architecture="topk", d_in=576, d_sae=64, fingerprint="fp")
    r = Result(evaluator="ravel", run_key="k", sae=sae, config=config, metrics=metrics, uncertainty=uncertainty,
               details=out.details, samples={UNIT: samples.to_dict()},
               created_at="2025-01-02T03:04:05+00:00")  # fmt: skip
    write_result(r, result_path(tmp_path / "res", "sae", "ravel"))
    assert main(["export", "--format", "saebench", str(tmp_path / "res"), str(tmp_path / "sb")]) == 0
    doc = json.loads((tmp_path / "sb" / "ravel" / "saebench_sae_eval_results.json").read_text())
    (back,) = load_results([tmp_path / "res"])
    for k in ("cause_score", "isolation_score", "disentanglement_score"):
        assert doc["eval_result_metrics"]["ravel"][k] == pytest.approx(direct[k]) == back.metrics[k]
    assert doc["eval_config"]["entity_attribute_selection"] == {"city": ["Country", "Continent"]}
    assert doc["eval_result_unstructured"]["city_results"]["city_Country"]["disentangle_score"] == pytest.approx(
        direct["per_attribute"]["country"]["disentanglement_score"]
    )
    pytest.importorskip("sae_bench", reason="sae-bench not installed: bash setup.sh --crosscheck")
    from pydantic import TypeAdapter
    from sae_bench.evals.ravel.eval_output import RAVELEvalOutput

    valid = dataclasses.asdict(TypeAdapter(RAVELEvalOutput).validate_python(doc))
    for k in ("eval_type_id", "eval_config", "eval_result_metrics"):
        assert json.loads(json.dumps(valid[k])) == doc[k], k  # nothing dropped or defaulted


# -- SAEBench's own RAVEL code on the same prompts, pairs and SAE (benchmarks/ravel.py) ------------


def test_matches_saebench_ravel_code(tmp_path):
    """SAEBench 0.6.0's generate_batched + evaluate_completion, train_mdbm and
    generate_batched_interventions (on the transformers model the embedded weights come from) give
    the same knowledge-filter verdicts, mask logits, selected latents and scores as ours."""
    pytest.importorskip("sae_bench", reason="sae-bench not installed: bash setup.sh --crosscheck")
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import ravel as bench

    folder, _ = write_native(tmp_path / "sae", arch="topk", d_sae=256, seed=3)
    r = bench.run(str(folder), entities=16, pairs=8, batch=4, epochs=2, lr=1e-3)
    assert r["filter_agree"] == r["prompts"] and r["kept_ours"] > 0
    for attr, m in r["masks"].items():
        assert m["max_abs_diff"] < 1e-5 and m["jaccard"] == 1.0 and m["n_ours"] > 0, (attr, m)
        assert r["scores"][attr]["ours"] == pytest.approx(r["scores"][attr]["theirs"]), attr
