"""``saebench run --ray [ADDRESS]``: one sweep spread over a Ray cluster (optional: ``saebench[ray]``).

Layout. One long-lived actor per device (a GPU, or ``--threads`` CPU cores) loads the subject
model once and serves jobs; a job is ``(hook, SAE group)`` and runs :func:`saebench.evaluate`
on that group inside the actor, against the actor's model, token set and pipelines (kept in its
``reuse`` dict, so a second group at the same hook starts from the cached prefix states). The
driver plans (loads each SAE once for its fingerprint, skips results already complete in
``--out``), queues the jobs, and reads the results back from ``--out`` at the end. Before a
hook's SAE groups are dispatched, one actor *prepares* the hook (prefix states, ablation
baselines, evaluators' shared inputs) so that the other actors read them from the cache instead
of computing them again at the same time.

Results. Each actor writes its results itself, atomically (temp file + rename), into ``--out``;
nothing passes through the driver. ``--out`` (and, to share the prefix states, the activation
cache ``$SAEBENCH_CACHE``) must be on a filesystem every node sees (checked when the actors
start: a node that cannot see a marker the driver wrote is a one-line error). Why not ship
results back to the driver: a result is only ever written by the process that computed it,
with the same atomic write and the same completeness check (run key) as a single-process run,
so a rerun, a second driver, or a plain ``saebench run`` all agree on what is done; a driver
that dies loses nothing the workers finished.

Faults. Actors restart without limit (``max_restarts=-1``); Ray does not retry tasks itself
(``max_task_retries=0``): when an actor dies mid-job (killed, out of memory, node lost) the
driver queues that job again (up to ``max_attempts`` times) and the restarted or another actor
runs it. The rerun skips every result of the group that was complete before the death (same
check as a resumed run), so nothing is written twice, and what was not complete is computed
again, so nothing is lost. Any other error in a job stops the sweep with the actor's one-line
message.

Results are identical to the single-process run: every SAE's numbers are computed from the
same token set and batches whatever group or actor it lands in (tests/test_ray.py).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from saebench.errors import SaebenchError
from saebench.results import complete_result
from saebench.spec import RunSpec

INSTALL_RAY = "pip install 'saebench[ray]'"


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise SaebenchError(f"--ray needs the ray package; install it with `{INSTALL_RAY}`") from exc
    return ray


@dataclass
class Unit:
    """One job: ``kind`` "prepare" (a hook's shared inputs) or "group" (SAEs ``saes`` at ``hook``)."""

    kind: str
    hook: str
    saes: list[tuple[Any, str]] = field(default_factory=list)  # (spec or SAE object, name)
    attempts: int = 0


class Worker:
    """A Ray actor (created through ``ray.remote``) that holds the model and serves jobs."""

    def __init__(self, model: Any, threads: int, spec: RunSpec) -> None:
        import torch

        torch.set_num_threads(threads)
        from saebench.models import SubjectModel, load_model

        self.subject = (
            model if isinstance(model, SubjectModel) else load_model(model, device=spec.device, dtype=spec.dtype)
        )
        self.spec = spec
        self.reuse: dict[Any, Any] = {}
        self._reported: dict[str, dict[str, int]] = {}  # counters already sent, per hook

    def _delta(self, hook: str, counters: Any) -> dict[str, int]:
        """Model calls since the last report at ``hook`` (pipelines, and their counters, live on)."""
        now = asdict(counters)
        last = self._reported.get(hook, {})
        self._reported[hook] = now
        return {k: v - last.get(k, 0) for k, v in now.items()}

    def info(self, marker: str) -> dict[str, Any]:
        """Host, pid, and whether the driver's marker file in ``--out`` is visible from here."""
        return {"host": socket.gethostname(), "pid": os.getpid(), "sees_out": Path(marker).is_file()}

    def prepare(self, hook: str) -> dict[str, Any]:
        from saebench.evaluators import get_evaluator
        from saebench.runner import prepare_hook, resolve_sizes, shared_pipeline, shared_token_set

        sp = self.spec
        ts = sp.token_set
        sizes = (
            resolve_sizes(sp.profile, ts.n_tokens, ts.ctx_len, sp.batch_size)
            if ts is not None
            else resolve_sizes(sp.profile, sp.tokens, sp.ctx_len, sp.batch_size)
        )
        tokens = shared_token_set(self.reuse, self.subject, sizes, sp.seed, sp.corpus, ts)
        pipe = shared_pipeline(self.reuse, self.subject, tokens, hook, sizes["batch_size"], sp.use_cache, False)
        evaluators = [get_evaluator(e) for e in sp.evals]
        cfgs = {ev.name: ev.Config.for_profile(sp.profile, **sp.eval_config.get(ev.name, {})) for ev in evaluators}
        prepare_hook(pipe, evaluators, cfgs, sp.seed)
        return {"hook": hook, "counters": self._delta(hook, pipe.counters), "pid": os.getpid()}

    def run_group(self, hook: str, saes: list[tuple[Any, str]], force: bool) -> dict[str, Any]:
        from saebench.runner import evaluate

        t0 = time.perf_counter()
        run = evaluate(
            [s for s, _ in saes],
            self.spec.replace(
                name=[n for _, n in saes], model=self.subject, hook=hook, force=force, force_hook=True, progress=False
            ),
            reuse=self.reuse,
        )
        return {
            "hook": hook,
            "counters": {h: self._delta(h, c) for h, c in run.counters.items()},
            "written": sorted(f"{s}/{e}" for s, per in run.results.items() for e in per if (s, e) not in run.skipped),
            "skipped": sorted(f"{s}/{e}" for s, e in run.skipped),
            "pid": os.getpid(),
            "compute_s": time.perf_counter() - t0,
        }


def _cluster_default_workers(ray: Any, device: str, threads: int) -> int:
    res = ray.cluster_resources()
    if str(device).startswith("cuda"):
        n = int(res.get("GPU", 0))
        if n < 1:
            raise SaebenchError("--device cuda with --ray but the cluster has no GPUs; start Ray on GPU nodes")
        return n
    return max(1, int(res.get("CPU", 1)) // max(1, threads))


def evaluate_ray(
    sae: Any,
    spec: RunSpec | None = None,
    address: str | None = None,
    workers: int | None = None,
    threads: int = 1,
    max_attempts: int = 3,
    **options: Any,
) -> Any:
    """Evaluate ``sae`` (spec(s) or objects) on a Ray cluster and return a :class:`RunResults`.

    ``address``: a running cluster (``ray://HOST:10001``, ``HOST:6379`` or ``auto``); None starts
    a local one. ``workers``: actors to start (default: one per GPU with ``device="cuda"``, else
    the cluster's CPUs / ``threads``). The run's options are :func:`saebench.evaluate`'s (a
    :class:`~saebench.spec.RunSpec` and/or its fields as keywords); ``out`` defaults to
    ``saebench-results`` here, because workers write their results there.
    """
    from saebench.runner import plan_run

    spec = RunSpec.build(spec, **{"out": "saebench-results", **options})
    ray = _ray()
    if spec.out is None:
        raise SaebenchError("--ray writes results into --out; pass a folder on a filesystem all nodes share")
    out = Path(spec.out)
    t_start = time.perf_counter()
    plan = plan_run(sae, spec, release_weights=True)
    run = plan.run
    if not plan.pending:
        return run
    t_planned = time.perf_counter()
    started = not ray.is_initialized()
    if started:
        ray.init(
            address=address,
            include_dashboard=False,
            ignore_reinit_error=True,
            log_to_driver=False,
            logging_level="ERROR",
        )
    try:
        n_workers = workers or _cluster_default_workers(ray, spec.device, threads)
        units = _plan_units(plan, n_workers)
        model = spec.model
        model_arg = ray.put(model) if model is not None and not isinstance(model, str) else plan.model_name
        # each worker evaluates exactly the planned jobs: the hook is fixed per job and was checked here
        worker_spec = spec.replace(model=None, out=str(out), progress=False)
        env = {k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        env["TOKENIZERS_PARALLELISM"] = "false"
        for var in ("SAEBENCH_CACHE",):
            if os.environ.get(var):
                env[var] = os.environ[var]
        actor_cls = ray.remote(Worker).options(
            num_cpus=threads,
            num_gpus=1 if str(spec.device).startswith("cuda") else 0,
            max_restarts=-1,
            max_task_retries=0,
            runtime_env={"env_vars": env},
        )
        actors = [actor_cls.remote(model_arg, threads, worker_spec) for _ in range(n_workers)]
        _check_shared_out(ray, actors, out)  # waits for every actor to be up (model loaded)
        t_ready = time.perf_counter()
        stats = _schedule(
            ray, actors, units, spec.force, max_attempts, spec.progress, len({j.sae.name for j in plan.pending})
        )
    finally:
        if started:
            ray.shutdown()
    missing = []
    for job in plan.pending:
        done = complete_result(job.path, job.key)
        if done is None:
            missing.append(f"{job.sae.name}/{job.evaluator.name}")
            continue
        run.results.setdefault(job.sae.name, {})[job.evaluator.name] = done
        run.paths.setdefault(job.sae.name, {})[job.evaluator.name] = job.path
    if missing:
        raise SaebenchError(
            f"the Ray sweep finished without {len(missing)} result(s) ({', '.join(missing[:3])}...); rerun it"
        )
    run.counters = stats["counters"]
    run.distributed = {
        **{k: v for k, v in stats.items() if k != "counters"},
        "plan_s": t_planned - t_start,  # SAEs read and fingerprinted, results already complete skipped
        "startup_s": t_ready - t_planned,  # cluster started (if local), actors up with the model loaded
        "jobs_s": stats["jobs_s"],
        "wall_s": time.perf_counter() - t_start,
    }
    return run


def _plan_units(plan: Any, n_workers: int) -> list[Unit]:
    """Per hook: a prepare job when the hook has more than one group, then its SAEs in
    ``n_workers`` groups of near-equal size (fewer, larger groups share more clean passes)."""
    units: list[Unit] = []
    for h in sorted({job.hook for job in plan.pending}):
        names = list(dict.fromkeys(job.sae.name for job in plan.pending if job.hook == h))
        k = min(n_workers, len(names))
        size = -(-len(names) // k)
        chunks = [names[i : i + size] for i in range(0, len(names), size)]
        if len(chunks) > 1:
            units.append(Unit("prepare", h))
        for chunk in chunks:
            saes = []
            for n in chunk:
                hd = plan.handles[n]
                saes.append((str(hd.spec) if hd.spec is not None else hd.ls.sae, n))
            units.append(Unit("group", h, saes))
    return units


def _check_shared_out(ray: Any, actors: list[Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    marker = out / f".saebench-ray-{uuid.uuid4().hex[:12]}"
    marker.write_text("saebench --ray: visible from every worker?\n")
    try:
        infos = ray.get([a.info.remote(str(marker.resolve())) for a in actors])
    except ray.exceptions.RayError as exc:
        raise SaebenchError(
            f"a Ray worker failed to start ({_one_line(exc)}); check the model and the cluster"
        ) from exc
    finally:
        marker.unlink(missing_ok=True)
    blind = sorted({i["host"] for i in infos if not i["sees_out"]})
    if blind:
        raise SaebenchError(
            f"--out {out} is not visible from Ray node(s) {', '.join(blind)}; put --out on a filesystem every node "
            "mounts at the same path (see docs/sweeps.md)"
        )


def _one_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, SaebenchError):
        return str(cause)
    text = str(cause or exc).strip().splitlines()
    return text[-1][:300] if text else type(exc).__name__


def _schedule(
    ray: Any, actors: list[Any], units: list[Unit], force: bool, max_attempts: int, progress: bool, n_saes: int
) -> dict[str, Any]:
    """Run ``units`` on ``actors``: prepare jobs first, a hook's groups once it is prepared (or
    when it needs no preparing), a job whose actor died queued again."""
    need_prepare = {u.hook for u in units if u.kind == "prepare"}
    prepared: set[str] = set()
    queue = deque(units)
    idle = list(range(len(actors)))
    inflight: dict[Any, tuple[int, Unit]] = {}
    counters: dict[str, dict[str, int]] = {}
    reruns: list[str] = []
    compute_s = 0.0  # seconds the actors spent inside evaluate(), summed over jobs
    bar = tqdm(total=n_saes, desc="SAEs", unit="SAE", disable=not progress)
    t0 = time.perf_counter()

    def ready(u: Unit) -> bool:
        return u.kind == "prepare" or u.hook not in need_prepare or u.hook in prepared

    try:
        while queue or inflight:
            while idle and any(ready(u) for u in queue):
                u = next(u for u in queue if ready(u))
                queue.remove(u)
                w = idle.pop(0)
                u.attempts += 1
                a = actors[w]
                ref = a.prepare.remote(u.hook) if u.kind == "prepare" else a.run_group.remote(u.hook, u.saes, force)
                inflight[ref] = (w, u)
            done, _ = ray.wait(list(inflight), num_returns=1)
            for ref in done:
                w, u = inflight.pop(ref)
                idle.append(w)
                try:
                    res = ray.get(ref)
                except ray.exceptions.RayActorError as exc:
                    if u.attempts >= max_attempts:
                        raise SaebenchError(
                            f"a Ray worker died {u.attempts} times running {u.kind} job at {u.hook} "
                            f"({_one_line(exc)}); out of memory? try --max-memory or fewer --ray-workers"
                        ) from exc
                    reruns.append(f"{u.kind}:{u.hook}:{','.join(n for _, n in u.saes)}")
                    queue.appendleft(u)  # the actor restarts (or another takes it); done results are skipped
                    continue
                except ray.exceptions.RayTaskError as exc:
                    raise SaebenchError(_one_line(exc)) from exc
                if u.kind == "prepare":
                    prepared.add(u.hook)
                    _add(counters, {u.hook: res["counters"]})
                else:
                    _add(counters, res["counters"])
                    compute_s += res["compute_s"]
                    bar.update(len(u.saes))
    finally:
        bar.close()
        for ref in inflight:  # only when stopping on an error: the rest of the sweep is abandoned
            try:
                ray.cancel(ref)
            except Exception:  # noqa: BLE001 - best effort; the actors go with the cluster
                pass
    from saebench.pipeline import PassCounters

    return {
        "counters": {h: PassCounters(**c) for h, c in counters.items()},
        "workers": len(actors),
        "jobs": len(units),
        "reruns": reruns,
        "jobs_s": time.perf_counter() - t0,
        "worker_compute_s": compute_s,
    }


def _add(total: dict[str, dict[str, int]], part: dict[str, dict[str, int]]) -> None:
    for h, c in part.items():
        acc = total.setdefault(h, {})
        for k, v in c.items():
            acc[k] = acc.get(k, 0) + int(v)
