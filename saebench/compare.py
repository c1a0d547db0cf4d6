"""``saebench compare``: is A better than B, and did anything really get worse (the CI gate).

Results are matched by (SAE name, evaluator), or every new SAE is compared with one baseline SAE
(``--against``), or two single-SAE result sets are compared directly (``saebench compare A B``).
For every metric both sides report, the row shows both values, the difference ``new - baseline``
with its 95% interval and a verdict:

- the interval comes from the per-unit samples stored in both results (:mod:`saebench.stats`):
  *paired* when the units coincide (same token contexts, same task samples, same latents of the
  same SAE: one resample of the same independent units, documents for contexts, for both
  sides), otherwise Welch's t interval from the two standard errors; a metric with only a
  stored standard error on each side gets Welch's t interval from those (normal, ±1.96·√(se_a² +
  se_b²), for results that stored no degrees of freedom);
- a directional metric is ``WORSE`` when the interval excludes 0 on its bad side, the difference
  stays significant family-wise (Holm over the directional metrics judged by an interval: a
  gate tests dozens at once and must not fail on noise; see :func:`_family_wise`) *and* the
  change exceeds its minimum effect (the metric's declared ``min_effect``, absolute, or
  ``min_rel_effect`` × |baseline|; ``--min-effect`` overrides), ``better`` symmetrically, else
  ``within noise`` (``same`` when identical, whatever the intervals). A metric with no interval
  (too few independent units, no spread) is judged by its minimum effect alone, and says so in
  ``Row.basis``; one with neither interval nor minimum effect is not judged (``changed``): it
  cannot fail the gate on its own. Descriptive metrics (no direction) are ``same`` or ``changed``;
- a metric the new results lack (any metric, directional or not), and every baseline evaluator the
  new results lack for an SAE they hold (a run that crashed before it), is a failure naming it:
  a gate that did not measure something must not pass it (``--only-run`` gates only what ran;
  ``--ignore`` skips one metric). A directional metric undefined (null), NaN or infinite on one
  side fails too; null on *both* sides is ``same`` (e.g. a free-text autointerp score of an
  offline run). A metric only the new results have is reported as ``new metric``.

Results made with different configurations (model, hook, token count, context, corpus, dtype,
evaluator settings) are not compared: that is its own error (exit 3) naming the differing keys,
never a regression. Different seeds are comparable (different samples, compared unpaired).

Exit status: 0 no regression, 1 a metric is worse (named on the last line), 2 bad input,
3 incomparable configurations.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

from saebench import stats
from saebench.display import fmt
from saebench.errors import SaebenchError
from saebench.evaluators import Metric, metric_table
from saebench.results import Result, is_baseline, read_results

#: config keys whose difference makes two results measure different things
INCOMPARABLE_KEYS = ("model", "hook", "hook_out", "n_tokens", "ctx_len", "corpus", "split", "dtype", "evaluator_config")
FLOAT_NOISE = 1e-9  # relative: below this a difference is rounding, whatever the metric
FAILING = ("WORSE", "missing", "undefined")


class IncomparableError(SaebenchError):
    """Two results were made with different configurations (exit status 3)."""


@dataclass
class Row:
    """One metric of one compared (SAE, evaluator) pair."""

    sae: str
    evaluator: str
    metric: str
    direction: str
    baseline: Any
    new: Any
    diff: float | None
    low: float | None
    high: float | None
    paired: bool
    min_effect: float | None
    verdict: str
    se: float | None = None  # standard error of the difference (from the same draws or stored se's)
    df: float | None = None  # its degrees of freedom (None: normal)
    basis: str = ""  # how the verdict was reached when not by an interval (e.g. "minimum effect only: ...")

    @property
    def failed(self) -> bool:
        return self.verdict in FAILING


@dataclass
class Comparison:
    rows: list[Row] = field(default_factory=list)
    unmatched_new: list[str] = field(default_factory=list)
    unmatched_baseline: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    labels: tuple[str, str] = ("new", "baseline")
    direct: bool = False

    @property
    def failures(self) -> list[Row]:
        return [r for r in self.rows if r.failed]


def parse_min_effects(items: list[str]) -> dict[str, tuple[float, bool]]:
    """``METRIC=VALUE`` (absolute) or ``METRIC=VALUE%`` (relative to the baseline); ``*`` for all."""
    out: dict[str, tuple[float, bool]] = {}
    for item in items:
        key, eq, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not eq or not key or not raw:
            raise SaebenchError(f"--min-effect {item!r} must look like METRIC=VALUE or METRIC=VALUE%, e.g. fvu=0.01")
        rel = raw.endswith("%")
        try:
            val = float(raw[:-1]) / 100 if rel else float(raw)
        except ValueError as exc:
            raise SaebenchError(f"--min-effect {item!r}: {raw!r} is not a number; use e.g. fvu=0.01 or fvu=1%") from exc
        if not math.isfinite(val) or val < 0:
            raise SaebenchError(f"--min-effect {item!r}: the minimum effect must be a finite number >= 0")
        out[key] = (val, rel)
    return out


def collect(paths: list[str | Path], what: str) -> dict[tuple[str, str], Result]:
    """Results keyed by (SAE name, evaluator); damaged files are named in a warning (or, when nothing
    readable is left, in the error)."""
    found: dict[tuple[str, str], tuple[Result, Path]] = {}
    for f, res in read_results(paths, what):
        key = (res.sae.name, res.evaluator)
        if key in found:
            warnings.warn(
                f"{what}: {f} and {found[key][1]} both hold {key[1]} results for SAE {key[0]!r}; using {f}",
                stacklevel=2,
            )
        found[key] = (res, f)
    return {k: v[0] for k, v in found.items()}


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def config_differences(a: Result, b: Result) -> list[str]:
    diffs = []
    for k in INCOMPARABLE_KEYS:
        va, vb = a.config.get(k), b.config.get(k)
        if k == "n_tokens":
            va, vb = a.config.get("n_tokens", a.config.get("tokens")), b.config.get("n_tokens", b.config.get("tokens"))
        if va != vb:
            diffs.append(f"{k} ({va!r} vs {vb!r})" if k != "evaluator_config" else f"{k} of {a.evaluator}")
    return diffs


def _threshold(decl: Metric | None, base: float, override: dict[str, tuple[float, bool]], name: str) -> float:
    if name in override or "*" in override:
        val, rel = override.get(name, override.get("*", (0.0, False)))
        effect = val * abs(base) if rel else val
    elif decl is not None:
        effect = max(decl.min_effect, decl.min_rel_effect * abs(base))
    else:
        effect = 0.0
    return max(effect, FLOAT_NOISE * max(1.0, abs(base)))


def difference_interval(
    decl: Metric | None, name: str, new: Result, base: Result, stored_when_unpaired: bool = False
) -> tuple[float | None, float | None, bool, float | None, float | None, str]:
    """95% interval of new - base, its standard error and degrees of freedom, from the samples
    (:func:`saebench.stats.difference`: paired where the units coincide, Welch's t otherwise), else
    from the two stored standard errors (Welch's t with the stored degrees of freedom; normal for
    results that stored none), else none, with the reason (last element).

    ``stored_when_unpaired``: when the two sides' units differ (different latents of two SAEs),
    take Welch's t from the stored standard errors instead of recomputing both sides' intervals
    from their samples (the same numbers, without the resampling: the board's significance marks
    compare every SAE with the best)."""
    est = decl.estimator if decl is not None else None
    paired_units = (
        est is not None
        and est.unit in new.samples
        and est.unit in base.samples
        and new.samples[est.unit].get("ids") == base.samples[est.unit].get("ids")
    )
    if (
        est is not None
        and est.unit in new.samples
        and est.unit in base.samples
        and (paired_units or not stored_when_unpaired)
    ):
        d = stats.difference(est, stats.samples_from_json(new.samples), est, stats.samples_from_json(base.samples))
        return d.low, d.high, d.paired, d.se, d.df, d.reason
    ua, ub = new.uncertainty.get(name, {}), base.uncertainty.get(name, {})
    if _finite(ua.get("se")) and _finite(ub.get("se")):
        diff = float(new.metrics[name]) - float(base.metrics[name])
        df_a, df_b = ua.get("df"), ub.get("df")
        se, df = stats.welch(
            float(ua["se"]),
            float(df_a) if _finite(df_a) else None,
            float(ub["se"]),
            float(df_b) if _finite(df_b) else None,
        )
        q = stats.t_quantile(math.inf if df is None else df)
        return diff - q * se, diff + q * se, False, se, df, ""
    why = ua.get("reason") or ub.get("reason") or "no samples or standard errors"
    return None, None, False, None, None, str(why)


def family_z(m: int, level: float = 0.95) -> float:
    """The two-sided normal quantile that keeps the chance of *any* of ``m`` unchanged metrics
    crossing it at 1 - ``level`` (Bonferroni): 1.96 for one metric, 3.14 for 30."""
    return NormalDist().inv_cdf(1 - (1 - level) / (2 * max(m, 1)))


def _family_wise(rows: list[Row], level: float = 0.95) -> None:
    """Holm's step-down over the family: demote a better/WORSE verdict to ``within noise`` unless
    its difference stays significant at family-wise level 1 - ``level``.

    The family is every directional row judged by an interval in this comparison (all SAEs and
    evaluators together): the gate fails if any one of them fails, so the chance of a false
    failure is the chance that *any* of them crosses. Holm (p_(i) <= α / (m - i + 1), in order
    of p-value, stopping at the first that is not) controls that chance at α under any
    dependence between metrics, like Bonferroni (α / m for all), and rejects at least as much.
    p-values are two-sided t (degrees of freedom of each row's interval; normal where none).
    Rows judged by their minimum effect alone (no interval) and descriptive rows are not in it.
    At 95% per metric, two runs of the same SAE with different seeds would fail somewhere about
    every other time (measured: benchmarks/noise.py)."""
    tested = [r for r in rows if r.se is not None and r.se > 0 and r.direction and r.diff is not None]
    alpha, m = 1 - level, len(tested)
    significant = stats.holm([stats.t_pvalue(r.diff / r.se, r.df) for r in tested], alpha)  # type: ignore[operator]
    for i, r in enumerate(tested):
        if r.verdict in ("WORSE", "better") and i not in significant:
            r.verdict = "within noise"
            r.basis = r.basis or f"not significant family-wise (Holm over {m} metrics)"


def compare_metric(
    name: str,
    decl: Metric | None,
    new: Result,
    base: Result,
    override: dict[str, tuple[float, bool]],
    seed_sd: tuple[float, int] | None = None,
) -> Row:
    """One row: values, difference with interval, verdict (see module doc). ``seed_sd``: the metric's
    training-seed standard deviation and its df (a reliability file): the two sides are then two
    training runs, and the difference's variance gains 2·seed_sd² (Welch–Satterthwaite df)."""
    direction = decl.direction if decl is not None else ""
    b, n = base.metrics.get(name, "absent"), new.metrics.get(name, "absent")
    key = (new.sae.name, new.evaluator, name, direction, base.metrics.get(name), new.metrics.get(name))
    if b == "absent" and n != "absent":
        return Row(*key, None, None, None, False, None, "new metric")  # nothing to regress from
    if n == "absent":
        return Row(*key, None, None, None, False, None, "missing")  # the new run did not measure it
    if b is None and n is None:
        return Row(*key, None, None, None, False, None, "same")  # undefined (null) on both sides: nothing changed
    if direction and (not _finite(b) or not _finite(n)):
        return Row(*key, None, None, None, False, None, "undefined")  # a gate that cannot check must not pass
    if not _finite(b) or not _finite(n):
        return Row(*key, None, None, None, False, None, "same" if b == n else "changed")
    diff = float(n) - float(b)
    effect = _threshold(decl, float(b), override, name)
    if diff == 0:
        return Row(*key, 0.0, None, None, False, effect if direction else None, "same")  # identical values
    if not direction:
        return Row(*key, diff, None, None, False, None, "changed")
    low, high, paired, se, df, why = difference_interval(decl, name, new, base)
    if seed_sd is not None:
        retrain = math.sqrt(2.0) * seed_sd[0]
        se, df = stats.welch(se, df, retrain, float(seed_sd[1])) if se is not None else (retrain, float(seed_sd[1]))
        q = stats.t_quantile(math.inf if df is None else df)
        low, high, why = diff - q * se, diff + q * se, ""
    bad = diff > 0 if direction == "down" else diff < 0
    basis = ""
    if low is None:  # no interval: only the minimum effect decides, and with none the metric is not judged
        declared = (
            name in override or "*" in override or (decl is not None and (decl.min_effect or decl.min_rel_effect))
        )
        if not declared:
            return Row(*key, diff, None, None, paired, None, "changed", None, None,
                       f"not judged: no interval ({why}) and no minimum effect")  # fmt: skip
        basis = f"minimum effect only: no interval ({why})"
    outside = low is None or (low > 0 if diff > 0 else high < 0)
    if abs(diff) > effect and outside:
        verdict = "WORSE" if bad else "better"
    else:
        verdict = "within noise"
    return Row(*key, diff, low, high, paired, effect, verdict, se, df, basis)


def compare(
    new_paths: list[str | Path],
    baseline_paths: list[str | Path],
    min_effects: dict[str, tuple[float, bool]] | None = None,
    against: str | None = None,
    ignore: tuple[str, ...] = (),
    direct: bool = False,
    only_run: bool = False,
    seed_variance: dict[tuple[str, str], tuple[float, int]] | None = None,
) -> Comparison:
    """Compare the results under ``new_paths`` with those under ``baseline_paths``.

    ``against``: compare every new SAE with this one baseline SAE (same evaluator). ``direct``:
    each side holds one SAE; compare them whatever their names (``saebench compare A B``).
    The gate (not ``direct``) fails on every baseline result and metric the new side lacks: a run
    that crashed before an evaluator, or no longer reports a metric, measured nothing there.
    ``only_run`` restricts the gate to the evaluators the new side ran (a baseline evaluator the
    new results do not hold is then a note, not a failure). ``seed_variance``
    (:func:`saebench.reliability.load_seed_variance`): add each metric's training-seed variance to the
    noise model, for a retrained SAE compared with another training run (default: the same weights).
    """
    override = dict(min_effects or {})
    new = collect(list(new_paths), "new results")
    base = collect(list(baseline_paths), "baseline")
    if not new:
        raise SaebenchError(
            f"no saebench results in {', '.join(map(str, new_paths))}; run `saebench run --out DIR` first"
        )
    if not base:
        raise SaebenchError(f"no saebench results in baseline {', '.join(map(str, baseline_paths))}; check the path")
    out = Comparison(direct=direct)
    if not direct:  # floors are not SAEs under test: a gate neither fails nor passes on them
        skipped = sorted({s for s, _ in list(new) + list(base) if is_baseline(s) and s != against})
        if skipped:
            out.notes.append(
                f"skipped {len(skipped)} baseline(s) (floors, not SAEs under test; saebench.baselines): "
                + ", ".join(skipped)
            )
            new = {k: v for k, v in new.items() if not is_baseline(k[0])}
            base = {k: v for k, v in base.items() if not is_baseline(k[0]) or k[0] == against}
            if not new:
                raise SaebenchError(
                    "every new result is a baseline (baseline-*): the gate compares SAEs under test; "
                    "gate your SAEs, or use `saebench compare A B` to compare a baseline directly"
                )
    if direct:
        names_a, names_b = sorted({s for s, _ in new}), sorted({s for s, _ in base})
        if len(names_a) != 1 or len(names_b) != 1:
            raise SaebenchError(
                f"compare A B needs one SAE on each side; got {names_a} and {names_b}: "
                "pass single-SAE result folders, or use --baseline to match by name"
            )
        base = {(names_a[0], e): r for (_, e), r in base.items()}
        out.labels = (names_a[0], names_b[0])
    elif against is not None:
        chosen = {e: r for (s, e), r in base.items() if s == against}
        if not chosen:
            names = sorted({s for s, _ in base})
            raise SaebenchError(f"--against {against!r}: no baseline SAE of that name (have: {', '.join(names[:8])})")
        base = {(s, e): r for s in sorted({s for s, _ in new}) for e, r in chosen.items()}
    known = {m for r in list(new.values()) + list(base.values()) for m in r.metrics}
    unknown = sorted(set(override) - known - {"*"}) + sorted(set(ignore) - known)
    if unknown:
        raise SaebenchError(f"--min-effect / --ignore name metric(s) no result has: {', '.join(unknown)}")
    out.unmatched_new = [f"{s}/{e}" for s, e in sorted(set(new) - set(base))]
    out.unmatched_baseline = [f"{s}/{e}" for s, e in sorted(set(base) - set(new))]
    matched = sorted(set(new) & set(base))
    if not matched:
        raise SaebenchError(
            f"no new result matches a baseline by SAE name + evaluator (new: {', '.join(out.unmatched_new[:5])}; "
            f"baseline: {', '.join(out.unmatched_baseline[:5])}); pass --against BASELINE_SAE to compare every new SAE "
            "with one baseline SAE, or name the SAE with --name when running"
        )
    if not direct and not only_run:
        ran = {s for s, _ in new}
        out.rows += [
            Row(s, e, "(every metric)", "", None, None, None, None, None, False, None, "missing")
            for s, e in sorted(set(base) - set(new))
            if s in ran  # an SAE the new side does not hold at all is a name mismatch, reported below
        ]
    incomparable = [
        f"{s}/{e}: {', '.join(d)}" for (s, e) in matched if (d := config_differences(new[(s, e)], base[(s, e)]))
    ]
    if incomparable:
        raise IncomparableError(
            f"results were made with different configurations and are not compared: {'; '.join(incomparable[:4])}; "
            "rerun one side with the other's settings"
        )
    for s, e in matched:
        if new[(s, e)].config.get("seed") != base[(s, e)].config.get("seed"):
            out.notes.append(f"{s}/{e}: different seeds (different samples: compared unpaired)")
    decl = metric_table(sorted({e for _, e in matched}), list(base.values()) + list(new.values()))
    for key in matched:
        b, n = base[key], new[key]
        names = sorted(m for m in set(b.metrics) | set(n.metrics) if m not in ignore)
        sv = seed_variance or {}
        rows = [compare_metric(m, decl.get(key[1], {}).get(m), n, b, override, sv.get((key[1], m))) for m in names]
        if only_run or direct:  # a metric the new side did not compute is a note, not a failure
            for r in rows:
                if r.verdict == "missing":
                    r.verdict = "not run"
        out.rows += rows
    _family_wise(out.rows)
    return out


def diff_text(r: Row) -> str:
    """The difference with its 95% interval as the table shows it (``p``: paired)."""
    if r.diff is None:
        return ""
    if r.low is None:
        return f"{r.diff:+.4g}"
    return f"{r.diff:+.4g} [{r.low:+.3g}, {r.high:+.3g}]{' p' if r.paired else ''}"


def render(cmp: Comparison, show_all: bool = True, direct: bool = False) -> str:
    """The per-metric table and a summary line naming every failing metric.

    ``compare A B`` (direct) shows A's value, then B's, under their names, and A − B; the gate
    shows baseline, then new, and new − baseline."""
    from tabulate import tabulate

    arrow = {"up": "↑", "down": "↓", "": ""}
    a_label, b_label = cmp.labels
    words = {"WORSE": f"{a_label} worse", "better": f"{a_label} better"} if direct else {}
    quiet = ("same", "within noise", "changed", "not run")
    rows = []
    for r in cmp.rows:
        if not show_all and r.verdict not in FAILING and r.verdict in quiet:
            continue
        values = [fmt(r.new), fmt(r.baseline)] if direct else [fmt(r.baseline), fmt(r.new)]
        rows.append(
            ([] if direct else [r.sae])
            + [r.evaluator, f"{r.metric} {arrow[r.direction]}".rstrip(), *values, diff_text(r)]
            + ["" if r.min_effect is None else f"{r.min_effect:.3g}", words.get(r.verdict, r.verdict)]
        )
    heads = (
        ["eval", "metric", f"A: {a_label}", f"B: {b_label}", "A − B [95% CI] (p: paired)"]
        if direct
        else ["SAE", "eval", "metric", "baseline", "new", "new − baseline [95% CI] (p: paired)"]
    ) + ["min effect", "verdict"]
    lines = [tabulate(rows, headers=heads, tablefmt="github")]
    lines += [f"note: {x} has no baseline (not compared)" for x in cmp.unmatched_new]
    missing_fail = {f"{r.sae}/{r.evaluator}" for r in cmp.rows if r.metric == "(every metric)"}
    lines += [
        f"note: baseline {x} has no new result (not compared)" for x in cmp.unmatched_baseline if x not in missing_fail
    ]
    lines += [f"note: {x}" for x in cmp.notes]
    fails = cmp.failures
    if direct:
        better = sum(r.verdict == "better" for r in cmp.rows)
        worse = sum(r.verdict == "WORSE" for r in cmp.rows)
        lines.append(f"A = {a_label} vs B = {b_label}: A better on {better}, worse on {worse} metric(s) beyond noise")
    elif fails:
        what = ", ".join(_failure(r) for r in fails)
        lines.append(f"FAIL: {len(fails)} metric(s) worse beyond noise or not measured: {what}")
    else:
        n = len(cmp.rows)
        same = sum(r.verdict == "same" for r in cmp.rows)
        noise = sum(r.verdict == "within noise" for r in cmp.rows)
        lines.append(f"OK: {n} metric(s) compared, none worse beyond noise ({same} identical, {noise} within noise)")
    return "\n".join(lines)


def _failure(r: Row) -> str:
    if r.metric == "(every metric)":
        return f"{r.sae}/{r.evaluator} (the baseline has it, the new results do not; --only-run to gate only what ran)"
    if r.verdict == "missing":
        return f"{r.metric} of {r.sae}/{r.evaluator} (the new result does not report it)"
    return f"{r.metric} of {r.sae}/{r.evaluator} ({fmt(r.baseline)} → {fmt(r.new)}, {diff_text(r) or r.verdict})"
