"""The runner: shared inputs are computed once for every SAE and evaluator; plugins run end to end."""

from __future__ import annotations

import json

from conftest import HOOK, SMALL, write_native

from saebench import evaluate
from saebench.cli import main

EVAL_CONFIG = {
    "probing": {
        "tasks": ["agnews_sports", "haystack_high-school"],
        "max_train": 8,
        "max_test": 8,
        "max_tokens": 16,
        "baselines": False,
    },
    "n2g": {"n_latents": 2, "n_top": 2, "n_random": 1, "max_prune_len": 3, "n_tokens": None},
    "ablation": {"n_pairs": 2},
}
EVALS = ["core", "probing", "n2g", "ablation"]


def test_shared_inputs_run_once_and_metrics_equal_separate_runs(model, tmp_path, cache_env):
    saes = [write_native(tmp_path / f"sae{i}", arch="topk", d_sae=64, seed=i)[1] for i in range(2)]
    names = ["a", "b"]
    both = evaluate(
        saes, model=model, hook=HOOK, evals=EVALS, eval_config=EVAL_CONFIG, name=names, progress=False, **SMALL
    )
    c = both.counters[HOOK]
    n_batches = SMALL["tokens"] // SMALL["ctx_len"] // SMALL["batch_size"]
    assert c.prefix_batches == n_batches  # states: once, for every evaluator and SAE
    assert c.ablation_batches == 0  # zero_all at a residual hook: one context of zeros, no suffix batch
    assert c.clean_suffix_batches == n_batches  # clean suffix: once per batch, shared by both SAEs
    assert c.spliced_suffix_batches == 2 * n_batches  # one spliced suffix per SAE per batch
    task_batches = c.task_forward_batches
    assert task_batches > 0

    # separately, one evaluator and one SAE per run (warm disk cache: no model pass repeats)
    for sae, name in zip(saes, names, strict=True):
        for ev in EVALS:
            alone = evaluate(
                sae, model=model, hook=HOOK, evals=[ev], eval_config=EVAL_CONFIG, name=name, progress=False, **SMALL
            )
            assert alone.metrics[ev] == both.results[name][ev].metrics, (name, ev)
            assert alone.counters[HOOK].prefix_batches == 0 and alone.counters[HOOK].task_forward_batches == 0

    # the probing tasks cost the same model passes for two SAEs as for one (cold cache)
    cold = cache_env / "cold"
    cold.mkdir()
    import os

    os.environ["SAEBENCH_CACHE"] = str(cold)
    one = evaluate(saes[0], model=model, hook=HOOK, evals=["probing"], eval_config=EVAL_CONFIG, progress=False, **SMALL)
    assert one.counters[HOOK].task_forward_batches == task_batches
    assert one.counters[HOOK].prefix_batches == 0  # probing does not need the token set's states


PLUGIN = '''
from saebench.evaluators import EvalConfig, EvalOutput, Metric


class MeanNorm:
    """A third party's evaluator: the mean latent norm per token."""

    name = "mean_norm"
    needs = frozenset({"states"})
    metrics = (Metric("mean_latent_norm", "mean L2 norm of the latents", "down", True, "", "latent norm"),)

    class Config(EvalConfig):
        scale: float = 1.0

    def run(self, ctx, cfg):
        from saebench.pipeline import examples

        total, n = 0.0, 0
        for _, z in ctx.pipeline.encode_seqs(ctx.sae):
            total += float(z.norm(dim=-1).sum()) * cfg.scale
            n += z.shape[0] * z.shape[1]
        return EvalOutput({"mean_latent_norm": total / n}, {"tokens": n})
'''


def test_plugin_evaluator_from_a_file_runs_end_to_end(tmp_path, capsys, cache_env, model):
    folder, _ = write_native(tmp_path / "sae", arch="topk", d_sae=64)
    plugin = tmp_path / "my_eval.py"
    plugin.write_text(PLUGIN)
    out = tmp_path / "out"
    args = [
        "run",
        "--sae",
        str(folder),
        "--evals",
        f"core,python:{plugin}:MeanNorm",
        "--set",
        "mean_norm.scale=2",
        "--out",
        str(out),
        "--tokens",
        str(SMALL["tokens"]),
        "--ctx-len",
        str(SMALL["ctx_len"]),
        "--batch-size",
        str(SMALL["batch_size"]),
    ]
    assert main(args) == 0
    stdout = capsys.readouterr().out
    data = json.loads((out / "sae" / "mean_norm.json").read_text())
    assert data["evaluator"] == "mean_norm" and data["metrics"]["mean_latent_norm"] > 0
    assert data["config"]["evaluator_config"] == {"scale": 2.0}
    assert data["details"]["tokens"] == (SMALL["tokens"] // SMALL["ctx_len"]) * (SMALL["ctx_len"] - 1)
    assert "latent norm ↓" in stdout  # the plugin's headline metric reaches the summary table
