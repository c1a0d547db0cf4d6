"""``saebench.evaluate``: load SAEs, compute shared inputs once, run evaluators, write results.

The runner asks every selected evaluator what it ``needs``, builds one
:class:`~saebench.pipeline.ActivationPipeline` per hook, computes each shared input once for all
pending SAEs at that hook, and hands the same context to every evaluator. Results already
complete in ``out`` are skipped (unless ``force``) before the model is even loaded, so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saebench.errors import SaebenchError
from saebench.evaluators import EvalContext, get_evaluator
from saebench.models import EMBEDDED_MODEL, SubjectModel, load_model
from saebench.results import (
    Result,
    SAERecord,
    check_writable,
    complete_result,
    environment,
    now,
    result_path,
    run_key,
    write_result,
)
from saebench.sae import LoadedSAE, _wrap_user, load_sae

PROFILES: dict[str, dict[str, int]] = {
    # CPU, minutes: CI and first contact.
    "quick": {"tokens": 8192, "ctx_len": 128, "batch_size": 8},
    # a few minutes per SAE on a GPU, ~an hour on 2 CPU cores.
    "standard": {"tokens": 131072, "ctx_len": 128, "batch_size": 16},
    # SAEBench's reconstruction sample (200 batches x 16 prompts x 128 tokens), for a GPU.
    "paper": {"tokens": 409600, "ctx_len": 128, "batch_size": 32},
}


@dataclass
class RunResults:
    """What ``evaluate`` returns: ``results[sae_name][evaluator]`` and where each was written."""

    results: dict[str, dict[str, Result]] = field(default_factory=dict)
    paths: dict[str, dict[str, Path]] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def metrics(self) -> dict[str, Any]:
        """Plain metric dicts: ``{evaluator: metrics}`` for one SAE, else ``{sae: {evaluator: metrics}}``."""
        table = {s: {e: r.metrics for e, r in per.items()} for s, per in self.results.items()}
        return next(iter(table.values())) if len(table) == 1 else table


def resolve_sizes(profile: str, tokens: int | None, ctx_len: int | None, batch_size: int | None) -> dict[str, int]:
    if profile not in PROFILES:
        raise SaebenchError(f"unknown profile {profile!r}; use one of {', '.join(PROFILES)}")
    sizes = dict(PROFILES[profile])
    for key, val in (("tokens", tokens), ("ctx_len", ctx_len), ("batch_size", batch_size)):
        if val is not None:
            if val < 1:
                raise SaebenchError(f"--{key.replace('_', '-')} must be positive, got {val}")
            sizes[key] = val
    if sizes["tokens"] < sizes["batch_size"] * sizes["ctx_len"]:
        raise SaebenchError(
            f"--tokens {sizes['tokens']} is smaller than one batch ({sizes['batch_size']} x "
            f"{sizes['ctx_len']} = {sizes['batch_size'] * sizes['ctx_len']} tokens); raise --tokens or lower --batch-size"
        )
    return sizes


def _as_loaded(sae: Any, device: str, trust_pickle: bool, name: str | None) -> LoadedSAE:
    if isinstance(sae, LoadedSAE):
        return sae
    if isinstance(sae, (str, Path)):
        return load_sae(str(sae), device=device, trust_pickle=trust_pickle, name=name)
    label = name or getattr(sae, "name", None) or type(sae).__name__
    return _wrap_user(sae, f"object:{type(sae).__name__}", str(label), device)


def evaluate(
    sae: Any,
    model: str | SubjectModel | None = None,
    hook: str | None = None,
    evals: list[str] | tuple[str, ...] = ("core",),
    profile: str = "quick",
    tokens: int | None = None,
    ctx_len: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    corpus: str = "sae-probes",
    out: str | Path | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    force: bool = False,
    progress: bool = True,
    eval_config: dict[str, dict[str, Any]] | None = None,
    name: str | list[str] | None = None,
    trust_pickle: bool = False,
    use_cache: bool = True,
    token_set: Any = None,
) -> RunResults:
    """Evaluate one SAE (or a list) and return its metrics; write JSON results when ``out`` is set.

    ``sae`` is a spec (native folder, ``reference``, ``.pt``, ``python:FILE.py:FACTORY``,
    ``MODULE:FACTORY``), an object following the SAE protocol, or a list of them. ``model``
    defaults to the SAE's ``model_name`` or the embedded SmolLM2-135M; ``hook`` to the SAE's
    ``hook_name``. Sizes come from ``profile`` unless given. ``token_set`` (a
    :class:`saebench.data.TokenSet`) evaluates on exactly those token ids instead of sampling
    ``corpus``; its size then overrides ``tokens``/``ctx_len``.
    """
    t_start = time.perf_counter()
    if token_set is not None:
        tokens, ctx_len, corpus = token_set.n_tokens, token_set.ctx_len, f"{token_set.corpus}@{token_set.fingerprint()}"
    sizes = resolve_sizes(profile, tokens, ctx_len, batch_size)
    specs = list(sae) if isinstance(sae, (list, tuple)) else [sae]
    names = list(name) if isinstance(name, (list, tuple)) else [name] * len(specs)
    if len(names) != len(specs):
        raise SaebenchError(f"got {len(names)} names for {len(specs)} SAEs; pass one --name per --sae")
    loaded = [_as_loaded(s, device, trust_pickle, n) for s, n in zip(specs, names, strict=True)]
    seen: set[str] = set()
    for ls in loaded:
        if ls.name in seen:
            raise SaebenchError(f"two SAEs are both named {ls.name!r}; give each a distinct --name")
        seen.add(ls.name)
    evaluators = [get_evaluator(e) for e in evals]
    eval_config = eval_config or {}
    cfgs = {ev.name: ev.Config.for_profile(profile, **eval_config.get(ev.name, {})) for ev in evaluators}

    model_name = model.name if isinstance(model, SubjectModel) else model
    jobs = []  # (loaded sae, evaluator, run config, key, path)
    for ls in loaded:
        m_name = model_name or ls.model_name or EMBEDDED_MODEL
        h = hook or ls.hook_name
        if not h:
            raise SaebenchError(f"SAE {ls.name} names no hook_name; pass --hook (e.g. blocks.6.hook_resid_post)")
        if ls.model_name and ls.model_name != m_name:
            ls.notes.append(f"SAE was trained on {ls.model_name!r}, evaluated on {m_name!r}")
        for ev in evaluators:
            run_cfg = {"model": m_name, "hook": h, "profile": profile, **sizes, "seed": seed,
                       "corpus": corpus, "dtype": dtype, "device": device,
                       "evaluator_config": cfgs[ev.name].model_dump()}
            key = run_key(ls.fingerprint, ev.name, run_cfg)
            path = result_path(Path(out), ls.name, ev.name) if out is not None else None
            jobs.append((ls, ev, run_cfg, key, path))

    run = RunResults()
    if out is not None:
        check_writable(Path(out))
    pending = []
    for job in jobs:
        ls, ev, _, key, path = job
        done = complete_result(path, key) if (path is not None and not force) else None
        if done is not None:
            run.results.setdefault(ls.name, {})[ev.name] = done
            run.paths.setdefault(ls.name, {})[ev.name] = path
            run.skipped.append((ls.name, ev.name))
        else:
            pending.append(job)
    if not pending:
        return run
    for ev in {job[1].name: job[1] for job in pending}.values():
        if hasattr(ev, "preflight"):  # optional: refuse bad settings (e.g. an unreachable LLM) before any work
            ev.preflight(cfgs[ev.name])

    model_names = {job[2]["model"] for job in pending}
    if len(model_names) > 1:
        raise SaebenchError(f"SAEs name different models ({', '.join(sorted(model_names))}); evaluate them in separate runs or pass --model")
    t0 = time.perf_counter()
    subject = model if isinstance(model, SubjectModel) else load_model(model_names.pop(), device=device, dtype=dtype)
    t_model = time.perf_counter() - t0
    env = environment()

    from saebench.data import build_token_set
    from saebench.pipeline import ActivationPipeline

    t0 = time.perf_counter()
    if token_set is None:
        token_set = build_token_set(subject.tokenize, subject.bos_id, sizes["tokens"], sizes["ctx_len"], seed, corpus)
    t_tok = time.perf_counter() - t0

    for h in sorted({job[2]["hook"] for job in pending}):
        group = [job for job in pending if job[2]["hook"] == h]
        pipe = ActivationPipeline(subject, token_set, h, sizes["batch_size"], use_cache=use_cache, progress=progress)
        for ls, *_ in group:
            pipe.check_sae(ls.sae, ls.name)
        splice = {}
        t0 = time.perf_counter()
        need_splice = {job[0].name: job[0].sae for job in group if "splice" in job[1].needs}
        if need_splice:
            splice = pipe.splice_stats(need_splice)
        t_shared = time.perf_counter() - t0
        for ls, ev, run_cfg, key, path in group:
            ctx = EvalContext(subject, token_set, h, ls.sae, pipe, run_cfg, splice.get(ls.name), list(ls.notes))
            t0 = time.perf_counter()
            metrics = ev.run(ctx, cfgs[ev.name])
            ev_timing = metrics.pop("_timing", {})
            timing = {"model_load_s": t_model, "tokenize_s": t_tok, "shared_inputs_s": t_shared,
                      **(splice[ls.name].timing if ls.name in splice else {}), **ev_timing,
                      "evaluator_s": time.perf_counter() - t0, "total_s": time.perf_counter() - t_start}
            result = Result(
                evaluator=ev.name, run_key=key,
                sae=SAERecord(name=ls.name, source=ls.source, architecture=ls.architecture,
                              d_in=int(ls.sae.d_in), d_sae=int(ls.sae.d_sae), fingerprint=ls.fingerprint),
                config={**run_cfg, **token_set.meta(), "bos_excluded": True},
                metrics=metrics, notes=ctx.notes, env=env,
                timing={k: round(v, 4) for k, v in timing.items()}, created_at=now(),
            )
            run.results.setdefault(ls.name, {})[ev.name] = result
            if path is not None:
                write_result(result, path)
                run.paths.setdefault(ls.name, {})[ev.name] = path
    return run
