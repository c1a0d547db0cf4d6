"""The synthetic zoo: SAEs of every architecture trained by :mod:`saebench.train` on a synthetic source.

Feeding the trainer: :func:`saebench.train.train_sae` consumes an activation tensor ``[n, d]``;
the synthetic source streams ``n`` tokens of its ``train`` stream into one (``d``-wide: 64 floats a
token), so the trainer runs unchanged, with the same recipe as the real zoo. Each SAE's cfg.json
then records the source (``synthetic``: its settings, seed and fingerprint), its ``model_name``
is :data:`~saebench.synthetic.SYNTHETIC_MODEL` and its ``hook_name``
:data:`~saebench.synthetic.SYNTHETIC_HOOK`: real-model evaluators refuse it in one line, and the
``groundtruth`` evaluator rebuilds the source from it.

Default zoo (:data:`SYNTHETIC_ZOO`): the five architectures (relu, topk, batchtopk, jumprelu,
gated) x widths {512, 1024} (half of and equal to the 1,024 true features) x L0 {4, 8}
(below and above the source's mean L0 of 5): 20 SAEs on 262,144 tokens, 2 epochs each, batches of
512 tokens and a learning rate of 5e-3 for every architecture (Gao et al.'s lr scaling, tuned for
d_in = 576 and 393k tokens, leaves these small problems unconverged: measured, docs/groundtruth.md).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saebench.sae import ARCHITECTURES, NativeSAE, save_native
from saebench.synthetic import RECORD_KEY, SYNTHETIC_HOOK, SYNTHETIC_MODEL, SyntheticConfig, SyntheticSource
from saebench.train import PenaltyRecipe, train_sae


@dataclass(frozen=True)
class SyntheticMember:
    architecture: str
    d_sae: int
    k: int  # TopK/BatchTopK k, or the target L0 of the penalised architectures

    @property
    def name(self) -> str:
        sparsity = f"k{self.k}" if self.architecture in ("topk", "batchtopk") else f"l0_{self.k}"
        return f"synth-{self.architecture}-{self.d_sae}-{sparsity}"


SYNTHETIC_ZOO: tuple[SyntheticMember, ...] = tuple(
    SyntheticMember(a, w, k) for a in ARCHITECTURES for w in (512, 1024) for k in (4, 8)
)
ZOO_TOKENS = 262_144
ZOO_EPOCHS = 2
ZOO_SEED = 0
ZOO_LR = 5e-3
ZOO_BATCH = 512


def train_synthetic_sae(
    source: SyntheticSource,
    architecture: str,
    d_sae: int,
    k: int,
    *,
    acts: torch.Tensor | None = None,
    n_tokens: int = ZOO_TOKENS,
    epochs: int = ZOO_EPOCHS,
    seed: int = ZOO_SEED,
    batch_tokens: int = ZOO_BATCH,
    lr: float = ZOO_LR,
    progress: bool = False,
) -> tuple[NativeSAE, dict[str, Any]]:
    """One SAE of ``architecture`` trained by the project's trainer on ``source``'s train stream
    (``acts``: that stream's first tokens, drawn once and shared by a zoo); its config records the
    source."""
    if acts is None:
        acts = source.activations(n_tokens, "train")
    sae, log = train_sae(
        acts,
        architecture,
        d_sae,
        k=k,
        hook=SYNTHETIC_HOOK,
        model_name=SYNTHETIC_MODEL,
        seed=seed,
        epochs=epochs,
        batch_tokens=batch_tokens,
        recipe=PenaltyRecipe(batch_tokens=batch_tokens),
        lr=lr,
        dead_tokens=min(200_000, acts.shape[0] // 2),
        progress=progress,
    )
    setattr(sae.cfg, RECORD_KEY, source.record())
    return sae, log


def build_synthetic_zoo(
    out: Path,
    members: tuple[SyntheticMember, ...] = SYNTHETIC_ZOO,
    cfg: SyntheticConfig | None = None,
    n_tokens: int = ZOO_TOKENS,
    epochs: int = ZOO_EPOCHS,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train every member missing from ``out`` on one draw of the source's train stream; returns
    one log per member trained (also written as ``train_log.json`` beside its weights), with the
    seconds spent drawing the data (``data_s``, shared) and training (``train_s``)."""
    source = SyntheticSource(cfg)
    out.mkdir(parents=True, exist_ok=True)
    todo = [m for m in members if not (out / m.name / "sae.safetensors").is_file()]
    if not todo:
        return []
    torch.manual_seed(ZOO_SEED)
    t0 = time.perf_counter()
    acts = source.activations(n_tokens, "train")
    data_s = time.perf_counter() - t0
    logs = []
    for m in todo:
        t0 = time.perf_counter()
        sae, log = train_synthetic_sae(source, m.architecture, m.d_sae, m.k, acts=acts, epochs=epochs)
        save_native(sae, out / m.name)
        log = {"name": m.name, **log, "data_s": round(data_s, 2), "wall_s": round(time.perf_counter() - t0, 2)}
        log.pop("curve", None)
        (out / m.name / "train_log.json").write_text(json.dumps(log, indent=2) + "\n")
        if progress:
            print(
                f"{m.name}: fvu {log['final_train_fvu']:.3f} l0 {log['final_train_l0']:.1f} "
                f"dead {log['final_dead']} ({log['wall_s']:.1f} s)",
                flush=True,
            )
        logs.append(log)
    return logs


def evaluate_groundtruth(
    specs: list[str],
    out: Path | None = None,
    profile: str = "quick",
    overrides: dict[str, Any] | None = None,
    seed: int = 0,
    force: bool = False,
) -> dict[str, Any]:
    """Score SAEs trained on a synthetic source with the ``groundtruth`` evaluator; results go to
    ``out/<sae>/groundtruth.json`` in the project's result format (checksummed, atomic). Every SAE
    is loaded and checked (it must record a synthetic source) before any is scored: a real-model SAE
    is refused in one line. A complete result already in ``out`` for the same SAE, source and settings
    is reused (``force`` recomputes). The eval stream is fixed by the source's seed; ``seed`` is
    recorded only. Returns ``{sae name: Result}``."""
    from saebench.errors import SaebenchError
    from saebench.evaluators.base import EvalContext
    from saebench.evaluators.groundtruth import GroundTruthEvaluator
    from saebench.loading import load_sae
    from saebench.results import (
        complete_result,
        environment,
        result_path,
        run_key,
        write_result,
    )
    from saebench.runner import finish_metrics, make_result
    from saebench.synthetic import source_of

    ev = GroundTruthEvaluator()
    cfg = ev.Config.for_profile(profile, **(overrides or {}))
    loaded = [load_sae(s) for s in specs]
    sources = {}
    for ls in loaded:
        src = source_of(ls.sae)
        if src is None:
            raise SaebenchError(
                f"SAE {ls.name} was not trained on a synthetic source (no 'synthetic' record in its config); "
                "groundtruth scores only SAEs from `saebench synthetic-zoo`: evaluate it with `saebench run`"
            )
        sources[ls.name] = src.cfg.fingerprint()
    env = environment()
    results: dict[str, Any] = {}
    for ls in loaded:
        t0 = time.perf_counter()
        run_cfg = {
            "model": SYNTHETIC_MODEL,
            "hook": SYNTHETIC_HOOK,
            "profile": profile,
            "tokens": cfg.n_tokens,
            "seed": seed,
            "corpus": f"synthetic:{sources[ls.name]}",
            "synthetic_source": sources[ls.name],
            "evaluator_config": cfg.model_dump(),
        }
        key = run_key(ls.fingerprint, ev.name, run_cfg)
        path = result_path(Path(out), ls.name, ev.name) if out is not None else None
        done = complete_result(path, key) if path is not None and not force else None
        if done is not None:  # a rerun computes nothing it already has
            results[ls.name] = done
            continue
        ctx = EvalContext(None, ls.sae, ls.name, ls.fingerprint, seed, profile)  # type: ignore[arg-type]
        output = ev.run(ctx, cfg)
        metrics, uncertainty, t_iv = finish_metrics(ev, output)
        timing = {**output.timing, "intervals_s": t_iv, "total_s": time.perf_counter() - t0}
        result = make_result(ev, key, ls, run_cfg, output, metrics, uncertainty, ctx.notes + ls.notes, env, timing)
        if path is not None:
            write_result(result, path)
        results[ls.name] = result
    return results
