"""``meta_structure`` and ``mdl``: ours against SAEBench 0.6.0's own code, same SAE and inputs, timed.

    OMP_NUM_THREADS=1 python benchmarks/meta_mdl.py [--sae /work/zoo/topk-2304-k32] [--tokens 4096]
        [--steps 1500] [--mdl-settings cli|config] [--seeds 42,1,2,3] [--skip-meta] [--skip-mdl]

Needs ``sae-bench==0.6.0`` (``bash setup.sh --crosscheck``); both evaluations ship in its wheel
(``sae_bench/evals/meta_structure``, ``sae_bench/evals/mdl``). Both sides run in this process on
one thread.

- **meta_structure**: SAEBench's ``run_eval_single_sae`` on the SAE's ``W_dec`` (SAEBench's input)
  after ``torch.manual_seed(seed)``, as its command line seeds before the run, against our
  :func:`saebench.probes.meta_sae.train_meta_sae` + ``row_errors`` with the same seed and SAEBench's
  defaults (1500 steps of 1024 rows, bf16 autocast). Prints both values, |ours − theirs| and the
  time ratio.
- **mdl**: SAEBench's ``run_eval_single_sae`` (by default at its command line's settings: bins 8, 16,
  32, 64, no TopK, threshold 0.2; ``--mdl-settings config``: MDLEvalConfig's 18 settings) fed the
  kept hook activations of our token set through a stand-in for SAELens's ``ActivationsStore``
  (every buffer it draws is the whole token set, so its maximum, MSE check and DL all see our
  tokens), against our evaluator's ``run`` on the same pipeline (states cached before timing on
  both sides: SAEBench gets the activations in memory). Two shims make its module run offline on
  a CPU, changing no arithmetic: its ``calculate_dl`` reads a module global ``config`` that only
  its ``__main__`` block sets (we set it), and ends with ``.cuda()`` calls (made the identity).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

HOOK = "blocks.6.hook_resid_post"


# -- SAEBench's meta_structure ---------------------------------------------------------------------
class _DecoderOnly(torch.nn.Module):
    """What SAEBench's meta_structure reads from an SAE: ``W_dec``, ``to`` and ``cfg.to_dict()``."""

    def __init__(self, w_dec: torch.Tensor) -> None:
        super().__init__()
        self.W_dec = torch.nn.Parameter(w_dec.detach().clone().float())
        shape = {"d_sae": int(w_dec.shape[0]), "d_in": int(w_dec.shape[1])}
        self.cfg = SimpleNamespace(to_dict=lambda: dict(shape))


def saebench_meta_structure(w_dec: torch.Tensor, seed: int = 42, **overrides: Any) -> tuple[float, float, float]:
    """SAEBench's ``(decoder_fraction_variance_explained, final_reconstruction_mse, seconds)``."""
    from sae_bench.evals.meta_structure import main as ms
    from sae_bench.evals.meta_structure.eval_config import MetaStructureEvalConfig

    cfg = MetaStructureEvalConfig(random_seed=seed, **overrides)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    out = ms.run_eval_single_sae("saebench", "sae", _DecoderOnly(w_dec), cfg, "cpu")
    seconds = time.perf_counter() - t0
    m = out.eval_result_metrics.meta_structure
    return m.decoder_fraction_variance_explained, m.final_reconstruction_mse, seconds


def ours_meta_structure(w_dec: torch.Tensor, seed: int = 42, **overrides: Any) -> tuple[float, float, float]:
    """Ours, through the evaluator's config defaults: ``(fve, mse, seconds)``."""
    from saebench.evaluators.meta_structure import MetaStructureConfig
    from saebench.probes.meta_sae import meta_width, row_errors, train_meta_sae

    c = MetaStructureConfig(seed=seed, **overrides)
    t0 = time.perf_counter()
    width = meta_width(w_dec.shape[0], c.width_ratio, c.k)
    meta = train_meta_sae(w_dec, width, c.k, c.train_steps, c.train_batch_size, c.learning_rate, c.seed, c.autocast,
                          c.weight_decay, c.dead_feature_window)  # fmt: skip
    err, var = row_errors(meta, w_dec, c.eval_batch_size)
    seconds = time.perf_counter() - t0
    return 1.0 - float(err.sum() / var.sum()), float(err.sum()) / w_dec.numel(), seconds


# -- SAEBench's mdl --------------------------------------------------------------------------------
class _Store:
    """SAELens's ``ActivationsStore`` as SAEBench's MDL uses it: ``get_filtered_llm_batch`` hands out
    ``chunks`` in turn, so each buffer of ``len(chunks)`` calls is the whole token set, in order."""

    def __init__(self, chunks: list[torch.Tensor]) -> None:
        self.chunks, self.i = chunks, 0

    def get_filtered_llm_batch(self) -> torch.Tensor:
        out = self.chunks[self.i % len(self.chunks)]
        self.i += 1
        return out


class _SaeView(torch.nn.Module):
    """Our SAE with the ``cfg`` fields SAEBench's MDL reads (``d_sae``, ``d_in``)."""

    def __init__(self, sae: Any) -> None:
        super().__init__()
        self.sae = sae
        self.cfg = SimpleNamespace(d_sae=int(sae.d_sae), d_in=int(sae.d_in))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.sae.encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.sae.decode(z)


@contextlib.contextmanager
def saebench_mdl_offline(chunks: list[torch.Tensor], cfg: Any) -> Iterator[Any]:
    """SAEBench's MDL module, made to run on these activation chunks on a CPU (see module doc)."""
    from sae_bench.evals.mdl import main as mdl

    saved = (getattr(mdl, "config", None), mdl.ActivationsStore, torch.Tensor.cuda)
    mdl.config = cfg
    mdl.ActivationsStore = SimpleNamespace(from_sae=lambda *a, **k: _Store(chunks))  # type: ignore[assignment]
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    try:
        yield mdl
    finally:
        mdl.config, mdl.ActivationsStore, torch.Tensor.cuda = saved  # type: ignore[method-assign]


def saebench_mdl(sae: Any, chunks: list[torch.Tensor], **overrides: Any) -> tuple[list[dict[str, Any]], float]:
    """SAEBench's MDL records (``num_bins, k, description_length, within_threshold, mse_loss``) on
    exactly these kept activations, and the seconds it took."""
    from loguru import logger
    from sae_bench.evals.mdl.eval_config import MDLEvalConfig

    cfg = MDLEvalConfig(**overrides)
    cfg.sae_batch_size = len(chunks)
    logger.disable("sae_bench")
    model = SimpleNamespace(to=lambda *a, **k: model)
    with saebench_mdl_offline(chunks, cfg) as mdl, contextlib.redirect_stdout(sys.stderr):
        t0 = time.perf_counter()
        rows = mdl.run_eval_single_sae(cfg, _SaeView(sae), model, "cpu")
        seconds = time.perf_counter() - t0
    torch.set_grad_enabled(True)  # SAEBench's run turns gradients off globally
    return rows, seconds


def kept_chunks(ctx: Any) -> list[torch.Tensor]:
    """The kept hook activations of the context's token set, one chunk per batch of contexts."""
    from saebench.evaluators.mdl import kept_batches

    return [x.float() for x, _ in kept_batches(ctx)]


def mdl_context(sae: Any, model: Any, tokens: int, ctx_len: int, batch_size: int, seed: int = 0) -> Any:
    """An :class:`EvalContext` for ``sae`` at ``HOOK`` on a sampled token set (states computed)."""
    from saebench.data import build_token_set
    from saebench.evaluators.base import EvalContext
    from saebench.pipeline import ActivationPipeline

    ts = build_token_set(model.tokenize, model.bos_id, tokens, ctx_len, seed=seed)
    pipe = ActivationPipeline(model, ts, HOOK, batch_size, progress=False)
    pipe.states()
    return EvalContext(pipe, sae, "sae", "bench", seed, "quick")


def seed_spread(w_dec: torch.Tensor, seeds: list[int], steps: int) -> None:
    """Our FVE at each meta-SAE seed with its interval over decoder rows, and the SD across seeds."""
    import statistics

    from saebench.evaluators.meta_structure import METRICS, MetaStructureConfig
    from saebench.probes.meta_sae import meta_width, row_errors, train_meta_sae
    from saebench.stats import Samples, interval

    c = MetaStructureConfig(train_steps=steps)
    width = meta_width(w_dec.shape[0], c.width_ratio, c.k)
    values = []
    for seed in seeds:
        meta = train_meta_sae(w_dec, width, c.k, c.train_steps, c.train_batch_size, c.learning_rate, seed, c.autocast,
                              c.weight_decay, c.dead_feature_window)  # fmt: skip
        err, var = row_errors(meta, w_dec, c.eval_batch_size)
        cols = {"sq_err": err.tolist(), "var": var.tolist(), "n_elem": [float(w_dec.shape[1])] * len(err)}
        rows = Samples("decoder_row", [str(i) for i in range(w_dec.shape[0])], cols)
        iv = interval(METRICS[0].estimator, {"decoder_row": rows})
        values.append(iv.value)
        print(f"  seed {seed}: FVE {iv.value:.5f}, row SE {iv.se:.5f}, 95% [{iv.low:.5f}, {iv.high:.5f}]", flush=True)
    if len(values) > 1:
        print(f"  seeds {seeds}: mean {statistics.mean(values):.5f}, seed SD {statistics.stdev(values):.5f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sae", default="/work/zoo/topk-2304-k32")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--ctx-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=1500, help="meta-SAE training steps (SAEBench: 1500)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--mdl-settings", choices=["cli", "config"], default="cli",
                    help="cli: SAEBench's command-line settings (bins 8/16/32/64, no TopK, threshold 0.2; its "
                    "DL loop costs ~2.5 min per setting at d_sae 2304 on one thread); config: MDLEvalConfig's "
                    "defaults (6 bin counts x 3 k: 18 settings)")  # fmt: skip
    ap.add_argument("--seeds", default="", help="comma-separated meta-SAE seeds: our FVE per seed, their SD and "
                    "the row interval (the training-seed spread beside the interval over decoder rows)")  # fmt: skip
    ap.add_argument("--skip-meta", action="store_true")
    ap.add_argument("--skip-mdl", action="store_true")
    args = ap.parse_args()

    from saebench.evaluators.mdl import MdlConfig, MdlEvaluator, dl_name, mse_name, thr_name
    from saebench.loading import load_sae

    sae = load_sae(args.sae).sae
    print(f"torch threads: {torch.get_num_threads()}; SAE {args.sae} (d_sae {sae.d_sae}, d_in {sae.d_in})")
    if not args.skip_meta:
        w = sae.W_dec.detach().float()
        theirs = saebench_meta_structure(w, args.seed, train_steps=args.steps)
        ours = ours_meta_structure(w, args.seed, train_steps=args.steps)
        print(f"meta_structure ({args.steps} steps, seed {args.seed}):")
        print(f"  decoder_fraction_variance_explained  ours {ours[0]:.8f}  SAEBench {theirs[0]:.8f}  "
              f"|diff| {abs(ours[0] - theirs[0]):.2e}")  # fmt: skip
        print(f"  final_reconstruction_mse             ours {ours[1]:.8g}  SAEBench {theirs[1]:.8g}  "
              f"|diff| {abs(ours[1] - theirs[1]):.2e}")  # fmt: skip
        print(f"  seconds  ours {ours[2]:.1f}  SAEBench {theirs[2]:.1f}  ratio SAEBench/ours {theirs[2] / ours[2]:.2f}")
    if args.seeds:
        seed_spread(sae.W_dec.detach().float(), [int(x) for x in args.seeds.split(",")], args.steps)
    if not args.skip_mdl:
        from saebench.models import load_model

        model = load_model()
        ctx = mdl_context(sae, model, args.tokens, args.ctx_len, args.batch_size)
        chunks = kept_chunks(ctx)
        settings: dict[str, Any] = {}
        if args.mdl_settings == "cli":  # SAEBench's __main__ block
            settings = {"num_bins_values": [8, 16, 32, 64], "k_values": [None], "mse_epsilon_threshold": 0.2}
        t0 = time.perf_counter()
        out = MdlEvaluator().run(ctx, MdlConfig(**settings))
        t_ours = time.perf_counter() - t0
        rows, t_theirs = saebench_mdl(sae, chunks, **settings)
        print(f"mdl ({sum(c.shape[0] for c in chunks)} kept tokens, {len(rows)} settings):")
        worst_dl = worst_mse = 0.0
        for r in rows:
            dl, mse = out.metrics[dl_name(r["num_bins"])], out.metrics[mse_name(r["num_bins"], r["k"])]
            worst_dl = max(worst_dl, abs(dl - r["description_length"]) / abs(r["description_length"]))
            worst_mse = max(worst_mse, abs(mse - r["mse_loss"]) / abs(r["mse_loss"]))
            same = out.metrics[thr_name(r["num_bins"], r["k"])] == r["within_threshold"]
            print(f"  bins {r['num_bins']:>2} k {r['k']}: DL ours {dl:.6f} SAEBench {r['description_length']:.6f}; "
                  f"mse_loss ours {mse:.6g} SAEBench {r['mse_loss']:.6g}; within_threshold same: {same}")  # fmt: skip
        print(f"  max relative |diff|: DL {worst_dl:.2e}, mse_loss {worst_mse:.2e}")
        print(f"  seconds  ours {t_ours:.1f}  SAEBench {t_theirs:.1f}  ratio SAEBench/ours {t_theirs / t_ours:.2f}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
