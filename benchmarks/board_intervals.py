"""What the interval change does to the committed board: standard errors by document vs by
context, and how many cells change verdict "distinguishable from the best or not".

    python benchmarks/board_intervals.py [--results leaderboard/results] [--old-ref HEAD~N]

1. Rebuilds the board's token set (``saebench.data.build_token_set`` with the results' config;
   its fingerprint must equal the stored ``tokens_sha``) to recover each context's source
   document, which results written before issue 26 do not store.
2. For core's headline metrics of every SAE, and for the paired difference of every SAE with
   the board's best: the linearised standard error with documents as the independent units over
   the same with contexts as the units (the ratio is the factor by which a by-context interval
   was too narrow).
3. For every headline column with a direction: the best SAE, and for every other SAE whether its
   difference from the best excludes 0, by the old method (``saebench/stats.py`` at
   ``--old-ref``: percentile bootstrap over contexts, paired where the units coincide) and by the
   new one (:func:`saebench.stats.difference`, documents as units). Prints the cells that change.
4. The cost, old method against new in this process: every declared core interval of one
   committed result, and the density intervals from firing counts of the board's size (64
   contexts x 2304 latents, Poisson).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from saebench import stats
from saebench.evaluators import metric_table
from saebench.results import load_results

ROOT = Path(__file__).resolve().parents[1]
OLD_REF = "51f5717648741f66b100891805fd229d473c3ad8"  # main before issue 26's intervals
CORE = ("fvu", "delta_ce", "ce_loss_score", "kl_div_score", "mse", "cossim", "kl")


def old_module(ref: str, path_in_repo: str, name: str):
    """A module's source as it was at git ``ref`` (the old interval method), imported as ``name``."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:{path_in_repo}"], check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    path = Path(tempfile.mkdtemp()) / f"{name}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def document_ids(results: list, threads: int) -> dict[str, list[str]]:
    """{tokens_sha: per-context document ids} for every core token set on the board."""
    import torch

    from saebench.data import build_token_set
    from saebench.models import load_model

    torch.set_num_threads(threads)
    model = load_model()
    out = {}
    for r in results:
        c = r.config
        if r.evaluator != "core" or c.get("tokens_sha") in out:
            continue
        ts = build_token_set(model.tokenize, model.bos_id, int(c["n_tokens"]), int(c["ctx_len"]), int(c["seed"]),
                             str(c["corpus"]))  # fmt: skip
        if ts.fingerprint() != c.get("tokens_sha"):
            raise SystemExit(f"rebuilt token set {ts.fingerprint()} != stored {c.get('tokens_sha')}")
        out[c["tokens_sha"]] = ts.doc_ids
    return out


def with_docs(r, docs: dict[str, list[str]]) -> dict[str, stats.Samples]:
    s = stats.samples_from_json(r.samples)
    ids = docs.get(r.config.get("tokens_sha"))
    if "sequence" in s and ids is not None and len(ids) == len(s["sequence"].ids):
        s["sequence"].clusters, s["sequence"].cluster_unit = list(ids), "document"
    return s


def without_docs(samples: dict[str, stats.Samples]) -> dict[str, stats.Samples]:
    return {k: stats.Samples(v.unit, v.ids, v.columns) for k, v in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=str(ROOT / "leaderboard" / "results"))
    ap.add_argument("--old-ref", default=OLD_REF, help="git ref whose saebench/stats.py is the old method")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    results = load_results([args.results])
    docs = document_ids(results, args.threads)
    for sha, ids in docs.items():
        sizes = sorted(np.unique(ids, return_counts=True)[1], reverse=True)
        print(f"token set {sha}: {len(ids)} contexts from {len(sizes)} documents (contexts per document {sizes})")
    old = old_module(args.old_ref, "saebench/stats.py", "old_stats")
    by_sae = {}
    for r in results:
        by_sae.setdefault(r.sae.name, {})[r.evaluator] = r
    decl = metric_table(sorted({r.evaluator for r in results}), results)

    print("\n1. standard error by document / by context (core, same linearised formula), over the board's SAEs")
    core_decl = decl["core"]
    for name in CORE:
        est = core_decl[name].estimator
        ratios = []
        for per in by_sae.values():
            if "core" not in per:
                continue
            s = with_docs(per["core"], docs)
            a, b = stats.interval(est, s), stats.interval(est, without_docs(s))
            if a.se and b.se:
                ratios.append(a.se / b.se)
        print(f"  {name:14s} {min(ratios):.2f}-{max(ratios):.2f} (median {np.median(ratios):.2f}, {len(ratios)} SAEs)")

    print("\n2. paired difference from the best SAE of the column: standard error by document / by context")
    rows, changes = [], []
    for ev in sorted(decl):
        for m in decl[ev].values():
            if not (m.headline and m.direction and m.estimator is not None):
                continue
            vals = {n: per[ev].metrics.get(m.name) for n, per in by_sae.items() if ev in per}
            vals = {n: v for n, v in vals.items() if isinstance(v, (int, float))}
            if len(vals) < 2:
                continue
            best = (max if m.direction == "up" else min)(vals, key=lambda n: vals[n])
            for n in sorted(vals):
                if n == best:
                    continue
                ra, rb = by_sae[n][ev], by_sae[best][ev]
                sa, sb = with_docs(ra, docs), with_docs(rb, docs)
                new = stats.difference(m.estimator, sa, m.estimator, sb)
                old_est = old.estimator_from_dict(stats.estimator_to_dict(m.estimator))
                od = old.difference(old_est, old.samples_from_json(ra.samples), old_est,
                                    old.samples_from_json(rb.samples))  # fmt: skip
                was = od.low is not None and not (od.low <= 0 <= od.high)
                now = new.low is not None and not (new.low <= 0 <= new.high)
                if ev == "core" and m.name in CORE:
                    ctx = stats.difference(m.estimator, without_docs(sa), m.estimator, without_docs(sb))
                    if new.se and ctx.se:
                        rows.append((m.name, new.se / ctx.se))
                rec = (ev, m.name, n, best, was, now, new.reason)
                (changes if was != now else []).append(rec)
                rows.append(("cell", was, now))
    ratio_by = {}
    for r in rows:
        if r[0] != "cell":
            ratio_by.setdefault(r[0], []).append(r[1])
    for name, rs in ratio_by.items():
        print(f"  {name:14s} {min(rs):.2f}-{max(rs):.2f} (median {np.median(rs):.2f})")
    cells = [r for r in rows if r[0] == "cell"]
    n_was = sum(r[1] for r in cells)
    n_now = sum(r[2] for r in cells)
    print(f"\n3. cells (SAE, headline metric) compared with their column's best: {len(cells)}; distinguishable "
          f"before {n_was}, after {n_now}; verdict changed in {len(changes)}:")  # fmt: skip
    for ev, name, n, best, was, _now, why in changes:
        what = "distinguishable -> not" if was else "not -> distinguishable"
        print(f"  {ev}.{name}: {n} vs {best}: {what}{f' ({why})' if why else ''}")
    cost(old, by_sae, core_decl, docs, args.old_ref)


def cost(old, by_sae: dict, core_decl: dict, docs: dict, ref: str) -> None:
    """Seconds of every declared core interval of one result, and of the density intervals, old
    method against new in this process (each timed over a few repeats, best kept)."""
    import types

    import torch

    from saebench.evaluators.core import density_intervals_from_counts

    res = next(per["core"] for per in by_sae.values() if "core" in per)
    new_s, old_s = with_docs(res, docs), old.samples_from_json(res.samples)
    ests = [(m.estimator, old.estimator_from_dict(stats.estimator_to_dict(m.estimator)))
            for m in core_decl.values() if m.estimator is not None]  # fmt: skip

    def best_of(fn, k: int = 3) -> float:
        times = []
        for _ in range(k):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    stats._seeded_weights.cache_clear()
    t_new = best_of(lambda: [stats.interval(e, new_s) for e, _ in ests])
    t_old = best_of(lambda: [old.interval(o, old_s) for _, o in ests])
    counts = np.random.default_rng(0).poisson(0.02, (64, 2304)).astype(np.int32)
    ids = docs[res.config["tokens_sha"]]
    old_core = old_module(ref, "saebench/evaluators/core.py", "old_core")
    st = types.SimpleNamespace(fire_by_seq=torch.from_numpy(counts), fire_count=torch.from_numpy(counts.sum(0)),
                               cols={"n_rec": torch.full((64,), 127.0, dtype=torch.float64)},
                               seq_ids=[str(i) for i in range(64)])  # fmt: skip
    d_new = best_of(lambda: density_intervals_from_counts(counts, np.full(64, 127.0), ids, 0.1), 2)
    d_old = best_of(lambda: old_core.density_intervals(st, 0.1), 1)
    print(f"\n4. cost, one process: {len(ests)} core intervals {t_old:.3f} s old, {t_new:.3f} s new; density "
          f"intervals (64 x 2304) {d_old:.3f} s old, {d_new:.3f} s new")  # fmt: skip


if __name__ == "__main__":
    main()
