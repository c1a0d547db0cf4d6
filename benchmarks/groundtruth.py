"""The synthetic ground-truth track, end to end, with its cost: data, training, evaluation, validity.

    OMP_NUM_THREADS=1 python benchmarks/groundtruth.py --zoo /tmp/synth-zoo --out /tmp/synth-results

1. builds the synthetic zoo (``saebench.synthetic_zoo.SYNTHETIC_ZOO``: 5 architectures x 2 widths x
   2 L0, members already in ``--zoo`` are kept) and times it;
2. scores every SAE with the ``groundtruth`` evaluator (results in ``--out``) and prints MCC,
   recovery, true absorption, split/merge, magnitude ratio and dead latents with their intervals;
3. validity: the absorption evaluator's and the 1-D probing machinery's own scoring code on the
   source's probe stream, and the Spearman rank correlation over the zoo between each score and its
   ground-truth quantity (``saebench.validity``);
4. cross-checks MCC against SAELens' ``mean_correlation_coefficient`` where sae-lens is installed.

Prints one markdown table per part and writes ``--out/track.json`` with every number.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def fmt(v: float | None, iv: dict | None = None) -> str:
    if v is None:
        return "–"
    if iv and iv.get("ci_low") is not None:
        return f"{v:.3f} [{iv['ci_low']:.3f}, {iv['ci_high']:.3f}]"
    return f"{v:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default="/tmp/synth-zoo")
    ap.add_argument("--out", default="/tmp/synth-results")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from saebench.loading import load_sae
    from saebench.synthetic import SyntheticSource
    from saebench.synthetic_zoo import SYNTHETIC_ZOO, build_synthetic_zoo, evaluate_groundtruth
    from saebench.validity import (
        absorption_score,
        absorption_task,
        probing_score,
        probing_tasks,
        spearman,
        splitting_score,
    )

    zoo, out = Path(args.zoo), Path(args.out)
    cost: dict[str, float] = {}
    t0 = time.perf_counter()
    logs = build_synthetic_zoo(zoo, progress=True)
    cost["train_s (this run: members missing from --zoo)"] = time.perf_counter() - t0
    cost["trained_members"] = len(logs)
    train_logs = [json.loads((zoo / m.name / "train_log.json").read_text()) for m in SYNTHETIC_ZOO]
    cost["zoo_data_s (draw of the train stream, once)"] = train_logs[0]["data_s"]
    cost["zoo_train_s (sum of members' wall, as built)"] = sum(lg["wall_s"] for lg in train_logs)
    names = [m.name for m in SYNTHETIC_ZOO]
    t0 = time.perf_counter()
    results = evaluate_groundtruth([str(zoo / n) for n in names], out=out)
    cost["groundtruth_s"] = time.perf_counter() - t0

    print("\n## groundtruth per SAE (95% intervals over true features / children / latents)\n")
    cols = [
        "mcc",
        "recovery",
        "gt_absorption",
        "split_frac",
        "merge_frac",
        "magnitude_ratio",
        "dead_frac",
        "eval_l0",
        "fvu",
    ]
    print("| SAE | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for n in names:
        r = results[n]
        print(f"| {n} | " + " | ".join(fmt(r.metrics.get(c), r.uncertainty.get(c)) for c in cols) + " |")

    source = SyntheticSource(None)
    t0 = time.perf_counter()
    task = absorption_task(source)
    ptasks = probing_tasks(source)
    cost["validity_tasks_s"] = time.perf_counter() - t0
    rows = []
    t0 = time.perf_counter()
    for n in names:
        ls = load_sae(str(zoo / n))
        r = results[n]
        ab = absorption_score(task, ls.sae, n)
        pr = probing_score(ptasks, ls.sae)
        best_cos = r.details["best_cos"]
        lpf = r.details["latents_per_feature"]
        parents = ab["letters_scored"]
        rows.append(
            {
                "sae": n,
                **{c: r.metrics.get(c) for c in cols},
                "absorption_rate": ab["absorption_rate"],
                "num_main_latents": ab["num_main_latents"],
                "gt_latents_per_parent": sum(lpf[p] for p in parents) / len(parents) if parents else None,
                "probe_loss_below_floor": pr["probe_loss_below_floor"],
                "heldout_probe_loss": pr["heldout_probe_loss"],
                "gt_task_best_cos": sum(best_cos[t.feature] for t in ptasks) / len(ptasks),
            }
        )
    cost["validity_scoring_s (absorption + probing, 20 SAEs)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    split_rows = []
    for m in SYNTHETIC_ZOO:
        if m.d_sae != 512:
            continue
        wide = next(w for w in SYNTHETIC_ZOO if (w.architecture, w.k, w.d_sae) == (m.architecture, m.k, 1024))
        sp = splitting_score(str(zoo / m.name), str(zoo / wide.name))
        split_rows.append(
            {
                "sae": m.name,
                "reference": wide.name,
                **sp,
                "gt_merge_frac": results[m.name].metrics["merge_frac"],
                "gt_split_frac_wide": results[wide.name].metrics["split_frac"],
            }
        )
    cost["validity_splitting_s"] = time.perf_counter() - t0

    checks = [
        ("absorption", "absorption_rate", "gt_absorption", +1),
        ("absorption (vs excess)", "absorption_rate", "gt_absorption_excess", +1),
        ("probing", "probe_loss_below_floor", "gt_task_best_cos", +1),
        ("probing (held-out loss)", "heldout_probe_loss", "gt_task_best_cos", -1),
        ("absorption: split latents", "num_main_latents", "gt_latents_per_parent", +1),
    ]
    for n, row in zip(names, rows, strict=True):
        row["gt_absorption_excess"] = results[n].metrics.get("gt_absorption_excess")
    split_checks = [("splitting (512 vs 1024)", "split_frac", "gt_merge_frac", +1)]
    print("\n## validity over the synthetic zoo (Spearman, two-sided p)\n")
    print("| evaluator | score | truth | expected sign | rho | p | n |")
    print("|---|---|---|---|---|---|---|")
    validity = []
    for label, score, truth, sign in checks + split_checks:
        table = split_rows if (label, score, truth, sign) in split_checks else rows
        rho, p, k = spearman([r[score] for r in table], [r[truth] for r in table])
        validity.append({"evaluator": label, "score": score, "truth": truth, "sign": sign, "rho": rho, "p": p, "n": k})
        print(f"| {label} | {score} | {truth} | {'+' if sign > 0 else '-'} | {fmt(rho)} | {fmt(p)} | {k} |")
    print("\n## per SAE: scores and truths\n")
    keys = [
        "absorption_rate",
        "gt_absorption",
        "num_main_latents",
        "gt_latents_per_parent",
        "probe_loss_below_floor",
        "gt_task_best_cos",
    ]
    print("| SAE | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for row in rows:
        print(f"| {row['sae']} | " + " | ".join(fmt(row[k]) for k in keys) + " |")

    print("\n## splitting: narrow SAE vs its wider sibling\n")
    print("| SAE | reference | split_frac | gt_merge_frac | gt_split_frac (wide) |")
    print("|---|---|---|---|---|")
    for r in split_rows:
        print(
            f"| {r['sae']} | {r['reference']} | {fmt(r.get('split_frac'))} | {fmt(r['gt_merge_frac'])} | "
            f"{fmt(r['gt_split_frac_wide'])} |"
        )

    print("\n## MCC cross-check against SAELens\n")
    cross: dict[str, object] = {}
    try:
        from sae_lens.synthetic.evals import mean_correlation_coefficient
    except ImportError as exc:
        cross = {"status": f"sae-lens synthetic code not importable ({exc})"}
        print(cross["status"])
    else:
        from saebench.probes.geometry import decoder_directions

        diffs = []
        for n in names:
            dec, _ = decoder_directions(load_sae(str(zoo / n)).sae)
            theirs = mean_correlation_coefficient(dec, source.features)
            diffs.append(abs(theirs - results[n].metrics["mcc"]))
        cross = {"status": "compared", "max_abs_diff": max(diffs), "n_saes": len(diffs)}
        print(f"max |ours - SAELens| over {len(diffs)} SAEs: {max(diffs):.2e}")

    print("\n## cost (seconds, 1 thread)\n")
    for k, v in cost.items():
        print(f"- {k}: {v:.1f}" if isinstance(v, float) else f"- {k}: {v}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "track.json").write_text(
        json.dumps(
            {"rows": rows, "split_rows": split_rows, "validity": validity, "cost": cost, "crosscheck": cross}, indent=2
        )
        + "\n"
    )
    print(f"\nwrote {out / 'track.json'}")


if __name__ == "__main__":
    main()
