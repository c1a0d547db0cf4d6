"""1-D sparse probing: the Newton engine against sklearn, the task registry, planted-feature and
label-shuffle oracles on the embedded model, and bad input (unavailable task, single class, all
latents dead, a user spec naming a missing column)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import HOOK, SMALL

from saebench import SaebenchError, evaluate
from saebench.probes.linear import best_single_column
from saebench.probes.sparse_probing import heldout_probe, pool
from saebench.tasks import TaskUnavailable, load_specs, load_task, offline_status

EUROPARL = Path(__file__).resolve().parents[2] / "shared" / "data" / "europarl"
TASKS = ["haystack_high-school", "agnews_sports"]  # one last-token and one mean-pooled task
SIZES = {"max_train": 24, "max_test": 24, "max_tokens": 24}


def test_newton_matches_sklearn_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    g = torch.Generator().manual_seed(0)
    n, l2 = 60, 1e-3
    y = (torch.rand(2 * n, generator=g) < 0.5).double()
    x = torch.randn(2 * n, 6, generator=g) + y[:, None] * torch.tensor([0.0, 0.3, 1.0, 2.0, 0.0, 0.0])
    x[:, 4] = torch.relu(x[:, 4] - 1.0)  # sparse, latent-like
    x[:, 5] = y * 3.0 + 0.01 * torch.randn(2 * n, generator=g)  # separable: the L2 keeps w finite
    res = best_single_column(x[:n], y[:n], x[n:], y[n:], l2=l2)
    assert bool(res.live.all())
    for i in range(6):
        a = x[:n, i].double().numpy()
        mu, sd = a.mean(), a.std()
        clf = LogisticRegression(C=1.0 / (l2 * n), tol=1e-12, max_iter=10_000).fit(
            ((a - mu) / sd)[:, None], y[:n].numpy()
        )
        p = clf.predict_proba(((x[n:, i].double().numpy() - mu) / sd)[:, None])[:, 1]
        yy = y[n:].numpy()
        ref = float(-(yy * np.log(p) + (1 - yy) * np.log(1 - p)).mean())
        assert float(res.test_loss[i]) == pytest.approx(ref, abs=1e-4), i


def test_shuffled_labels_give_ln2_and_dead_columns_are_skipped():
    g = torch.Generator().manual_seed(1)
    n = 2000
    x = torch.relu(torch.randn(2 * n, 20, generator=g))
    x[:, 3] = 0.0  # dead
    y = torch.zeros(2 * n, dtype=torch.float64)
    y[torch.randperm(2 * n, generator=g)[:n]] = 1.0  # labels independent of x
    res = best_single_column(x[:n], y[:n], x[n:], y[n:], chunk=7)  # chunk smaller than width
    assert not bool(res.live[3]) and math.isnan(float(res.test_loss[3])) and int(res.live.sum()) == 19
    _, loss = res.best()
    assert loss == pytest.approx(math.log(2), abs=0.01)
    assert res.prior_loss == pytest.approx(math.log(2), abs=1e-3)


def _noise_task(g: torch.Generator, width: int, n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse non-negative latent-like columns and balanced labels independent of them."""
    x = torch.relu(torch.randn(2 * n, width, generator=g) - 1.5)
    y = torch.zeros(2 * n, dtype=torch.float64)
    y[torch.randperm(n, generator=g)[: n // 2]] = 1.0
    y[n + torch.randperm(n, generator=g)[: n // 2]] = 1.0
    return x, y


def test_pure_noise_scores_at_the_floor_whatever_the_width():
    """Chosen on train and scored on test, noise latents sit at their shuffled-label floor at every
    width; the old choice by test loss read below chance and fell as the candidate count grew."""
    g = torch.Generator().manual_seed(3)
    n, reps = 32, 6
    gains, floors, by_test = {}, {}, {}
    for width in (256, 1024, 4096):
        gs, fs, ts = [], [], []
        for r in range(reps):
            x, y = _noise_task(g, width)
            h = heldout_probe(x[:n], y[:n], x[n:], y[n:], l2=0.1, chunk=4096, n_perm=9, perm_seed=r)
            gs.append(h.floor - h.loss)
            fs.append(h.floor)
            ts.append(best_single_column(x[:n], y[:n], x[n:], y[n:], l2=0.1).best()[1])
        gains[width], floors[width], by_test[width] = np.mean(gs), np.mean(fs), np.mean(ts)
    for width in gains:
        assert abs(gains[width]) < 0.08, gains  # at the floor: no gain over shuffled labels
        assert floors[width] > math.log(2) - 0.02, floors  # noise never beats chance on test
    assert abs(floors[4096] - floors[256]) < 0.05, floors  # the floor does not reward width
    # choosing by test loss instead reads below chance on pure noise, lower the more candidates
    assert all(v < math.log(2) - 0.05 for v in by_test.values()) and by_test[4096] < by_test[256], by_test


def test_planted_column_is_chosen_on_train_and_beats_its_floor():
    g = torch.Generator().manual_seed(4)
    n = 32
    x, y = _noise_task(g, 2048)
    fire = (torch.rand(2 * n, generator=g) < 0.1 + 0.8 * y).double()
    x[:, 77] = (fire * (1 + torch.rand(2 * n, generator=g))).float()
    h = heldout_probe(x[:n], y[:n], x[n:], y[n:], l2=0.1, chunk=512, n_perm=19, perm_seed=0)
    assert h.column == 77 and h.n_live > 0
    assert h.p_value == pytest.approx(1 / 20) and h.floor - h.loss > 0.2
    # the chosen probe is exactly column 77's, fit on train alone
    one = best_single_column(x[:n], y[:n], x[n:], y[n:], l2=0.1)
    assert h.loss == pytest.approx(float(one.test_loss[77]), abs=1e-12)
    assert h.train_loss == pytest.approx(float(one.train_loss.nan_to_num(math.inf).min()), abs=1e-12)


def test_registry_has_61_tasks_from_17_sources(monkeypatch):
    monkeypatch.delenv("SAEBENCH_EUROPARL", raising=False)
    specs = load_specs()
    assert len(specs) == 61 and len({s.source for s in specs.values()}) == 17
    offline = [s.name for s in specs.values() if offline_status(s)[0]]
    assert len(offline) >= 55
    missing = sorted(set(specs) - set(offline))
    assert all(name.startswith("europarl_") for name in missing)
    ok, why = offline_status(specs["europarl_de"])
    assert not ok and "SAEBENCH_EUROPARL" in why


@pytest.mark.skipif(not EUROPARL.is_dir(), reason="shared Europarl test data not present")
def test_europarl_offline_from_env(monkeypatch):
    monkeypatch.setenv("SAEBENCH_EUROPARL", str(EUROPARL))
    task = load_task(load_specs()["europarl_de"], 20, 20, seed=0)
    assert task.n_train == 20 and sum(task.labels) == 20 and task.origin.endswith("europarl.test")


def _user_spec(tmp_path: Path, text: str, label: str, positive: str) -> Path:
    data = tmp_path / "mine.csv"
    data.write_text("sentence,label\n" + "".join(f"example number {i},{i % 2}\n" for i in range(40)))
    spec = tmp_path / "mine.toml"
    spec.write_text(
        'family = "mine"\nsource = "my data"\ncitation = "me 2025"\nn_train = 10\nn_test = 10\n'
        f'[offline]\nformat = "csv"\nfile = "mine.csv"\ntext = "{text}"\nlabel = "{label}"\npositive = ["{positive}"]\n'
        '[[task]]\nname = "mine_odd"\n'
    )
    return spec


def test_user_spec_with_missing_column_names_column_and_file(tmp_path):
    spec = load_specs([str(_user_spec(tmp_path, "{text}", "label", "1"))])["mine_odd"]
    with pytest.raises(SaebenchError) as err:
        load_task(spec, 10, 10, seed=0, data_paths={"mine": str(tmp_path)})
    msg = str(err.value)
    assert "'text'" in msg and "mine.csv" in msg and "\n" not in msg
    ok = load_specs([str(_user_spec(tmp_path, "{sentence}", "label", "1"))])["mine_odd"]
    task = load_task(ok, 10, 10, seed=0, data_paths={"mine": str(tmp_path)})
    assert task.n_train == 10 and sum(task.labels) == 10


def test_single_class_task_is_unavailable(tmp_path):
    spec = load_specs([str(_user_spec(tmp_path, "{sentence}", "label", "7"))])["mine_odd"]
    with pytest.raises(TaskUnavailable, match="single class"):
        load_task(spec, 10, 10, seed=0, data_paths={"mine": str(tmp_path)})


class Planted(torch.nn.Module):
    """Random ReLU latents plus planted latents ``z_j = x · v_j`` (linear: pooled z_j is then
    exactly the pooled residual's projection on v_j, so its 1-D probe is the direction probe)."""

    def __init__(self, planted: dict[int, torch.Tensor], d_in: int = 576, d_sae: int = 64) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.d_in, self.d_sae = d_in, d_sae
        self.W = torch.randn(d_in, d_sae, generator=g) * 0.01
        self.planted = planted

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.relu(x @ self.W)
        for j, v in self.planted.items():
            z[..., j] = x @ v
        return z

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W.T


class Dead(Planted):
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*x.shape[:-1], self.d_sae)


def test_planted_feature_is_found_and_second_sae_costs_no_forward(model, token_set, cache_env, tmp_path, monkeypatch):
    from saebench.pipeline import ActivationPipeline
    from saebench.pipeline.tasks import task_activations

    monkeypatch.delenv("SAEBENCH_EUROPARL", raising=False)
    specs = load_specs()
    tasks = {n: load_task(specs[n], SIZES["max_train"], SIZES["max_test"], seed=0) for n in TASKS}
    pipe = ActivationPipeline(model, token_set, HOOK, batch_size=4, progress=False)
    acts = task_activations(pipe, {n: t.texts for n, t in tasks.items()}, SIZES["max_tokens"])
    assert pipe.counters.task_forward_batches > 0
    planted, expected = {}, {}
    for j, name in zip((17, 42), TASKS, strict=True):
        t = tasks[name]
        x = pool(acts[name].acts, acts[name].lengths, specs[name].pooling).double()
        y = torch.tensor(t.labels, dtype=torch.float64)
        tr = y[: t.n_train].bool()
        # difference of class means, per channel scaled by the train variance (a diagonal LDA
        # direction: the raw difference is dominated by a few high-variance channels)
        xt = x[: t.n_train]
        v = (xt[tr].mean(0) - xt[~tr].mean(0)) / xt.var(0).clamp_min(1e-6)
        v = v / v.norm()
        planted[j] = v.float()
        proj = (x @ v)[:, None]
        res = best_single_column(proj[: t.n_train], y[: t.n_train], proj[t.n_train :], y[t.n_train :], l2=0.1)
        expected[name] = (j, float(res.test_loss[0]))

    cfg = {"probing": {"tasks": [*TASKS, "europarl_de"], **SIZES}}
    run = evaluate(
        Planted(planted), model=model, hook=HOOK, evals=["probing"], eval_config=cfg, name="planted", **SMALL
    )
    m, det = run.metrics["probing"], run.details["probing"]
    # the cached task activations were reused: no model pass in this (new) pipeline
    assert det["model_forward_batches"] == 0
    assert m["n_tasks_scored"] == 2 and m["n_tasks_skipped"] == 1 and "europarl_de" in det["skipped"]
    assert "SAEBENCH_EUROPARL" in det["skipped"]["europarl_de"]
    for row in det["tasks"]:
        j, loss = expected[row["task"]]
        assert row["best_latent"] == j and row["top_1_latents"] == [j]  # chosen on train
        assert row["heldout_probe_loss"] == pytest.approx(loss, abs=1e-4)
        assert row["heldout_probe_loss"] < row["prior_loss"] - 0.2
        assert row["at_floor"] is False and row["floor_p_value"] == pytest.approx(1 / 20)
        assert row["noise_floor"] > row["heldout_probe_loss"] + 0.2
        assert row["resid_1d_heldout_loss"] is not None and row["resid_full_loss"] is not None
    assert m["heldout_probe_loss"] == pytest.approx(np.mean([expected[n][1] for n in TASKS]), abs=1e-4)
    assert m["probe_loss_below_floor"] > 0.2 and m["n_tasks_at_floor"] == 0 and det["tasks_at_floor"] == []
    assert m["probe_noise_floor"] == pytest.approx(m["heldout_probe_loss"] + m["probe_loss_below_floor"], abs=1e-9)
    assert det["pooling_by_task"] == {"haystack_high-school": "last", "agnews_sports": "mean"}

    dead = evaluate(Dead({}), model=model, hook=HOOK, evals=["probing"], eval_config=cfg, name="dead", **SMALL)
    d = dead.metrics["probing"]
    assert dead.details["probing"]["model_forward_batches"] == 0
    assert d["n_tasks_no_live_latents"] == 2 and d["n_latents_scored_mean"] == 0
    assert d["heldout_probe_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert d["probe_loss_below_floor"] == pytest.approx(0.0, abs=1e-12) and d["n_tasks_at_floor"] == 2
    assert d["top_1_accuracy"] is None
    assert any("every latent is dead" in note for note in dead.results["dead"]["probing"].notes)


def test_mean_pooling_of_latents_is_per_token():
    acts = torch.tensor([[1.0, -1.0], [3.0, 1.0], [5.0, 5.0]])
    lengths = torch.tensor([2, 1])
    relu = torch.relu
    assert torch.allclose(pool(acts, lengths, "mean", relu), torch.tensor([[2.0, 0.5], [5.0, 5.0]]))
    assert torch.allclose(pool(acts, lengths, "last", relu, token_chunk=1), torch.tensor([[3.0, 1.0], [5.0, 5.0]]))
    assert torch.allclose(pool(acts, lengths, "mean", token_chunk=1), torch.tensor([[2.0, 0.0], [5.0, 5.0]]))


def test_tasks_cli_lists_61_tasks(capsys, monkeypatch):
    from saebench.cli import main
    from saebench.evaluators.probing import ProbingConfig

    monkeypatch.delenv("SAEBENCH_EUROPARL", raising=False)
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "61 tasks from 17 sources; 57 available offline here" in out
    assert "haystack_high-school" in out and "no: no local copy of Europarl" in out
    assert ProbingConfig.for_profile("quick", tasks="glue_*, agnews_world").tasks == ["glue_*", "agnews_world"]
