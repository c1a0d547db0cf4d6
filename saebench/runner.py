"""``saebench.evaluate``: load SAEs, compute shared inputs once, run evaluators, write results.

The runner asks every selected evaluator what it ``needs``, builds one
:class:`~saebench.pipeline.ActivationPipeline` per hook, computes each shared input once for all
pending SAEs at that hook (``states``, ``splice``, and each evaluator's own ``prepare``), timed
as shared work, and hands every evaluator a context for one SAE. Results already complete in
``out`` are skipped (unless ``force``) before the model is even loaded, so an interrupted run
resumes where it stopped.

Concurrent runs: every pending result is locked (``OUT/<sae>/.<evaluator>.json.lock``, taken in
sorted order, so runs never deadlock) before the model loads, and re-checked once locked: a second
identical run waits for the first (one line says so) and reuses its results. Each lock is released
as soon as its result is written. Temp files left by killed runs are removed at start.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from saebench import stats
from saebench.budget import (
    batch_working_set,
    device_used,
    parse_size,
    plan_groups,
    return_freed_memory,
    sae_bytes,
)
from saebench.data import check_corpus
from saebench.errors import SaebenchError
from saebench.evaluators import EvalConfig, EvalContext, EvalOutput, Evaluator, get_evaluator
from saebench.formats import apply_input_norm
from saebench.io import cache_dir, check_memory, file_lock, human_bytes, lock_path, log, remove_stale_temps, slug
from saebench.loading import LoadedSAE, as_loaded, distinct_names
from saebench.models import SubjectModel, check_hook_width, load_model, resolve_model_name
from saebench.pipeline import PassCounters
from saebench.profiles import PROFILES
from saebench.results import (
    Result,
    SAERecord,
    check_writable,
    complete_result,
    environment,
    now,
    result_path,
    results_of_other_saes,
    run_key,
    write_result,
)
from saebench.spec import RunSpec
from saebench.synthetic import synthetic_record
from saebench.transcoder import check_embedded, target_hook


@dataclass
class Job:
    """One (SAE, evaluator) computation: its request config, identity and output path."""

    sae: LoadedSAE
    evaluator: Evaluator
    cfg: EvalConfig
    run_config: dict[str, Any]
    key: str
    path: Path | None

    @property
    def hook(self) -> str:
        return str(self.run_config["hook"])


class _Released:
    """Stand-in for an SAE whose weights are freed between groups (keeps what checks read)."""

    def __init__(self, d_in: int, d_sae: int) -> None:
        self.d_in, self.d_sae = d_in, d_sae


@dataclass
class _Handle:
    """An SAE of the run: its weights can be freed between groups and reloaded from its spec
    (objects passed in without a spec stay loaded); a reload must give the same fingerprint."""

    ls: LoadedSAE
    spec: str | Path | None
    name: str | None
    device: str
    trust_pickle: bool

    def __post_init__(self) -> None:
        self.nbytes = sae_bytes(self.ls.sae)
        self.d_in, self.d_sae = int(self.ls.sae.d_in), int(self.ls.sae.d_sae)

    def release(self) -> None:
        if self.spec is not None:
            self.ls.sae = _Released(self.d_in, self.d_sae)

    def load(self) -> None:
        if not isinstance(self.ls.sae, _Released):
            return
        fresh = as_loaded(self.spec, self.device, self.trust_pickle, self.name)
        if fresh.fingerprint != self.ls.fingerprint:
            raise SaebenchError(
                f"SAE {self.ls.name} ({self.spec}) changed on disk during the run; rerun once its files are final"
            )
        self.ls.sae = fresh.sae


@dataclass
class RunPlan:
    """What :func:`plan_run` resolved: the jobs still to compute, the SAEs, sizes and configs."""

    run: RunResults
    pending: list[Job]
    handles: dict[str, _Handle]
    sizes: dict[str, int]
    cfgs: dict[str, EvalConfig]
    budget: int | None
    corpus: str
    model_name: str | None = None


@dataclass
class RunResults:
    """What ``evaluate`` returns: ``results[sae_name][evaluator]`` and where each was written."""

    results: dict[str, dict[str, Result]] = field(default_factory=dict)
    paths: dict[str, dict[str, Path]] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    counters: dict[str, PassCounters] = field(default_factory=dict)  # model calls per hook (what ran once)
    distributed: dict[str, Any] = field(default_factory=dict)  # --ray: workers, jobs, reruns, wall time
    groups: dict[str, list[int]] = field(default_factory=dict)  # SAEs per splice group, per hook (--max-memory)

    def _only(self) -> dict[str, Result]:
        if len(self.results) != 1:
            raise SaebenchError(f"this run holds {len(self.results)} SAEs; use run.results[SAE][EVALUATOR]")
        return next(iter(self.results.values()))

    @property
    def metrics(self) -> dict[str, dict[str, Any]]:
        """``{evaluator: metrics}`` of the run's one SAE (several SAEs: ``results[sae][evaluator]``)."""
        return {e: r.metrics for e, r in self._only().items()}

    @property
    def details(self) -> dict[str, dict[str, Any]]:
        """``{evaluator: details}`` of the run's one SAE."""
        return {e: r.details for e, r in self._only().items()}


def make_result(
    ev: Evaluator,
    key: str,
    ls: Any,
    config: dict[str, Any],
    output: EvalOutput,
    metrics: dict[str, Any],
    uncertainty: dict[str, dict[str, Any]],
    notes: list[str],
    env: dict[str, Any],
    timing: dict[str, float],
) -> Result:
    """The result of one evaluator on one loaded SAE (the runner's and the synthetic track's): the
    metrics and intervals of :func:`finish_metrics`, the output's details and samples, and the
    evaluator's declarations, so the board and the gate read any result the same way."""
    return Result(
        evaluator=ev.name,
        run_key=key,
        sae=SAERecord.of(ls),
        config=config,
        metrics=metrics,
        uncertainty=uncertainty,
        details=output.details,
        samples={k: v.to_dict() for k, v in output.samples.items()},
        declarations={m.name: m.to_dict() for m in getattr(ev, "metrics", ())},
        notes=notes,
        env=env,
        timing={k: round(v, 4) for k, v in timing.items()},
        created_at=now(),
    )


def finish_metrics(ev: Evaluator, output: EvalOutput) -> tuple[dict[str, Any], dict[str, dict[str, Any]], float]:
    """Metrics with every declared estimator's value filled in, their intervals, and the seconds spent.

    An estimator is the metric's definition: a value the evaluator reported itself must agree
    with it (to 1e-9 relative), otherwise the evaluator has a bug and the run stops.
    """
    t0 = time.perf_counter()
    metrics = dict(output.metrics)
    uncertainty = {k: (v.to_dict() if hasattr(v, "to_dict") else dict(v)) for k, v in output.uncertainty.items()}
    for m in getattr(ev, "metrics", ()):
        if m.estimator is None or m.estimator.unit not in output.samples:
            continue
        if m.optional and not stats.has_columns(m.estimator, output.samples):
            continue  # an optional metric this run was not asked for: absent, not null
        iv = stats.interval(m.estimator, output.samples)
        given = metrics.get(m.name, iv.value)
        if (given is None) != (iv.value is None) or (
            given is not None and abs(given - iv.value) > 1e-9 * max(1.0, abs(iv.value))
        ):
            raise SaebenchError(
                f"evaluator {ev.name!r}: metric {m.name} is {given} but its estimator over the samples gives "
                f"{iv.value}; report one definition"
            )
        metrics[m.name] = iv.value
        uncertainty[m.name] = iv.to_dict()
    return metrics, uncertainty, time.perf_counter() - t0


class ResultLocks:
    """Exclusive locks on result files for one run, each released as soon as its result is written
    (all of them on exit, error or interrupt)."""

    def __init__(self) -> None:
        self._held: dict[Path, contextlib.ExitStack] = {}

    def __enter__(self) -> ResultLocks:
        return self

    def __exit__(self, *exc: object) -> None:
        for stack in self._held.values():
            stack.close()
        self._held.clear()

    def take(self, path: Path) -> None:
        stack = contextlib.ExitStack()
        stack.enter_context(file_lock(lock_path(path), f"result {path}"))
        self._held[path] = stack

    def release(self, path: Path | None) -> None:
        stack = self._held.pop(path, None) if path is not None else None
        if stack is not None:
            stack.close()


def claim(pending: list[Job], locks: ResultLocks, run: RunResults, force: bool) -> list[Job]:
    """Lock every pending result (sorted by path: one global order, no deadlock between runs) and
    re-check it: a result another process completed while we waited is reused, not recomputed."""
    todo: set[int] = set()
    for i, job in sorted(enumerate(pending), key=lambda ij: str(Path(ij[1].path).resolve())):
        locks.take(job.path)
        done = None if force else complete_result(job.path, job.key, report=False)  # reported above
        if done is None:
            todo.add(i)
            continue
        locks.release(job.path)
        run.results.setdefault(job.sae.name, {})[job.evaluator.name] = done
        run.paths.setdefault(job.sae.name, {})[job.evaluator.name] = job.path
        run.skipped.append((job.sae.name, job.evaluator.name))
    return [job for i, job in enumerate(pending) if i in todo]


def check_batch_memory(jobs: list[Job], batch_size: int, ctx_len: int, device: str) -> None:
    """Refuse before the model loads when one batch of latents cannot fit in CPU memory: encoding
    holds at least the pre-activations and the latents, 2 x batch x ctx_len x d_sae float32
    values. (On an accelerator its own out-of-memory error is reported in one line instead.)"""
    if device != "cpu":
        return
    for ls in {job.sae.name: job.sae for job in jobs}.values():
        per_context = 2 * ctx_len * int(ls.sae.d_sae) * 4
        check_memory(
            batch_size * per_context,
            f"encoding one batch ({batch_size} x {ctx_len} tokens) with SAE {ls.name} (d_sae {ls.sae.d_sae})",
            f"lower --batch-size (each context needs {human_bytes(per_context)}) or --ctx-len",
        )


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
            f"{sizes['ctx_len']} = {sizes['batch_size'] * sizes['ctx_len']} tokens); raise --tokens or lower "
            "--batch-size"
        )
    return sizes


def shared_token_set(
    reuse: dict[Any, Any], subject: SubjectModel, sizes: dict[str, int], seed: int, corpus: str, token_set: Any = None
) -> Any:
    """The run's token set: ``token_set`` when given, else sampled from ``corpus`` once per model
    object and kept in ``reuse``."""
    if token_set is not None:
        return token_set
    from saebench.data import build_token_set

    key = ("tokens", id(subject), sizes["tokens"], sizes["ctx_len"], seed, corpus)
    if key not in reuse:
        reuse[key] = build_token_set(subject.tokenize, subject.bos_id, sizes["tokens"], sizes["ctx_len"], seed, corpus)
    return reuse[key]


def shared_pipeline(
    reuse: dict[Any, Any],
    subject: SubjectModel,
    token_set: Any,
    hook: str,
    batch_size: int,
    use_cache: bool,
    progress: bool,
) -> Any:
    """The :class:`~saebench.pipeline.ActivationPipeline` of (model, token set, hook), kept in ``reuse``."""
    from saebench.pipeline import ActivationPipeline

    key = ("pipeline", id(subject), hook, token_set.fingerprint(), batch_size, use_cache)
    if key not in reuse:
        reuse[key] = ActivationPipeline(subject, token_set, hook, batch_size, use_cache=use_cache, progress=progress)
    return reuse[key]


def splice_ablations(jobs: list[Job]) -> tuple[str, ...]:
    """The ablation baselines the splice loop computes for these jobs: ``zero_all`` plus whatever an
    evaluator's config asks for through an optional ``splice_ablations()`` (core's variants)."""
    asked = {"zero_all"}
    for job in jobs:
        if "splice" in job.evaluator.needs and hasattr(job.cfg, "splice_ablations"):
            asked.update(job.cfg.splice_ablations())
    return tuple(sorted(asked))


def prepare_hook(pipe: Any, evaluators: list[Evaluator], cfgs: dict[str, EvalConfig], seed: int) -> set[str]:
    """Every SAE-independent input of these evaluators at the pipeline's hook (states, ablation
    baselines, each evaluator's ``prepare``), computed once; returns the union of their needs."""
    needs: set[str] = set().union(*(ev.needs for ev in evaluators))
    if needs:
        pipe.states()
    for ev in {ev.name: ev for ev in evaluators}.values():
        if hasattr(ev, "prepare"):
            ev.prepare(pipe, cfgs[ev.name], seed)
    return needs


def plan_run(sae: Any, spec: RunSpec, release_weights: bool = False) -> RunPlan:
    """Resolve SAEs, evaluators and sizes into jobs, and find which are already complete in ``spec.out``.

    SAE weights are loaded once (for their fingerprints) and, under a memory budget or with
    ``release_weights``, freed again until their group runs. Everything a user can get wrong
    about place and model (a ``--hook`` other than the SAE's own, a hook outside the model, an
    SAE wider or narrower than its hook, a model that is not the embedded one, a result folder
    that holds another SAE under the same name) is refused here, in one line, before the model
    loads.
    """
    token_set = spec.token_set
    tokens, ctx_len, corpus = spec.tokens, spec.ctx_len, spec.corpus
    if token_set is not None:
        tokens, ctx_len, corpus = token_set.n_tokens, token_set.ctx_len, f"{token_set.corpus}@{token_set.fingerprint()}"
    sizes = resolve_sizes(spec.profile, tokens, ctx_len, spec.batch_size)
    if token_set is None:
        check_corpus(corpus)
    specs = list(sae) if isinstance(sae, (list, tuple)) else [sae]
    names = list(spec.name) if isinstance(spec.name, (list, tuple)) else [spec.name] * len(specs)
    if len(names) != len(specs):
        raise SaebenchError(f"got {len(names)} names for {len(specs)} SAEs; pass one --name per --sae")
    budget = parse_size(spec.max_memory) if spec.max_memory is not None else None
    release = budget is not None or release_weights
    loaded = [as_loaded(s, spec.device, spec.trust_pickle, n) for s, n in zip(specs, names, strict=True)]
    defaults = [i for i, n in enumerate(names) if n is None and not isinstance(specs[i], LoadedSAE)]
    renamed, notes = distinct_names([specs[i] for i in defaults], [loaded[i].name for i in defaults])
    for i, n in zip(defaults, renamed, strict=True):
        loaded[i].name = n
    for note in notes:
        log.info(note)
    handles: dict[str, _Handle] = {}
    for s, n, ls in zip(specs, names, loaded, strict=True):
        if ls.name in handles:
            raise SaebenchError(f"two SAEs are both named {ls.name!r}; give each a distinct --name")
        reload_name = n if n is not None else ls.name
        handles[ls.name] = _Handle(
            ls, s if isinstance(s, (str, Path)) else None, reload_name, spec.device, spec.trust_pickle
        )
        if release:
            handles[ls.name].release()  # reloaded when its group runs: never all SAEs in memory at once
    if release:
        return_freed_memory()
    evaluators = [get_evaluator(e) for e in spec.evals]
    cfgs = {ev.name: ev.Config.for_profile(spec.profile, **spec.eval_config.get(ev.name, {})) for ev in evaluators}

    model_name = spec.model.name if isinstance(spec.model, SubjectModel) else spec.model
    jobs: list[Job] = []
    for ls in loaded:
        if synthetic_record(ls.sae) is not None:  # no language model behind it (saebench.synthetic)
            raise SaebenchError(
                f"SAE {ls.name} was trained on a synthetic source, not on a language model; score it with "
                f"`saebench groundtruth --sae {ls.source}`"
            )
        m_name = model_name or resolve_model_name(ls.model_name, ls.name)
        h = check_place(ls, spec.hook, spec.force_hook)
        if ls.model_name and ls.model_name != m_name:
            ls.notes.append(f"SAE was trained on {ls.model_name!r}, evaluated on {m_name!r}")
        if not isinstance(spec.model, SubjectModel):
            check_hook_width(m_name, h, int(ls.sae.d_in), ls.name)
            check_embedded(m_name, h, ls.sae, ls.name)
        # a transcoder's output hook (docs/transcoders.md): in its results' config, so the board ranks it
        # apart from SAEs; absent for an SAE, whose config (and run key) stay what they were
        h_out = target_hook(ls.sae, h)
        for ev in evaluators:
            refusal = getattr(ev, "transcoder_refusal", None)  # optional: an evaluator that needs hook_out == hook
            if refusal and h_out != h:
                raise SaebenchError(
                    f"{ev.name} cannot evaluate {ls.name}: it is a transcoder ({h} -> {h_out}) and {refusal}; "
                    f"drop {ev.name} from --evals for it (docs/transcoders.md)"
                )
            if hasattr(ev, "check_hook"):  # optional: refuse a hook the evaluator cannot use, before the model loads
                ev.check_hook(h, ls.name)
            run_cfg = {
                "model": m_name,
                "hook": h,
                **({"hook_out": h_out} if h_out != h else {}),
                "profile": spec.profile,
                **sizes,
                "seed": spec.seed,
                "corpus": corpus,
                "dtype": spec.dtype,
                "device": spec.device,
                "evaluator_config": cfgs[ev.name].model_dump(),
            }
            path = result_path(Path(spec.out), ls.name, ev.name) if spec.out is not None else None
            jobs.append(Job(ls, ev, cfgs[ev.name], run_cfg, run_key(ls.fingerprint, ev.name, run_cfg), path))

    by_path: dict[Path, Job] = {}
    for job in jobs:
        other = by_path.setdefault(job.path, job) if job.path is not None else job
        if other is not job:
            raise SaebenchError(
                f"SAEs {other.sae.name!r} and {job.sae.name!r} would both write {job.path} (names become safe "
                "folder names); give each a distinct --name"
            )

    run = RunResults()
    if spec.out is not None:
        out = Path(spec.out)
        check_writable(out)
        remove_stale_temps(out, depth=1)  # temp files of runs killed mid-write
        for ls in loaded:
            check_same_sae(out, ls, spec.force, [ev.name for ev in evaluators])
    if spec.use_cache:
        remove_stale_temps(cache_dir(), depth=2)
    pending = []
    for job in jobs:
        done = complete_result(job.path, job.key) if (job.path is not None and not spec.force) else None
        if done is not None:
            run.results.setdefault(job.sae.name, {})[job.evaluator.name] = done
            run.paths.setdefault(job.sae.name, {})[job.evaluator.name] = job.path
            run.skipped.append((job.sae.name, job.evaluator.name))
        else:
            pending.append(job)
    plan = RunPlan(run, pending, handles, sizes, cfgs, budget, corpus)
    if not pending:
        return plan
    for ev in {job.evaluator.name: job.evaluator for job in pending}.values():
        if hasattr(ev, "preflight"):  # optional: refuse bad settings (e.g. an unreachable LLM) before any work
            ev.preflight(cfgs[ev.name])

    check_batch_memory(pending, sizes["batch_size"], sizes["ctx_len"], spec.device)
    model_names = {job.run_config["model"] for job in pending}
    if len(model_names) > 1:
        raise SaebenchError(
            f"SAEs name different models ({', '.join(sorted(model_names))}); evaluate them in separate runs or pass "
            "--model"
        )
    plan.model_name = model_names.pop()
    return plan


def check_place(ls: LoadedSAE, hook: str | None, force_hook: bool) -> str:
    """The hook to evaluate ``ls`` at: ``hook`` when given, else the SAE's own. An explicit hook that
    differs from the one the SAE names is refused unless ``force_hook`` (then it is noted)."""
    if hook is None:
        if not ls.hook_name:
            raise SaebenchError(f"SAE {ls.name} names no hook_name; pass --hook (e.g. blocks.6.hook_resid_post)")
        return ls.hook_name
    if ls.hook_name and hook != ls.hook_name:
        if not force_hook:
            raise SaebenchError(
                f"SAE {ls.name} was trained at {ls.hook_name} (its config) but --hook asks for {hook}; drop --hook, "
                "or add --force-hook to evaluate it there anyway"
            )
        ls.notes.append(f"evaluated at {hook}, not at {ls.hook_name} where it was trained (--force-hook)")
    return hook


def check_same_sae(out: Path, ls: LoadedSAE, force: bool, evals: list[str]) -> None:
    """Refuse to write ``ls``'s results into a folder that holds results of another SAE (a different
    fingerprint) under the same name: that would replace its numbers, or merge two SAEs into one
    board row. ``force`` replaces the results this run recomputes (``evals``) and names the other
    SAE's results it leaves there (the board flags that row until they are removed or redone)."""
    others = results_of_other_saes(out / slug(ls.name), ls.fingerprint)
    if not others:
        return
    first = others[0]
    what = f"results of another SAE named {ls.name!r} ({first.sae.source}, fingerprint {first.sae.fingerprint})"
    if not force:
        raise SaebenchError(
            f"{out / slug(ls.name)} holds {what}; this SAE ({ls.source}) has fingerprint {ls.fingerprint}: pass "
            "--name to keep both, or --force to replace them"
        )
    left = sorted(r.evaluator for r in others if r.evaluator not in evals)
    log.warning(
        f"replacing {what} in {out / slug(ls.name)} (--force)"
        + (f"; its {', '.join(left)} result(s) stay there until recomputed or removed" if left else "")
    )


def evaluate(sae: Any, spec: RunSpec | None = None, reuse: dict[Any, Any] | None = None, **options: Any) -> RunResults:
    """Evaluate one SAE (or a list) and return its metrics; write JSON results when ``out`` is set.

    ``sae`` is a spec (native folder, ``reference``, ``.pt``, ``python:FILE.py:FACTORY``,
    ``MODULE:FACTORY``), an object following the SAE protocol (a SAELens or sparsify SAE object
    is read through its own config), or a list of them. The run's options are a
    :class:`~saebench.spec.RunSpec` (``spec``) and/or its fields as keywords (``hook=``,
    ``evals=``, ``tokens=``, ``out=``...; see :class:`~saebench.spec.RunSpec` for each and its
    default). ``model`` defaults to the SAE's ``model_name`` or the embedded SmolLM2-135M-Instruct;
    ``hook`` to the SAE's ``hook_name``. ``token_set`` (a :class:`saebench.data.TokenSet`)
    evaluates on exactly those token ids instead of sampling ``corpus``.

    ``max_memory`` (bytes or a size like ``"8GB"``) bounds the run's peak memory: SAEs are loaded
    and spliced in groups that fit (see :mod:`saebench.budget`), their weights freed in between;
    results are identical to evaluating each SAE alone. ``reuse`` (a dict the caller keeps) keeps
    the sampled token set and each hook's :class:`~saebench.pipeline.ActivationPipeline` across
    calls with the same model object (a long-lived worker serving many SAE groups).
    """
    t_start = time.perf_counter()
    spec = RunSpec.build(spec, **options)
    p = plan_run(sae, spec)
    run, pending, handles, sizes, cfgs, budget = p.run, p.pending, p.handles, p.sizes, p.cfgs, p.budget
    if not pending:
        return run
    with ResultLocks() as locks:
        if spec.out is not None:
            pending = claim(pending, locks, run, spec.force)
            if not pending:
                return run
        reuse = {} if reuse is None else reuse
        t0 = time.perf_counter()
        model = spec.model
        subject = (
            model if isinstance(model, SubjectModel) else load_model(p.model_name, device=spec.device, dtype=spec.dtype)
        )
        t_model = time.perf_counter() - t0
        env = environment()

        from saebench.pipeline.splice import splice_stats

        t0 = time.perf_counter()
        token_set = shared_token_set(reuse, subject, sizes, spec.seed, spec.corpus, spec.token_set)
        t_tok = time.perf_counter() - t0

        bar = tqdm(total=len({job.sae.name for job in pending}), desc="SAEs", unit="SAE", disable=not spec.progress)
        for h in sorted({job.hook for job in pending}):
            hook_jobs = [job for job in pending if job.hook == h]
            pipe = shared_pipeline(reuse, subject, token_set, h, sizes["batch_size"], spec.use_cache, spec.progress)
            run.counters[h] = pipe.counters
            for job in hook_jobs:
                pipe.check_sae(job.sae.sae, job.sae.name)
            # shared inputs: computed once for every pending SAE at this hook
            bar.set_postfix_str(f"{h}: shared inputs", refresh=True)
            t0 = time.perf_counter()
            needs = prepare_hook(pipe, [job.evaluator for job in hook_jobs], cfgs, spec.seed)
            t_prepare = time.perf_counter() - t0
            sae_names = list(dict.fromkeys(job.sae.name for job in hook_jobs))
            plan = plan_groups(
                sae_names,
                {n: handles[n].nbytes for n in sae_names},
                {n: handles[n].d_sae for n in sae_names},
                budget,
                device_used(spec.device) if budget is not None else 0,
                batch_working_set(
                    subject,
                    sizes["batch_size"],
                    token_set.ctx_len,
                    pipe.hook_width(),
                    max(handles[n].d_sae for n in sae_names),
                )
                if budget is not None
                else 0,
                int(token_set.tokens.shape[0]),
                token_set.ctx_len,
            )
            run.groups[h] = [len(g) for g in plan.groups]
            for names_in_group in plan.groups:
                members = set(names_in_group)
                group = [job for job in hook_jobs if job.sae.name in members]
                for n in names_in_group:
                    handles[n].load()
                    # a transcoder trained after a norm's learned scale (input_norm_affine): fold it in from the model
                    handles[n].ls.sae = apply_input_norm(handles[n].ls.sae, subject)
                t0 = time.perf_counter()
                splice = {}
                if "splice" in needs:
                    bar.set_postfix_str(f"{h}: spliced passes", refresh=True)
                    splice = splice_stats(
                        pipe,
                        {job.sae.name: job.sae.sae for job in group if "splice" in job.evaluator.needs},
                        splice_ablations(group),
                    )
                t_shared = t_prepare + time.perf_counter() - t0
                shared_timing = dict(pipe.timing)
                for job in group:
                    ls, ev = job.sae, job.evaluator
                    ctx = EvalContext(
                        pipe,
                        ls.sae,
                        ls.name,
                        ls.fingerprint,
                        spec.seed,
                        spec.profile,
                        splice.get(ls.name),
                        list(ls.notes),
                    )
                    bar.set_postfix_str(f"{ls.name}: {ev.name}", refresh=True)
                    t0 = time.perf_counter()
                    output = ev.run(ctx, job.cfg)
                    if not isinstance(output, EvalOutput):
                        raise SaebenchError(
                            f"evaluator {ev.name!r} returned a {type(output).__name__}, not an EvalOutput; "
                            "see saebench.evaluators.base"
                        )
                    metrics, uncertainty, t_stats = finish_metrics(ev, output)
                    timing = {
                        "model_load_s": t_model,
                        "tokenize_s": t_tok,
                        "shared_inputs_s": t_shared,
                        **shared_timing,
                        **output.timing,
                        "intervals_s": t_stats,
                        "evaluator_s": time.perf_counter() - t0,
                        "total_s": time.perf_counter() - t_start,
                    }
                    config = {**job.run_config, **token_set.meta(), "bos_excluded": True}
                    result = make_result(ev, job.key, ls, config, output, metrics, uncertainty, ctx.notes, env, timing)
                    run.results.setdefault(ls.name, {})[ev.name] = result
                    if job.path is not None:
                        write_result(result, job.path)
                        locks.release(job.path)
                        run.paths.setdefault(ls.name, {})[ev.name] = job.path
                del splice
                if budget is not None:
                    for n in names_in_group:
                        handles[n].release()
                    return_freed_memory()
                bar.update(len(names_in_group))
        bar.close()
        return run
