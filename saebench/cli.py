"""The ``saebench`` command line.

Every user-fixable problem ends as one line ``error: ...`` on stderr and exit status 2; so do a
full disk and an exhausted memory, which no code path turns into a traceback. Ctrl-C exits 130
and SIGTERM 143, each with one line; completed results are kept and a rerun resumes. Warnings
(a damaged cache entry recomputed, a full cache skipped, waiting for another process) are one
``warning: ...`` line each.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import signal
import sys
import threading
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any

from saebench.errors import SaebenchError
from saebench.profiles import DTYPE_NAMES, PROFILES

RUN_HELP = """\
Evaluate SAEs on a subject model and write one JSON per (SAE, evaluator) to --out.

--sae accepts:
  reference                 the TopK SAE shipped with saebench (SmolLM2-135M, blocks.6.hook_resid_post)
  DIR                       native format: cfg.json + sae.safetensors (SAELens tensor names)
  FILE.pt                   a state dict of tensors with cfg.json beside it (weights-only load)
  python:FILE.py:FACTORY    FACTORY() returns any object with encode, decode, d_in, d_sae
  MODULE:FACTORY            the same from an importable module
  sae_lens:RELEASE/ID       a SAELens pretrained SAE (needs the sae-lens package and hub access)
  FORMAT:PATH               SAELens / sparsify / OpenAI / dictionary_learning files are detected;
                            or name them: sae_lens:, sparsify:, openai:, dictionary_learning:
Repeat --sae to evaluate several SAEs in one run: the model passes they share run once.

Examples:
  saebench run --sae reference
  saebench run --sae my_sae/ --profile standard --out results/
  saebench run --sae python:my_arch.py:build --hook blocks.6.hook_resid_post --tokens 4096

Complete results in --out are skipped (use --force to recompute); an interrupted run resumes.
Model activations and ablation baselines are cached in $SAEBENCH_CACHE (default ~/.cache/saebench).
"""


def _add_run(sub: Any) -> None:
    p = sub.add_parser(
        "run", help="evaluate SAEs", description=RUN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--sae",
        action="extend",
        nargs="+",
        help="SAE spec(s) (repeatable, or several after one --sae, e.g. --sae zoo/*; default: reference)",
    )
    p.add_argument(
        "--name",
        action="extend",
        nargs="+",
        help="name(s) for the matching --sae in results (default: its folder or factory name; SAEs whose "
        "default names coincide, e.g. runs/*/final, are named by their shortest distinguishing paths)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="transformer-lens model name (default: the SAE's model_name, else the embedded smollm2-135m)",
    )
    p.add_argument("--hook", default=None, help="transformer-lens hook name (default: the SAE's hook_name)")
    p.add_argument(
        "--force-hook",
        action="store_true",
        help="evaluate at --hook even where it differs from the hook the SAE names (refused otherwise)",
    )
    p.add_argument("--evals", default="core", help="comma list of evaluators or python:FILE.py:CLASS (default: core)")
    p.add_argument("--profile", default="quick", choices=list(PROFILES), help="sample sizes (default: quick)")
    p.add_argument("--tokens", type=int, help="tokens in the evaluation set (overrides the profile)")
    p.add_argument("--ctx-len", type=int, help="context length incl. BOS (overrides the profile)")
    p.add_argument("--batch-size", type=int, help="contexts per forward pass (overrides the profile)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument(
        "--corpus",
        default="sae-probes",
        help="sae-probes (offline default), hf:NAME[:CONFIG[:SPLIT]], or a .txt/.jsonl/.parquet file",
    )
    p.add_argument("--out", default="saebench-results", help="results folder (default: saebench-results)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--dtype", default="float32", choices=list(DTYPE_NAMES), help="model dtype (default: float32)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="EVAL.KEY=VALUE",
        help="override an evaluator setting, e.g. core.dense_threshold=0.05",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="recompute results that are already complete, and replace results that another SAE of the same name "
        "left in --out (refused otherwise)",
    )
    p.add_argument("--no-cache", action="store_true", help="do not read or write the activation cache")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow .pt files that need arbitrary unpickling (runs code: only your own files)",
    )
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--max-memory",
        metavar="SIZE",
        help="peak memory budget, e.g. 8GB or 16GiB: SAEs are loaded and spliced in groups that fit "
        "(RAM on CPU, device memory on CUDA); results are identical to evaluating each SAE alone",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars or table (for CI)")
    r = p.add_argument_group("distributed (pip install 'saebench[ray]'; see docs/sweeps.md)")
    r.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="spread the sweep over a Ray cluster: no ADDRESS starts a local one; else e.g. auto or HOST:6379. "
        "--out (and $SAEBENCH_CACHE) must be on a filesystem every node sees",
    )
    r.add_argument(
        "--ray-workers",
        type=int,
        metavar="N",
        help="actors, each holding the model (default: one per GPU with --device cuda, else cluster CPUs / --threads)",
    )
    g = p.add_argument_group("autointerp (--evals autointerp; offline by default, or any OpenAI-compatible endpoint)")
    g.add_argument(
        "--llm-base-url",
        help="endpoint that explains and scores, e.g. http://127.0.0.1:8000/v1 or https://api.openai.com/v1 "
        "(default: embedded = offline: top-tokens explainer, in-process SmolLM2 scorer, see docs/autointerp.md; "
        "https://api.openai.com/v1 when --llm-model or another endpoint flag is given)",
    )
    g.add_argument(
        "--llm-model", help="explainer model (default: gpt-4o-mini); also the scorer unless --llm-scorer-model"
    )
    g.add_argument("--llm-scorer-model", help="model for detection/simulation scoring (default: --llm-model)")
    g.add_argument(
        "--llm-api-key-env",
        help="environment variable holding the API key (default: OPENAI_API_KEY; none needed on 127.0.0.1)",
    )
    g.add_argument("--llm-concurrency", type=int, help="latents in flight at once (default: 8)")
    g.add_argument(
        "--llm-max-tokens", type=int, help="budget: stop after this many prompt+completion tokens, keeping what is done"
    )
    g.add_argument(
        "--llm-max-cost",
        type=float,
        help="budget in USD (needs --set autointerp.price_prompt_per_mtok=... and price_completion_per_mtok=...)",
    )


LLM_FLAGS = {
    "llm_base_url": "base_url",
    "llm_model": "explainer_model",
    "llm_scorer_model": "scorer_model",
    "llm_api_key_env": "api_key_env",
    "llm_concurrency": "concurrency",
    "llm_max_tokens": "max_tokens_budget",
    "llm_max_cost": "max_cost",
}


#: flags that only mean something with an endpoint: given without one, they name OpenAI's
ENDPOINT_FLAGS = ("llm_model", "llm_scorer_model", "llm_api_key_env", "llm_max_tokens", "llm_max_cost")
OPENAI_URL = "https://api.openai.com/v1"


def _eval_config(a: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """``--set`` values plus the explicit ``--llm-*`` flags (which map onto ``autointerp.*``).

    Without any endpoint (no ``--llm-base-url``, no ``autointerp.base_url`` / ``scorer_base_url``)
    autointerp runs offline; an endpoint-only flag such as ``--llm-model gpt-4o-mini`` then means
    OpenAI's endpoint rather than being ignored.
    """
    out = _parse_sets(a.set)
    for flag, key in LLM_FLAGS.items():
        val = getattr(a, flag, None)
        if val is not None:
            out.setdefault("autointerp", {})[key] = val
    ai = out.get("autointerp", {})
    if (
        "base_url" not in ai
        and "scorer_base_url" not in ai
        and any(getattr(a, f, None) is not None for f in ENDPOINT_FLAGS)
    ):
        ai["base_url"] = OPENAI_URL
    return out


def _parse_sets(items: list[str]) -> dict[str, dict[str, Any]]:
    import json

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, eq, raw = item.partition("=")
        ev, dot, field = key.partition(".")
        if not eq or not dot:
            raise SaebenchError(f"--set {item!r} must look like EVAL.KEY=VALUE, e.g. core.dense_threshold=0.05")
        try:
            val = json.loads(raw)
        except json.JSONDecodeError:
            val = raw
        out.setdefault(ev, {})[field] = val
    return out


def cmd_run(a: argparse.Namespace) -> int:
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    from saebench.runner import evaluate

    specs = a.sae or ["reference"]
    if a.ray_workers is not None and a.ray is None:
        raise SaebenchError("--ray-workers needs --ray")
    if a.ray is not None:
        from saebench.distributed import evaluate_ray

        if a.ray_workers is not None and a.ray_workers < 1:
            raise SaebenchError(f"--ray-workers {a.ray_workers} must be at least 1")
        runner = partial(
            evaluate_ray, address=None if a.ray == "local" else a.ray, workers=a.ray_workers, threads=a.threads or 1
        )
    else:
        runner = evaluate
    from saebench.spec import RunSpec

    spec = RunSpec(
        model=a.model,
        hook=a.hook,
        force_hook=a.force_hook,
        evals=tuple(e.strip() for e in a.evals.split(",") if e.strip()),
        profile=a.profile,
        tokens=a.tokens,
        ctx_len=a.ctx_len,
        batch_size=a.batch_size,
        seed=a.seed,
        corpus=a.corpus,
        out=a.out,
        device=a.device,
        dtype=a.dtype,
        force=a.force,
        progress=not a.quiet,
        eval_config=_eval_config(a),
        name=a.name or None,
        trust_pickle=a.trust_pickle,
        use_cache=not a.no_cache,
        max_memory=a.max_memory,
    )
    run = runner(specs, spec)
    if run.distributed:
        d = run.distributed
        print(
            f"ray: {d['workers']} worker(s), {d['jobs']} job(s), {len(d['reruns'])} rerun after a worker died, "
            f"{d['wall_s']:.1f} s"
        )
    if not a.quiet:
        print(summary_table(run))
    for sae_name, per in run.paths.items():
        for ev, path in per.items():
            tag = " (complete, skipped)" if (sae_name, ev) in run.skipped else ""
            print(f"wrote {path}{tag}" if not tag else f"kept {path}{tag}")
    return 0


def summary_table(run: Any) -> str:
    """One row per SAE with the headline metrics of every evaluator that ran on it, each as
    ``value ± half-width`` of its 95% interval where it has one (as on the board)."""
    from tabulate import tabulate

    from saebench.display import ARROW
    from saebench.evaluators import metric_table
    from saebench.leaderboard import cell, evaluator_order

    every = [r for per in run.results.values() for r in per.values()]
    table = metric_table(evaluator_order({r.evaluator for r in every}), every)
    cols = [(ev, m) for ev in evaluator_order(list(table)) for m in table[ev].values() if m.headline]
    rows = [[name, ",".join(per)] + [cell(per.get(ev), m.name) for ev, m in cols] for name, per in run.results.items()]
    headers = ["SAE", "evals"] + [m.column + ARROW[m.direction] for _, m in cols]
    return tabulate(rows, headers=headers, tablefmt="github")


def cmd_leaderboard(a: argparse.Namespace) -> int:
    from saebench.leaderboard import write_leaderboard

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = None
        if a.output is not None or a.html is None:  # --html alone writes only the site
            out = write_leaderboard(
                a.results,
                a.output or "LEADERBOARD.md",
                a.title,
                plots=not a.no_plots,
                validity=a.validity,
                reliability=a.reliability,
            )
        site = None
        if a.html is not None:
            from saebench.web import DEFAULT_BUDGET, write_site

            budget = DEFAULT_BUDGET if a.html_budget is None else a.html_budget if a.html_budget > 0 else None
            site = write_site(a.results, a.html, a.title, budget=budget, reliability=a.reliability)
    for w in dict.fromkeys(str(w.message) for w in caught):
        print(f"warning: {w}", file=sys.stderr)
    if out is not None:
        print(f"wrote {out}")
    if site is not None:
        left = f"; {len(site.left_out)} damaged file(s) left out, named on its index page" if site.left_out else ""
        print(f"wrote {site.out}/index.html: {site.pages} pages, {site.bytes:,} bytes in {site.seconds:.1f} s{left}")
    return 0


def cmd_train_reference(a: argparse.Namespace) -> int:
    import json

    import torch

    torch.set_num_threads(a.threads or torch.get_num_threads())
    from saebench.models import load_model
    from saebench.train import train_reference

    model = load_model()
    log = train_reference(
        model,
        Path(a.out),
        hook=a.hook,
        d_sae=a.d_sae,
        k=a.k,
        n_tokens=a.tokens,
        seed=a.seed,
        epochs=a.epochs,
        progress=not a.quiet,
    )
    print(json.dumps(log, indent=2))
    return 0


def cmd_zoo(a: argparse.Namespace) -> int:
    import json

    import torch

    from saebench.baselines import baseline_names, build_baselines
    from saebench.zoo import SEED_ZOO, ZOO, build_zoo

    members = ZOO + SEED_ZOO if a.seeds else ZOO
    if a.action == "list":
        for m in members:
            print(
                f"{m.name:27s} {m.architecture:10s} d_sae={m.d_sae:<5d} "
                f"{'k' if m.architecture in ('topk', 'batchtopk') else 'target L0'}={m.k:<3d} seed={m.seed}"
            )
        for name in baseline_names() if a.baselines else []:
            print(f"{name:36s} baseline (no training; saebench/baselines.py)")
        return 0
    if a.threads:
        torch.set_num_threads(a.threads)
    from saebench.models import load_model

    model = load_model()
    logs = build_zoo(model, Path(a.out), members=members, progress=not a.quiet)
    if a.baselines:
        logs += [{"name": n, "baseline": True} for n in build_baselines(model, Path(a.out), progress=not a.quiet)]
    print(json.dumps(logs, indent=2) if logs else f"zoo complete in {a.out}")
    return 0


def cmd_synthetic_zoo(a: argparse.Namespace) -> int:
    import json

    import torch

    from saebench.synthetic_zoo import SYNTHETIC_ZOO, build_synthetic_zoo

    if a.action == "list":
        for m in SYNTHETIC_ZOO:
            print(f"{m.name:28s} {m.architecture:10s} d_sae={m.d_sae:<5d} L0={m.k}")
        return 0
    if a.threads:
        torch.set_num_threads(a.threads)
    import time

    t0 = time.perf_counter()
    logs = build_synthetic_zoo(Path(a.out), progress=not a.quiet)
    if logs:
        print(json.dumps([{k: v for k, v in lg.items() if k != "recipe"} for lg in logs], indent=2))
        print(f"trained {len(logs)} synthetic SAEs in {time.perf_counter() - t0:.1f} s into {a.out}")
    else:
        print(f"synthetic zoo complete in {a.out}")
    return 0


def cmd_groundtruth(a: argparse.Namespace) -> int:
    import torch

    from saebench.display import with_interval
    from saebench.synthetic_zoo import evaluate_groundtruth

    if a.threads:
        torch.set_num_threads(a.threads)
    overrides = {"n_tokens": a.tokens} if a.tokens else {}
    results = evaluate_groundtruth(
        a.sae, out=Path(a.out), profile=a.profile, overrides=overrides, seed=a.seed, force=a.force
    )
    cols = ("mcc", "recovery", "gt_absorption", "split_frac", "merge_frac", "magnitude_ratio", "dead_frac", "eval_l0")
    print("| SAE | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, r in results.items():
        cells = [with_interval(r.metrics.get(c), r.uncertainty.get(c)) for c in cols]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"wrote {len(results)} result(s) under {a.out}")
    return 0


def cmd_convert(a: argparse.Namespace) -> int:
    from saebench.loading import load_sae
    from saebench.models import DTYPES
    from saebench.sae import NativeSAE, save_native

    loaded = load_sae(a.src, trust_pickle=False)
    if not isinstance(loaded.sae, NativeSAE):
        raise SaebenchError(
            f"{a.src} is a {type(loaded.sae).__name__}, not one of the built-in architectures; only SAE files can "
            "be converted"
        )
    out = save_native(loaded.sae, a.dst, dtype=DTYPES[a.dtype])
    for note in loaded.notes:
        print(f"note: {note}")
    print(
        f"wrote {out} (architecture {loaded.architecture}, d_in {loaded.sae.d_in}, d_sae {loaded.sae.d_sae}, hook "
        f"{loaded.hook_name})"
    )
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    from saebench.compare import IncomparableError, compare, parse_min_effects, render
    from saebench.reliability import load_seed_variance

    direct = a.baseline is None
    if direct and len(a.new) != 2:
        raise SaebenchError("compare needs --baseline DIR (the gate) or exactly two result paths A B (A vs B)")
    new, base = (a.new[:1], a.new[1:]) if direct else (a.new, [a.baseline])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = compare(
                new,
                base,
                parse_min_effects(a.min_effect),
                against=a.against,
                ignore=tuple(a.ignore),
                direct=direct,
                only_run=a.only_run,
                seed_variance=load_seed_variance(a.seed_variance) if a.seed_variance else None,
            )
        except IncomparableError as exc:
            _error(str(exc))
            return 3
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    print(render(result, show_all=not a.only_changes, direct=direct))
    return 1 if result.failures and not direct else 0


def cmd_reliability(a: argparse.Namespace) -> int:
    from saebench.reliability import render, write_reliability

    rows = write_reliability(a.results, a.output)
    print(render(rows))
    print(f"wrote {a.output}")
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from saebench.export import export_saebench

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written, skipped = export_saebench(a.results, a.out)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    for note in skipped:
        print(f"skipped {note}")
    print(f"wrote {len(written)} SAEBench file(s) under {a.out}")
    return 0


def cmd_tasks(a: argparse.Namespace) -> int:
    from saebench.tasks import listing

    paths = dict(item.partition("=")[::2] for item in a.data_path)
    print(listing(a.spec, paths, a.tasks or None))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saebench",
        description="Evaluate sparse autoencoders on language-model activations. Start with: saebench run --sae "
        "reference",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    lb = sub.add_parser(
        "leaderboard",
        help="markdown table (and a static web site) from result JSONs",
        description="Build the board from result files: markdown with PNG frontier plots (-o), and/or a static web "
        "site (--html DIR: sortable, filterable tables, interactive frontier plots, a page per SAE, the sampled "
        "latents, paired comparisons; opens from disk with no server or network, see docs/web.md). Damaged result "
        "files are left out and named.",
    )
    lb.add_argument("results", nargs="+", help="result files or folders")
    lb.add_argument(
        "-o", "--output", default=None, help="markdown file to write (default LEADERBOARD.md; with --html alone, none)"
    )
    lb.add_argument("--title", default="saebench leaderboard")
    lb.add_argument("--no-plots", action="store_true", help="write only the markdown, no PNG plots")
    lb.add_argument(
        "--validity",
        metavar="FILE",
        default=None,
        help="add the synthetic ground-truth validity of each evaluator (the track.json that "
        "`python benchmarks/groundtruth.py` writes; the board's copy: leaderboard/validity.json, docs/groundtruth.md)",
    )
    lb.add_argument(
        "--reliability",
        metavar="FILE",
        default=None,
        help="show each column's training-seed reliability verdict (● ranks, ◐ large differences only, ○ cannot "
        "rank) beside its header and the reliability table in its own section (the file `saebench reliability -o` "
        "writes; the board's copy: leaderboard/reliability.json, docs/seed_reliability.md)",
    )
    lb.add_argument(
        "--html",
        metavar="DIR",
        default=None,
        help="also write the static web board into DIR (replaced wholesale); open DIR/index.html",
    )
    lb.add_argument(
        "--html-budget",
        metavar="BYTES",
        type=int,
        default=None,
        help="refuse a site larger than this (default 25000000; 0: no limit)",
    )
    cv = sub.add_parser(
        "convert",
        help="convert a SAELens / sparsify / OpenAI / dictionary_learning SAE to the native format",
        description="Convert SRC (any --sae file or folder, optionally prefixed sae_lens:, sparsify:, openai:, "
        "dictionary_learning:) to a native folder DST (cfg.json + sae.safetensors).",
    )
    cv.add_argument("src", help="SAE to convert (detected from its files, or FORMAT:PATH)")
    cv.add_argument("dst", help="native folder to write (replaced if it exists)")
    cv.add_argument("--dtype", default="float32", choices=list(DTYPE_NAMES), help="weight dtype (default: float32)")
    cp = sub.add_parser(
        "compare",
        help="A vs B with intervals, or the CI gate: exit 1 when a metric got worse beyond noise",
        description="saebench compare A B: per metric, A's value, B's value, the difference A - B with its 95% "
        "interval (paired where the two results share token contexts / tasks / latents) and a verdict (better, worse, "
        "within noise, same). saebench compare NEW --baseline OLD: the CI gate; exit 1 when a metric is worse beyond "
        "its noise and its minimum effect, or when the new results lack an evaluator or metric the baseline has "
        "(named on the last line; --only-run gates only what ran), 2 on bad input, 3 when the configurations differ.",
    )
    cp.add_argument("new", nargs="+", help="new result files or folders (or A B without --baseline)")
    cp.add_argument("--baseline", help="folder (or file) of baseline results: the gate")
    cp.add_argument(
        "--min-effect",
        action="append",
        default=[],
        metavar="METRIC=VALUE",
        help="smallest change that counts, absolute (fvu=0.005) or relative to the baseline (fvu=2%%); "
        "*=VALUE for every metric (default: each metric's declared minimum effect)",
    )
    cp.add_argument("--ignore", action="append", default=[], metavar="METRIC", help="leave a metric out (repeatable)")
    cp.add_argument(
        "--against",
        metavar="SAE",
        help="compare every new SAE with this baseline SAE (e.g. a zoo member) instead of matching by name",
    )
    cp.add_argument("--only-changes", action="store_true", help="hide metrics that are identical or within noise")
    cp.add_argument(
        "--only-run",
        action="store_true",
        help="gate only the evaluators and metrics the new results hold (default: a baseline result or metric the new "
        "side lacks fails the gate, naming it)",
    )
    cp.add_argument(
        "--seed-variance",
        metavar="FILE",
        help="a reliability file (`saebench reliability`): add each metric's training-seed variance to the noise "
        "model, for a retrained SAE compared with another training run (default: same weights, data noise only)",
    )
    rl = sub.add_parser(
        "reliability",
        help="training-seed reliability per metric: which metrics can rank configurations (docs/seed_reliability.md)",
        description="From results of configurations each trained with 2+ seeds (SAE names <config>-s<seed>; "
        "`saebench zoo build --seeds`), evaluated on the same tokens and profile: per headline metric the "
        "data-sampling SE, the training-seed SD, the spread between configurations, ICC(1), Kendall's tau of the "
        "ranking between seeds, and a verdict. Writes FILE for `compare --seed-variance`.",
    )
    rl.add_argument("results", nargs="+", help="result files or folders (only the reseeded configurations)")
    rl.add_argument("-o", "--output", default="reliability.json", help="reliability file to write")
    ex = sub.add_parser(
        "export",
        help="write results in another tool's layout (SAEBench's eval_results JSON)",
        description="Write SAEBench 0.6.0 eval_results files (OUT/core/, OUT/sparse_probing/, OUT/autointerp/) "
        "from saebench results, so SAEBench's graphing code and the tools that read its files accept them. "
        "Definitions that differ are written into each file's eval_result_unstructured.",
    )
    ex.add_argument("--format", default="saebench", choices=["saebench"], help="output layout (default: saebench)")
    ex.add_argument("results", nargs="+", help="result files or folders")
    ex.add_argument("out", help="output folder")
    tr = sub.add_parser(
        "train-reference", help="regenerate the shipped reference TopK SAE (about 8 min on 2 CPU cores)"
    )
    tr.add_argument("--out", default=str(Path(__file__).parent / "reference" / "smollm2-135m-topk-2304-k32"))
    tr.add_argument("--hook", default="blocks.6.hook_resid_post")
    tr.add_argument("--d-sae", type=int, default=2304)
    tr.add_argument("--k", type=int, default=32)
    tr.add_argument("--tokens", type=int, default=393_216)
    tr.add_argument("--epochs", type=int, default=3)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--threads", type=int)
    tr.add_argument("--quiet", action="store_true")
    zo = sub.add_parser("zoo", help="list or regenerate the reference zoo (14 SAEs; see saebench/zoo.py)")
    zo.add_argument("action", choices=["list", "build"])
    zo.add_argument("--out", default="zoo", help="folder for the zoo SAEs (default: zoo/)")
    zo.add_argument(
        "--seeds",
        action="store_true",
        help="also the reseeded copies (seeds 1 and 2 of the five architectures at 2304 / L0 32 and TopK k16, k64: "
        "14 more SAEs, named <config>-s<seed>) that measure training-seed reliability",
    )
    zo.add_argument(
        "--baselines",
        action="store_true",
        help="also the 7 baseline SAEs (untrained random init per architecture, PCA and neuron-basis TopK readers; "
        "named baseline-*): the floor under every metric",
    )
    zo.add_argument("--threads", type=int)
    zo.add_argument("--quiet", action="store_true")
    sz = sub.add_parser(
        "synthetic-zoo",
        help="list or train the synthetic zoo: 20 SAEs on a known dictionary (see docs/groundtruth.md)",
    )
    sz.add_argument("action", choices=["list", "build"])
    sz.add_argument("--out", default="synthetic-zoo", help="folder for the synthetic SAEs (default: synthetic-zoo/)")
    sz.add_argument("--threads", type=int)
    sz.add_argument("--quiet", action="store_true")
    gt = sub.add_parser(
        "groundtruth",
        help="score SAEs trained on a synthetic source against its known dictionary (MCC, recovery, absorption)",
        description="Score SAEs from `saebench synthetic-zoo build` against the true features of the source recorded "
        "in their cfg.json; results are written as OUT/<sae>/groundtruth.json. SAEs of a language model are refused.",
    )
    gt.add_argument("--sae", action="append", required=True, help="synthetic SAE folder (repeatable)")
    gt.add_argument("--out", default="saebench-results", help="results folder (default: saebench-results)")
    gt.add_argument("--profile", default="quick", choices=["quick", "standard", "paper"])
    gt.add_argument("--tokens", type=int, help="tokens of the source's eval stream (default: the profile's)")
    gt.add_argument("--seed", type=int, default=0)
    gt.add_argument("--force", action="store_true", help="recompute results already complete in --out")
    gt.add_argument("--threads", type=int)
    ta = sub.add_parser("tasks", help="list the probing tasks (--evals probing) with sizes and offline availability")
    ta.add_argument("tasks", nargs="*", help="task names, globs or families (default: all)")
    ta.add_argument("--spec", action="append", default=[], help="extra task spec TOML file (repeatable)")
    ta.add_argument(
        "--data-path",
        action="append",
        default=[],
        metavar="FAMILY=PATH",
        help="local data for a family, e.g. europarl=DIR (default: $SAEBENCH_EUROPARL)",
    )
    return parser


class Terminated(BaseException):
    """SIGTERM, raised where the process is so that cleanup (temp files, locks) runs."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


class CtrlC:
    """Ctrl-C that cannot be lost. CPython swallows a KeyboardInterrupt raised inside a weakref or
    import-lock callback ("Exception ignored in: <function _get_module_lock.<locals>.cb>"), and the
    run then went on to finish with exit 0 (seen in CI under load). So the first SIGINT also starts
    a thread that re-sends SIGINT every 0.5 s until :func:`main` has caught the interrupt; the lock
    makes sure none is sent after that."""

    def __init__(self) -> None:
        self.pending = False
        self.lock = threading.Lock()

    def on_sigint(self, signum: int, frame: Any) -> None:
        with self.lock:
            first, self.pending = not self.pending, True
        if first:
            threading.Thread(target=self._redeliver, daemon=True).start()
        raise KeyboardInterrupt

    def _redeliver(self) -> None:
        while True:
            time.sleep(0.5)
            with self.lock:
                if not self.pending:
                    return
                os.kill(os.getpid(), signal.SIGINT)

    def handled(self) -> None:
        with self.lock:
            self.pending = False


class _OneLine(logging.Handler):
    """saebench's log records as one ``warning: ...`` line each on the current ``sys.stderr``."""

    def emit(self, record: logging.LogRecord) -> None:
        prefix = "warning" if record.levelno >= logging.WARNING else "note"
        try:
            print(f"{prefix}: {' '.join(record.getMessage().split())}", file=sys.stderr, flush=True)
        except Exception:
            self.handleError(record)


def _setup_logging() -> None:
    logger = logging.getLogger("saebench")
    if not any(isinstance(h, _OneLine) for h in logger.handlers):
        logger.addHandler(_OneLine())
        logger.setLevel(logging.INFO)


def _resource_error(exc: BaseException) -> str | None:
    """The one-line message for running out of disk or memory (None for anything else)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {exc.filename}" if exc.filename else ""
        return f"no space left on device{where}; free space (or point --out / $SAEBENCH_CACHE elsewhere) and rerun"
    text = str(exc)
    if (
        isinstance(exc, MemoryError)
        or (isinstance(exc, OSError) and exc.errno == errno.ENOMEM)
        or (isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower()))
    ):
        detail = str(exc).splitlines()[0][:160] if str(exc) else "MemoryError"
        return f"out of memory ({detail}); lower --batch-size (or --ctx-len), or use a machine with more memory"
    return None


def main(argv: list[str] | None = None) -> int:
    """Run one ``saebench`` command and return its exit status (see the module doc)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        return _interrupted()
    handlers = {
        "run": cmd_run,
        "leaderboard": cmd_leaderboard,
        "train-reference": cmd_train_reference,
        "convert": cmd_convert,
        "compare": cmd_compare,
        "reliability": cmd_reliability,
        "zoo": cmd_zoo,
        "synthetic-zoo": cmd_synthetic_zoo,
        "groundtruth": cmd_groundtruth,
        "tasks": cmd_tasks,
        "export": cmd_export,
    }
    _setup_logging()
    ctrl_c = CtrlC()
    previous = signal.getsignal(signal.SIGTERM)
    previous_int = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
        signal.signal(signal.SIGINT, ctrl_c.on_sigint)
    except ValueError:  # not the main thread (main() called from a worker): leave the signals alone
        previous = previous_int = None
    try:
        return handlers[args.command](args)
    except SaebenchError as exc:
        _error(str(exc))
        return 2
    except KeyboardInterrupt:
        ctrl_c.handled()
        return _interrupted()
    except Terminated:
        _error("terminated (SIGTERM); completed results are kept, rerun the same command to resume")
        return 143
    except BrokenPipeError:  # output piped into a reader that went away (| head): nothing left to say
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 1
    except (OSError, MemoryError, RuntimeError) as exc:
        message = _resource_error(exc)
        if message is None:
            raise
        _error(message)
        return 2
    finally:
        ctrl_c.handled()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if previous_int is not None:
            signal.signal(signal.SIGINT, previous_int)


def _error(message: str) -> None:
    """``error: MESSAGE`` on a line of its own: progress bars still drawn (an exception left their
    loops) are closed first, so the line never continues a bar."""
    try:
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()
    except Exception:  # noqa: BLE001 - cosmetic: the message matters, not the bars
        pass
    print(f"error: {message}", file=sys.stderr, flush=True)


def _interrupted() -> int:
    _error("interrupted; completed results are kept, rerun the same command to resume")
    return 130


def entry() -> None:
    """The ``saebench`` command (and ``python -m saebench.cli``): :func:`main`, then exit with its status.

    Exit 130 on Ctrl-C, always. CPython (3.8+) kills itself with SIGINT at exit, instead of
    returning the status, when a flag "a KeyboardInterrupt went unhandled" is set; the flag is set
    whenever a KeyboardInterrupt leaves code run by ``exec``/``eval`` of a *string* (dataclasses,
    namedtuples, pydantic and torch define methods that way while transformers and torch import),
    and is not cleared when the exception is then caught. A Ctrl-C during those imports thus ended
    the process by the signal after it had printed its one line (seen in CI as exit -2). Leaving
    through ``os._exit`` after flushing keeps the promised status; every lock and temp file was
    already released while the exception unwound.
    """
    try:
        code = main()
    except KeyboardInterrupt:  # a second Ctrl-C while the first one is being handled
        code = _interrupted()
    if code == 130:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(130)
    sys.exit(code)


if __name__ == "__main__":
    entry()
