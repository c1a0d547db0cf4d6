"""``saebench compare NEW... --baseline DIR``: the CI regression gate.

New results are matched to baseline results by (SAE name, evaluator). For every scalar metric the
table shows baseline, new, the difference and a verdict; the gate fails (exit status 1) when a
metric is worse than its tolerance in its bad direction. Directions come from
each evaluator's metric declarations (``Evaluator.metrics``); metrics without a direction are descriptive (a change is
reported, never a failure).

A metric is *worse* when ``new - baseline`` goes the bad way by more than
``max(rel * |baseline|, abs)``. The default ``rel`` (0.5%) is meant to sit far above CPU
run-to-run noise (a fixed seed and token set; different thread counts or BLAS builds only reorder
float sums, and metrics accumulate in float64) and below a real change of an SAE; its spread
across machines has not been measured. ``abs`` (1e-6) keeps metrics whose baseline is 0
(``dead_frac``) from failing on rounding. Identical results compare exactly equal (verdict
``same``).

Bad input: corrupt or foreign JSON files are skipped with a warning naming them; a metric the
new run has but the baseline lacks is reported (``new metric``), not a failure; a result with
no baseline is reported; no matched pair at all is an error (a CI gate that compares nothing
must not pass).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saebench.display import fmt as _fmt
from saebench.errors import SaebenchError
from saebench.evaluators import metric_table
from saebench.results import Result, read_result, result_files

DEFAULT_REL = 0.005
DEFAULT_ABS = 1e-6
# config keys whose difference makes numbers incomparable (reported, so a failing gate explains itself)
CONFIG_KEYS = ("model", "hook", "profile", "tokens", "n_tokens", "ctx_len", "seed", "corpus", "dtype")


@dataclass
class Row:
    """One metric of one (SAE, evaluator) pair."""

    sae: str
    evaluator: str
    metric: str
    direction: str
    baseline: Any
    new: Any
    diff: float | None
    rel: float | None
    verdict: str
    tolerance: float

    @property
    def failed(self) -> bool:
        return self.verdict in ("WORSE", "became undefined", "missing in new")


@dataclass
class Comparison:
    """All rows plus what could not be compared."""

    rows: list[Row] = field(default_factory=list)
    unmatched_new: list[str] = field(default_factory=list)
    unmatched_baseline: list[str] = field(default_factory=list)
    config_diffs: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[Row]:
        return [r for r in self.rows if r.failed]


def parse_tolerances(items: list[str]) -> dict[str, float]:
    """``METRIC=REL`` (``fvu=0.01`` or ``fvu=1%``); ``*=REL`` sets the default for all metrics."""
    out: dict[str, float] = {}
    for item in items:
        key, eq, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not eq or not key or not raw:
            raise SaebenchError(f"--tolerance {item!r} must look like METRIC=REL, e.g. fvu=0.01 or fvu=1%")
        try:
            val = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
        except ValueError as exc:
            raise SaebenchError(f"--tolerance {item!r}: {raw!r} is not a number; use e.g. fvu=0.01 or fvu=1%") from exc
        if not math.isfinite(val) or val < 0:
            raise SaebenchError(f"--tolerance {item!r}: the tolerance must be a finite number >= 0")
        out[key] = val
    return out


def collect(paths: list[str | Path], what: str) -> dict[tuple[str, str], Result]:
    """Results keyed by (SAE name, evaluator); unreadable files are skipped with a warning."""
    found: dict[tuple[str, str], tuple[Result, Path]] = {}
    for f in result_files(paths, what):
        try:
            res = read_result(f)
        except SaebenchError as exc:
            warnings.warn(f"skipping {exc}", stacklevel=2)
            continue
        key = (res.sae.name, res.evaluator)
        if key in found:
            warnings.warn(
                f"{what}: {f} and {found[key][1]} both hold {key[1]} results for SAE {key[0]!r}; using {f}",
                stacklevel=2,
            )
        found[key] = (res, f)
    return {k: v[0] for k, v in found.items()}


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def compare_metric(
    direction: str, base: Any, new: Any, rel_tol: float, abs_tol: float = DEFAULT_ABS
) -> tuple[float | None, float | None, str]:
    """``(diff, relative diff, verdict)`` for one metric whose better ``direction`` is up/down/""."""
    b, n = _number(base), _number(new)
    if base is None and new is None:
        return None, None, "same"
    if b is None or not math.isfinite(b):
        return None, None, "baseline undefined" if n is not None else "same"
    if n is None or not math.isfinite(n):
        return None, None, "became undefined" if direction else "changed"
    diff = n - b
    rel = diff / abs(b) if b != 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
    if diff == 0:
        return 0.0, 0.0, "same"
    allowed = max(rel_tol * abs(b), abs_tol)
    if abs(diff) <= allowed:
        return diff, rel, "ok"
    if not direction:
        return diff, rel, "changed"
    better = diff < 0 if direction == "down" else diff > 0
    return diff, rel, "better" if better else "WORSE"


def compare(
    new_paths: list[str | Path],
    baseline_paths: list[str | Path],
    tolerances: dict[str, float] | None = None,
    against: str | None = None,
) -> Comparison:
    """Compare results under ``new_paths`` with those under ``baseline_paths``.

    ``against``: compare every new SAE with this one baseline SAE (same evaluator) instead of
    matching by name: how a new architecture is gated against a reference-zoo member.
    """
    tolerances = dict(tolerances or {})
    default = tolerances.pop("*", DEFAULT_REL)
    new = collect(list(new_paths), "new results")
    base = collect(list(baseline_paths), "baseline")
    if against is not None:
        chosen = {e: r for (s, e), r in base.items() if s == against}
        if not chosen:
            names = sorted({s for s, _ in base})
            raise SaebenchError(f"--against {against!r}: no baseline SAE of that name (have: {', '.join(names[:8])})")
        base = {(s, e): chosen[e] for (s, e) in new if e in chosen}
    if not new:
        raise SaebenchError(
            f"no saebench results in {', '.join(map(str, new_paths))}; run `saebench run --out DIR` first"
        )
    if not base:
        raise SaebenchError(f"no saebench results in baseline {', '.join(map(str, baseline_paths))}; check --baseline")
    unknown = sorted(set(tolerances) - {m for r in list(new.values()) + list(base.values()) for m in r.metrics})
    if unknown:
        raise SaebenchError(f"--tolerance names metric(s) no result has: {', '.join(unknown)}; check the spelling")
    out = Comparison()
    out.unmatched_new = [f"{s}/{e}" for s, e in sorted(set(new) - set(base))]
    out.unmatched_baseline = [f"{s}/{e}" for s, e in sorted(set(base) - set(new))]
    matched = sorted(set(new) & set(base))
    if not matched:
        raise SaebenchError(
            f"no new result matches a baseline by SAE name + evaluator (new: {', '.join(out.unmatched_new[:5])}; "
            f"baseline: {', '.join(out.unmatched_baseline[:5])}); name the SAE with --name when running"
        )
    decl = metric_table(sorted({e for _, e in matched}), list(base.values()) + list(new.values()))
    for key in matched:
        b, n = base[key], new[key]
        directions = {m: d.direction for m, d in decl.get(key[1], {}).items()}
        for ck in CONFIG_KEYS:
            if b.config.get(ck) != n.config.get(ck):
                out.config_diffs.append(
                    f"{key[0]}/{key[1]}: {ck} {b.config.get(ck)!r} (baseline) vs {n.config.get(ck)!r} (new)"
                )
        names = sorted(
            m
            for m in set(b.metrics) | set(n.metrics)
            if not isinstance(b.metrics.get(m), (dict, list, str))
            and not isinstance(n.metrics.get(m), (dict, list, str))
        )
        for m in names:
            tol = tolerances.get(m, default)
            if m not in b.metrics:
                diff, rel, verdict = None, None, "new metric"
            elif m not in n.metrics:
                diff, rel, verdict = None, None, "missing in new" if directions.get(m) else "dropped"
            else:
                diff, rel, verdict = compare_metric(directions.get(m, ""), b.metrics[m], n.metrics[m], tol)
            out.rows.append(
                Row(
                    key[0],
                    key[1],
                    m,
                    directions.get(m, ""),
                    b.metrics.get(m),
                    n.metrics.get(m),
                    diff,
                    rel,
                    verdict,
                    tol,
                )
            )
    return out


def _pct(v: float | None) -> str:
    if v is None:
        return ""
    if math.isinf(v):
        return "inf"
    return f"{v * 100:+.3g}%"


def render(cmp: Comparison, show_all: bool = True) -> str:
    """The per-metric table and a summary line naming every failing metric."""
    from tabulate import tabulate

    arrow = {"up": "↑", "down": "↓", "": ""}
    rows = [
        [
            r.sae,
            r.evaluator,
            f"{r.metric} {arrow[r.direction]}".rstrip(),
            _fmt(r.baseline) if r.verdict != "new metric" else "—",
            _fmt(r.new) if r.verdict not in ("missing in new", "dropped") else "—",
            "" if r.diff is None else f"{r.diff:+.4g}",
            _pct(r.rel),
            f"{r.tolerance * 100:.3g}%" if r.direction else "",
            r.verdict,
        ]
        for r in cmp.rows
        if show_all or r.verdict not in ("same", "ok")
    ]
    lines = [
        tabulate(
            rows,
            headers=["SAE", "eval", "metric", "baseline", "new", "diff", "rel", "tol", "verdict"],
            tablefmt="github",
        )
    ]
    for item in cmp.unmatched_new:
        lines.append(f"note: {item} has no baseline (not compared)")
    for item in cmp.unmatched_baseline:
        lines.append(f"note: baseline {item} has no new result (not compared)")
    for item in cmp.config_diffs:
        lines.append(f"note: configs differ: {item}")
    new_metrics = [f"{r.sae}/{r.evaluator}/{r.metric}" for r in cmp.rows if r.verdict == "new metric"]
    if new_metrics:
        lines.append(
            f"note: baseline lacks {len(new_metrics)} metric(s) the new run has: {', '.join(new_metrics[:8])} "
            "(reported, not a failure)"
        )
    fails = cmp.failures
    if fails:
        what = ", ".join(
            f"{r.metric} of {r.sae}/{r.evaluator} ({_fmt(r.baseline)} → {_fmt(r.new)}, {_pct(r.rel) or r.verdict})"
            for r in fails
        )
        lines.append(f"FAIL: {len(fails)} metric(s) worse than tolerance: {what}")
    else:
        n = sum(r.verdict in ("same", "ok", "better", "changed") for r in cmp.rows)
        same = sum(r.verdict == "same" for r in cmp.rows)
        lines.append(f"OK: {n} metric(s) compared, none worse than tolerance ({same} identical)")
    return "\n".join(lines)
