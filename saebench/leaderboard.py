"""Markdown leaderboard from result JSONs: per (model, hook, run config) a summary table and one
table per evaluator, one row per SAE, every sampled number shown as ``value ± half-width`` of its
95% interval; and the sparsity frontier (L0 against each headline metric) as PNG plots beside it.

Columns are the headline metrics each evaluator declares (``Evaluator.metrics``, see
:mod:`saebench.evaluators.base`; a plugin's results carry their declarations), so a plugin's
headline metrics reach the board with no change here. The summary shows the first
:data:`SUMMARY_CORE` headline metrics of ``core`` and the first :data:`SUMMARY_OTHER` of every
other evaluator.

Rows are sorted by SAE name and numbers are formatted with fixed precision, so the same results
always give the same bytes (the PNGs too, with one matplotlib version: no timestamps or software
tag are written). Results from different models, hooks or run configs (profile, tokens, context,
seed, corpus) are grouped, never merged; transcoders are grouped by input and output hook, in
their own sections after the SAEs (a different reconstruction target is a different ranking).
Corrupt or foreign JSON files are skipped with a warning naming them.
"""

from __future__ import annotations

import json
import re
import textwrap
import warnings
from pathlib import Path
from typing import Any

from saebench.display import ARROW, interval_ends, with_interval
from saebench.errors import SaebenchError
from saebench.evaluators import Metric, metric_table
from saebench.io import atomic_write_bytes, slug
from saebench.reliability import icc_text, load_reliability
from saebench.results import Result, is_baseline, load_results
from saebench.significance import Marks, marks, resolved_pairs

BUILTIN_ORDER = ("core", "probing", "n2g", "ablation", "autointerp")
#: the seed-reliability verdict's symbol beside a column header (saebench.reliability.VERDICTS order)
VERDICT_SYMBOL = {
    "ranks architectures": "●",
    "separates only large differences": "◐",
    "cannot rank at this profile": "○",
}
SUMMARY_CORE = 5
SUMMARY_OTHER = 1

Group = tuple[str, str, str]
Rows = dict[str, dict[str, Any]]  # sae name -> {"architecture", "d_sae", "results": {evaluator: Result}}


def evaluator_order(names: list[str] | set[str]) -> list[str]:
    """Built-in evaluators first (core, probing, n2g, ablation, autointerp), then others by name."""
    return sorted(names, key=lambda n: (BUILTIN_ORDER.index(n) if n in BUILTIN_ORDER else len(BUILTIN_ORDER), n))


def _config_label(r: Result) -> str:
    c = r.config
    return (
        f"profile {c.get('profile')}, {c.get('tokens', c.get('n_tokens'))} tokens, ctx {c.get('ctx_len')}, "
        f"seed {c.get('seed')}, corpus {c.get('corpus')}"
    )


#: between a transcoder's input and output hook in its group's hook label
TRANSCODER_ARROW = " → "


def hook_label(r: Result) -> str:
    """The hook a result is ranked at: its hook, or ``input → output`` for a transcoder (config
    ``hook_out``): a different reconstruction target is a different ranking, never one table."""
    hook, out = str(r.config.get("hook")), r.config.get("hook_out")
    return f"{hook}{TRANSCODER_ARROW}{out}" if out else hook


def is_transcoder_group(key: Group) -> bool:
    """Whether a group holds transcoders (its hook label names an output hook)."""
    return TRANSCODER_ARROW in key[1]


def group_order(keys: Any) -> list[Group]:
    """Groups in board order: SAEs by (model, hook, config), then the transcoders' section."""
    return sorted(keys, key=lambda k: (is_transcoder_group(k), k))


def group_results(results: list[Result]) -> dict[Group, Rows]:
    """``{(model, hook label, config label): {sae name: row}}`` (:func:`hook_label`: transcoders are
    grouped by input and output hook); a row holds the SAE's architecture, width and its result per
    evaluator."""
    groups: dict[Group, Rows] = {}
    for r in results:
        key = (str(r.config.get("model")), hook_label(r), _config_label(r))
        row = groups.setdefault(key, {}).setdefault(
            r.sae.name, {"architecture": r.sae.architecture, "d_sae": r.sae.d_sae, "results": {}}
        )
        row["results"][r.evaluator] = r
    return groups


def mixed_rows(rows: Rows) -> dict[str, str]:
    """Rows whose results come from different SAEs (different fingerprints under one name: two SAEs
    given the same name, evaluated into one folder), each with a description naming them. Such a
    row is flagged on the board (``⚠``): its numbers do not describe one SAE."""
    out = {}
    for name, row in rows.items():
        fps: dict[str, list[str]] = {}
        for ev, r in sorted(row["results"].items()):
            fps.setdefault(r.sae.fingerprint, []).append(ev)
        if len(fps) > 1:
            out[name] = "; ".join(f"fingerprint {fp}: {', '.join(evs)}" for fp, evs in sorted(fps.items()))
    return out


def cell(r: Result | None, name: str) -> str:
    """The metric's value with its 95% interval as :func:`saebench.display.with_interval` writes it
    (``v ± h``, ``v [lo, hi]`` when asymmetric, ``v (n=k)`` with too few independent units for
    one); blank if absent."""
    if r is None or name not in r.metrics:
        return ""
    return with_interval(r.metrics[name], r.uncertainty.get(name))


def resolution_flags(rows: Rows, cols: list[tuple[str, Metric]]) -> dict[tuple[str, str], str]:
    """``{(evaluator, metric): why}`` for the columns a group cannot resolve: some result's
    ``details.resolution[metric]`` (written by scr, tpp, absorption, sparse_probing) says one sampled
    unit (a text, a word) moves the number by at least the metric's minimum effect at this profile.
    The board marks those columns (⚠) and prints why under the table."""
    out: dict[tuple[str, str], str] = {}
    for row in rows.values():
        for ev, m in cols:
            r = row["results"].get(ev)
            entry = (r.details.get("resolution") or {}).get(m.name) if r is not None else None
            if isinstance(entry, dict) and entry.get("resolves") is False:
                out.setdefault((ev, m.name), str(entry.get("why", "")))
    return out


def row_order(rows: Rows) -> list[str]:
    """The board's row order: SAEs by name, then the baselines (floors) by name."""
    return sorted(rows, key=lambda n: (is_baseline(n), n))


def column_marks(rows: Rows, cols: list[tuple[str, Metric]]) -> dict[tuple[str, str], Marks]:
    """Per column, the best SAE and those not distinguishable from it (:func:`saebench.significance.marks`)."""
    return {(ev, m.name): marks(rows, ev, m) for ev, m in cols}


def marked_cell(text: str, name: str, mk: Marks | None) -> str:
    """A markdown cell with its significance mark: bold when the SAE is the best (★) or not
    distinguishable from it."""
    if not text or mk is None or not mk.bold(name):
        return text
    return f"**{text}**" + (" ★" if name == mk.best else "")


def verdict_symbol(reliability: dict[tuple[str, str], Any] | None, ev: str, metric: str) -> str:
    """The seed-reliability verdict of a column as a symbol (●, ◐, ○); empty when not measured."""
    r = (reliability or {}).get((ev, metric))
    return VERDICT_SYMBOL.get(r.verdict, "") if r is not None else ""


def _table(rows: Rows, cols: list[tuple[str, Metric]], mk: dict[tuple[str, str], Marks] | None = None,
           reliability: dict[tuple[str, str], Any] | None = None) -> str:  # fmt: skip
    from tabulate import tabulate

    flagged = resolution_flags(rows, cols)
    mk = mk if mk is not None else column_marks(rows, cols)
    headers = ["SAE", "arch", "d_sae"] + [
        " ".join(
            x
            for x in (
                m.column + ARROW[m.direction],
                "⚠" if (ev, m.name) in flagged else "",
                verdict_symbol(reliability, ev, m.name),
            )
            if x
        )
        for ev, m in cols
    ]
    mixed = mixed_rows(rows)
    body = []
    for name in row_order(rows):
        row = rows[name]
        label = name + (" ⚠" if name in mixed else "")
        body.append(
            [f"*{label}*" if is_baseline(name) else label, row["architecture"], row["d_sae"]]
            + [marked_cell(cell(row["results"].get(ev), m.name), name, mk[(ev, m.name)]) for ev, m in cols]
        )
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


def headline_columns(rows: Rows, evaluators: list[str], decl: dict[str, dict[str, Metric]]) -> dict[str, list[Metric]]:
    """Per evaluator, the headline metrics that some row of the group reports: its table's columns
    (every renderer, markdown or HTML, shows these)."""
    return {ev: [m for m in decl.get(ev, {}).values() if m.headline and _filled(rows, ev, m.name)] for ev in evaluators}


def summary_columns(evaluators: list[str], heads: dict[str, list[Metric]]) -> list[tuple[str, Metric]]:
    """The summary table's (evaluator, metric) columns: the first :data:`SUMMARY_CORE` headline
    metrics of core and the first :data:`SUMMARY_OTHER` of every other evaluator."""
    return [(ev, m) for ev in evaluators for m in heads[ev][: SUMMARY_CORE if ev == "core" else SUMMARY_OTHER]]


def _filled(rows: Rows, evaluator: str, metric: str) -> bool:
    """Whether any row of a group reports ``metric`` (a headline no row has, e.g. a SAEBench-mode
    name on a board of variant results, gets no empty column)."""
    return any(
        metric in (row["results"][evaluator].metrics if evaluator in row["results"] else {}) for row in rows.values()
    )


def _plot_metrics(decl: dict[str, dict[str, Metric]], evaluators: list[str]) -> list[tuple[str, Metric]]:
    """(evaluator, metric) of every headline metric but L0 itself: one frontier plot each."""
    return [(ev, m) for ev in evaluators for m in decl.get(ev, {}).values() if m.headline and m.name != "l0"]


def _curve_names(rows: Rows, evaluators: list[str]) -> list[tuple[str, str]]:
    """(evaluator, curve) for every curve an evaluator returned (``details["curves"]``, e.g. ksweep)."""
    found = {
        (ev, c) for row in rows.values() for ev, r in row["results"].items() for c in r.details.get("curves") or {}
    }
    return [(ev, c) for ev in evaluators for c in sorted(c for e, c in found if e == ev)]


def plot_names(groups: dict[Group, Rows], stem: str, results: list[Result]) -> dict[Group, dict[str, str]]:
    """File names of each group's plots (stable: from model, hook, config order and metric name)."""
    names: dict[Group, dict[str, str]] = {}
    seen: dict[tuple[str, str], int] = {}
    for key in sorted(groups):
        model, hook, _ = key
        n = seen.get((model, hook), 0)
        seen[(model, hook)] = n + 1
        base = f"{stem}-{slug(model)}-{slug(hook)}" + (f"-c{n + 1}" if n else "")
        evs = evaluator_order({e for row in groups[key].values() for e in row["results"]})
        decl = metric_table(evs, results)
        names[key] = {f"{ev}.{m.name}": f"{base}-{slug(ev)}-{slug(m.name)}.png" for ev, m in _plot_metrics(decl, evs)}
        names[key].update({f"{ev}.curve.{c}": f"{base}-{slug(ev)}-curve-{slug(c)}.png"
                           for ev, c in _curve_names(groups[key], evs)})  # fmt: skip
    return names


def on_board(decl: dict[str, Metric]) -> bool:
    """Whether an evaluator's results belong on the markdown board: it declares a headline metric
    (or declares nothing, as old plugin results may: those are shown as before)."""
    return not decl or any(m.headline for m in decl.values())


def load_validity(path: str | Path) -> list[dict[str, Any]]:
    """The validity rows of a synthetic-track file (``benchmarks/groundtruth.py`` writes them in its
    ``track.json``; the board's copy is ``leaderboard/validity.json``): per evaluator score, the
    Spearman rank correlation over the synthetic zoo with the ground-truth quantity it claims to
    measure. A missing or malformed file is one line naming it."""
    path = Path(path)
    try:
        rows = json.loads(path.read_text())["validity"]
        for r in rows:
            for k in ("evaluator", "score", "truth", "sign", "rho", "p", "n"):
                r[k]  # noqa: B018 - KeyError names the missing field
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SaebenchError(
            f"cannot read validity rows from {path} ({type(exc).__name__}: {exc}); pass the track.json that "
            "`python benchmarks/groundtruth.py` writes (docs/groundtruth.md)"
        ) from None
    return rows


def tracks(row: dict[str, Any], alpha: float = 0.05) -> bool:
    """A score tracks its truth: rank correlation of the expected sign, significant at ``alpha``."""
    return row["rho"] is not None and row["sign"] * row["rho"] > 0 and row["p"] is not None and row["p"] < alpha


def _validity_line(row: dict[str, Any]) -> str:
    verdict = "tracks it" if tracks(row) else "⚠ **does not track it**"
    return (
        f"`{row['score']}` vs true `{row['truth']}`: Spearman ρ = {row['rho']:+.2f} (p = {row['p']:.2g}, "
        f"{row['n']} synthetic SAEs; expected sign {'+' if row['sign'] > 0 else '−'}): {verdict}"
    )


def _validity_section(rows: list[dict[str, Any]]) -> list[str]:
    from tabulate import tabulate

    table = [
        [r["evaluator"], f"`{r['score']}`", f"`{r['truth']}`", f"{r['rho']:+.2f}", f"{r['p']:.2g}", r["n"],
         "tracks" if tracks(r) else "⚠ does not track"]
        for r in rows
    ]  # fmt: skip
    return [
        "## Validity on synthetic ground truth",
        "",
        "Each evaluator's own scoring code run on SAEs trained on a synthetic source whose true features are "
        "known, and the Spearman rank correlation over those SAEs between its score and the true quantity it "
        "claims to measure (docs/groundtruth.md; `python benchmarks/groundtruth.py`). Not listed: evaluators "
        "that need real text or a model (not yet validated).",
        "",
        tabulate(
            table,
            headers=["evaluator", "score", "truth", "ρ", "p", "SAEs", "verdict"],
            tablefmt="github",
            disable_numparse=True,
        ),
        "",
    ]


def resolution_rows(rows: Rows, cols: list[tuple[str, Metric]], mk: dict[tuple[str, str], Marks],
                    reliability: dict[tuple[str, str], Any] | None) -> list[list[str]]:  # fmt: skip
    """Per directional headline column of a section: pairwise differences resolved (Holm over the
    pairs), SAEs not distinguishable from the best, and the column's seed-reliability verdict."""
    out = []
    for ev, m in cols:
        if m.direction not in ("up", "down"):
            continue
        done, total = resolved_pairs(rows, ev, m)
        if not total:
            continue
        marks_ = mk[(ev, m.name)]
        rel = (reliability or {}).get((ev, m.name))
        seed = "not measured" if rel is None else f"{VERDICT_SYMBOL[rel.verdict]} {rel.verdict} (ICC {icc_text(rel)})"
        out.append([ev, m.column or m.name, f"{done} of {total}", f"{len(marks_.tied)} of {marks_.compared}", seed])
    return out


def _significance_section(rows: Rows, cols: list[tuple[str, Metric]], mk: dict[tuple[str, str], Marks],
                          reliability: dict[tuple[str, str], Any] | None) -> list[str]:  # fmt: skip
    from tabulate import tabulate

    body = resolution_rows(rows, cols, mk, reliability)
    if not body:
        return []
    heads = ["evaluator", "metric", "pairs resolved", "tied with the best", "training-seed reliability"]
    return [
        "### What each column can tell apart",
        "",
        "Pairs resolved: the SAE pairs whose difference is significant (paired over the same units where they "
        "coincide, else Welch; Holm over the column's pairs, 5% family-wise). Tied with the best: the SAEs in bold. "
        "Training-seed reliability: from the reliability file (docs/seed_reliability.md): whether the column's "
        "ordering of *configurations* survives retraining.",
        "",
        tabulate(body, headers=heads, tablefmt="github", disable_numparse=True),
        "",
    ]


def _reliability_section(reliability: dict[tuple[str, str], Any]) -> list[str]:
    from saebench.reliability import render as render_reliability

    return [
        "## Training-seed reliability",
        "",
        "Each configuration retrained with other seeds and evaluated at the same profile (`saebench reliability`; "
        "docs/seed_reliability.md): data SE is the mean width of today's intervals (one run), seed SD the spread "
        "between retrainings, between SD the spread between configurations; ICC(1) with its 95% interval; τ the "
        "Kendall rank agreement between seeds. ● ranks architectures (ICC ≥ 0.75 with its lower bound ≥ 0.5, "
        "τ ≥ 0.6), ◐ separates only large differences (ICC ≥ 0.5), ○ cannot rank at this profile.",
        "",
        render_reliability(list(reliability.values())),
        "",
    ]


def render(results: list[Result], title: str = "saebench leaderboard",
           plots: dict[Group, dict[str, str]] | None = None,
           validity: list[dict[str, Any]] | None = None,
           reliability: dict[tuple[str, str], Any] | None = None) -> str:  # fmt: skip
    """The markdown text of the leaderboard (``plots``: image file names per group to link;
    ``validity``: rows of :func:`load_validity`, shown in their own section and under each evaluator
    they name; ``reliability``: :func:`saebench.reliability.load_reliability`, each column's verdict
    beside its header and the table in its own section).

    Results of an evaluator that declares metrics but no headline one (``dashboard``: per-latent
    page data) put nothing on the board and are left out of it entirely, header counts included:
    adding them leaves the markdown byte for byte as it was."""
    decl_all = metric_table(evaluator_order({r.evaluator for r in results}), results)
    results = [r for r in results if on_board(decl_all.get(r.evaluator, {}))]
    groups = group_results(results)
    evaluators = evaluator_order({r.evaluator for r in results})
    lines = [
        f"# {title}",
        "",
        f"Built by `saebench leaderboard` from {len(results)} result file(s); "
        f"evaluators: {', '.join(evaluators) or 'none'}.",
        "Arrows mark the better direction; `a ± b` is a value and the half-width of its 95% interval, `a [lo, hi]` "
        "the ends of an asymmetric one, `a (n=k)` a value with too few independent units (k) for an interval, "
        "`a ± 0` one whose units show no spread "
        "(docs/statistics.md). Intervals resample documents for core (contexts of one document are not "
        "independent), else tasks, latents, pairs or classes. Positions holding the BOS id are excluded from every "
        "average.",
        "**Bold**: the best SAE of a column (★) and every SAE not distinguishable from it (paired comparison over "
        "the same units where they coincide, else Welch; Holm over the column's rows, 5% family-wise). *Italic* "
        "rows are baselines (random init, PCA or neuron basis): floors, never marked. ● ◐ ○ beside a header: the "
        "column's training-seed reliability verdict (see its section).",
        "",
    ]
    configs = sorted({key[2] for key in groups})
    if configs:
        lines += ["Run configs (the numbers below were produced with):", ""]
        lines += [f"- {c}" for c in configs] + [""]
    for key in group_order(groups):
        model, hook, cfg = key
        rows = groups[key]
        evs = evaluator_order({e for row in rows.values() for e in row["results"]})
        decl = metric_table(evs, results)
        heads = headline_columns(rows, evs, decl)
        if is_transcoder_group(key):
            hook_in, hook_out = hook.split(TRANSCODER_ARROW)
            lines += [
                f"## Transcoders · {model} · `{hook_in}` → `{hook_out}`",
                "",
                f"Read `{hook_in}`, predict `{hook_out}`: reconstruction metrics are on `{hook_out}`, the spliced CE "
                f"and KL and the ablation baselines replace `{hook_out}`, latents are read from `{hook_in}` "
                "(docs/transcoders.md). Ranked among transcoders only: their target is not an SAE's.",
                "",
                f"Config: {cfg}",
                "",
            ]
        else:
            lines += [f"## {model} · `{hook}`", "", f"Config: {cfg}", ""]
        for name, what in sorted(mixed_rows(rows).items()):
            lines += [f"⚠ **{name}** holds results of different SAEs ({what}): rerun them under distinct names.", ""]
        all_cols = [(ev, m) for ev in evs for m in heads[ev]]
        mk = column_marks(rows, all_cols)
        if len(evs) > 1:
            lines += ["### Summary", "", _table(rows, summary_columns(evs, heads), mk, reliability), ""]
        for ev in evs:
            if heads[ev]:
                title_ev = f"### {ev}" if len(evs) > 1 else ""
                table = _table(rows, [(ev, m) for m in heads[ev]], mk, reliability)
                lines += ([title_ev, ""] if title_ev else []) + [table, ""]
                flags = resolution_flags(rows, [(ev, m) for m in heads[ev]])
                lines += [f"⚠ not resolved at this profile: {why}" for why in flags.values()] + ([""] if flags else [])
                checked = [_validity_line(v) for v in validity or [] if _validity_evaluator(v) == ev]
                if checked:
                    lines += ["Validity on synthetic ground truth: " + "; ".join(checked) + ".", ""]
        if plots and plots.get(key):
            links = [f"![L0 vs {m.column}]({plots[key][f'{ev}.{m.name}']})" for ev, m in _plot_metrics(decl, evs)
                     if f"{ev}.{m.name}" in plots[key]]  # fmt: skip
            lines += ["### Sparsity frontier", "", " ".join(links), ""]
            curves = [f"![{ev}: {c}]({plots[key][f'{ev}.curve.{c}']})" for ev, c in _curve_names(rows, evs)
                      if f"{ev}.curve.{c}" in plots[key]]  # fmt: skip
            if curves:
                lines += ["### Curves", "", " ".join(curves), ""]
        lines += _significance_section(rows, all_cols, mk, reliability)
    if reliability:
        lines += _reliability_section(reliability)
    if validity:
        lines += _validity_section(validity)
    return "\n".join(lines)


def _validity_evaluator(row: dict[str, Any]) -> str:
    """The evaluator a validity row is about: its name up to the first space or colon
    (``absorption (vs excess)``, ``absorption: split latents`` are absorption's)."""
    return re.split(r"[ :]", str(row["evaluator"]), maxsplit=1)[0]


def _colour(arch: str) -> str:
    """The same colour for an architecture in every plot (baselines grey)."""
    if arch == "baseline":
        return "0.55"
    order = ("relu", "topk", "batchtopk", "jumprelu", "gated")
    i = order.index(arch) if arch in order else len(order) + sum(map(ord, arch)) % 5
    return f"C{i}"


def _place_labels(ax: Any, fig: Any, points: list[tuple[float, float, str]]) -> None:
    """Annotate each point with its name where the label overlaps no other label and no marker:
    candidate offsets around the point, nearest first (greedy, deterministic)."""
    renderer = fig.canvas.get_renderer()
    trans = ax.transData
    markers = [trans.transform((x, y)) for x, y, _ in points]
    taken: list[Any] = []
    offsets = [(dx * r, dy * r) for r in (4, 10, 18, 28) for dx, dy in
               ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))]  # fmt: skip
    for (x, y, name), (px, py) in zip(points, markers, strict=True):
        placed = None
        for dx, dy in offsets:
            ha = "left" if dx > 0 else "right" if dx < 0 else "center"
            va = "bottom" if dy > 0 else "top" if dy < 0 else "center"
            t = ax.annotate(name, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=5, ha=ha, va=va,
                            alpha=0.8)  # fmt: skip
            box = t.get_window_extent(renderer).expanded(1.05, 1.1)
            clash = any(box.overlaps(b) for b in taken) or any(
                box.contains(mx, my) for mx, my in markers if (mx, my) != (px, py)
            )
            if not clash:
                placed = box
                break
            t.remove()
        if placed is None:  # everything around is crowded: the nearest spot, drawn anyway
            dx, dy = offsets[0]
            t = ax.annotate(name, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=5, alpha=0.8)
            placed = t.get_window_extent(renderer)
        taken.append(placed)


def _plot_floors(
    ax: Any, floors: list[tuple[float, float, Any, str]], points: list[tuple[float, float, str]], ys: list[float]
) -> str:
    """Baselines as unconnected grey crosses (floors, not a frontier). The y range stays the SAEs'
    (with a margin) when there are SAEs: a floor far outside it (an untrained SAE's FVU of 3) is
    drawn at the edge as a triangle pointing off the plot and named, with its value, in the returned
    footnote (empty when every floor is on scale). ``ys``: the SAEs' values and interval ends."""
    lo, hi = (min(ys), max(ys)) if ys else (min(p[1] for p in floors), max(p[1] for p in floors))
    pad = 0.08 * (hi - lo) if hi > lo else 0.25 * max(abs(hi), 1e-9)
    lo, hi = lo - pad, hi + pad
    off: list[str] = []
    first = True
    for x, y, _, name in sorted(floors, key=lambda p: (p[0], p[1], p[3])):
        shown, marker = y, "x"
        if y > hi or y < lo:
            shown, marker = (hi, "^") if y > hi else (lo, "v")
            off.append(f"{name} {y:.3g}")
        else:
            points.append((x, shown, name))
        ax.plot([x], [shown], ls="none", marker=marker, ms=5, color="0.55", label="baseline" if first else None)
        first = False
    ax.set_ylim(lo, hi)
    return ("baselines off scale (▲ above, ▼ below): " + "; ".join(off)) if off else ""


def plot_frontier(rows: Rows, evaluator: str, metric: Metric, title: str) -> bytes | None:
    """PNG bytes of L0 (from core) vs ``metric``, one series per architecture (points joined in L0
    order, 95% intervals as bars from their low to their high end); None when no SAE has both
    numbers."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    series: dict[str, list[tuple[float, float, tuple[float, float] | None, str]]] = {}
    for name, row in sorted(rows.items()):
        core, res = row["results"].get("core"), row["results"].get(evaluator)
        x = core.metrics.get("l0") if core else None
        y = res.metrics.get(metric.name) if res else None
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and x > 0:
            ends = interval_ends(y, res.uncertainty.get(metric.name))
            group = "baseline" if is_baseline(name) else str(row["architecture"])  # floors: one grey series
            series.setdefault(group, []).append((float(x), float(y), ends, name))
    if not series:
        return None
    better = {"up": "higher is better", "down": "lower is better"}.get(metric.direction, "")
    with plt.rc_context({"svg.hashsalt": "saebench", "font.size": 8}):
        fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
        points = []
        floors = series.pop("baseline", [])
        for arch in sorted(series):
            pts = sorted(series[arch], key=lambda p: (p[0], p[1], p[3]))
            colour = _colour(arch)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=4, lw=1, label=arch, color=colour)
            bars = [(p[0], *p[2]) for p in pts if p[2] is not None]
            if bars:  # the interval's true ends (asymmetric where it is), not value ± half-width
                xs, lows, highs = zip(*bars, strict=True)
                ax.vlines(xs, lows, highs, color=colour, lw=1)
                ax.plot(xs + xs, lows + highs, ls="none", marker="_", ms=5, color=colour)
            points += [(p[0], p[1], p[3]) for p in pts]
        extent = [v for pts in series.values() for p in pts for v in (p[1], *(p[2] or ()))]
        footnote = _plot_floors(ax, floors, points, extent) if floors else ""
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("L0 (active latents per token)")
        unit = f" ({metric.unit})" if metric.unit else ""
        ax.set_ylabel(f"{metric.column}{unit}" + (f", {better}" if better else ""))
        ax.set_title(title, fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.legend(title="architecture", fontsize=6)
        ax.margins(0.12)
        if footnote:
            fig.text(0.01, 0.01, textwrap.fill(footnote, 150), fontsize=5, color="0.35", va="bottom")
        fig.tight_layout(rect=(0, 0.05 if footnote else 0, 1, 1))
        fig.canvas.draw()
        _place_labels(ax, fig, sorted(points))
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": None})
        plt.close(fig)
    return buf.getvalue()


def plot_curve(rows: Rows, evaluator: str, curve: str, title: str) -> bytes | None:
    """PNG bytes of one curve an evaluator returned (``details["curves"][curve]``: x, y, labels),
    one line per SAE coloured by architecture; None when no SAE has it."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    lines = []
    for name, row in sorted(rows.items()):
        res = row["results"].get(evaluator)
        c = (res.details.get("curves") or {}).get(curve) if res else None
        if c and any(isinstance(v, (int, float)) for v in c.get("y", [])):
            pts = [(x, y) for x, y in zip(c["x"], c["y"], strict=True) if isinstance(y, (int, float))]
            lines.append((name, "baseline" if is_baseline(name) else str(row["architecture"]), pts, c))
    if not lines:
        return None
    spec = lines[0][3]
    refs = reference_points(rows, str(spec.get("reference") or ""), {name for name, *_ in lines})
    better = {"up": "higher is better", "down": "lower is better"}.get(spec.get("direction", ""), "")
    with plt.rc_context({"svg.hashsalt": "saebench", "font.size": 8}):
        fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
        for name, arch, pts, _ in lines:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, lw=1, color=_colour(arch), label=name,
                    alpha=0.8)  # fmt: skip
        for arch, pts in sorted(refs.items()):
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=18, marker="D", facecolors="none",
                       edgecolors=_colour(arch), label=f"plain {arch} ({spec['reference']}, x = d_sae)")  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(str(spec.get("x_label", "x")))
        ax.set_ylabel(str(spec.get("y_label", curve)) + (f", {better}" if better else ""))
        ax.set_title(title, fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=5, ncol=2)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": None})
        plt.close(fig)
    return buf.getvalue()


def reference_points(rows: Rows, reference: str, curved: set[str]) -> dict[str, list[tuple[float, float]]]:
    """Points that place the board's other SAEs beside a curve whose spec names a ``reference``
    (``"evaluator.metric"``, e.g. a Matryoshka prefix curve of FVU against width names ``core.fvu``):
    for every non-baseline row without the curve, (d_sae, that metric), grouped by architecture."""
    ev, _, metric = reference.partition(".")
    out: dict[str, list[tuple[float, float]]] = {}
    if not ev or not metric:
        return out
    for name, row in sorted(rows.items()):
        res = row["results"].get(ev)
        value = res.metrics.get(metric) if res else None
        if name in curved or is_baseline(name) or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        out.setdefault(str(row["architecture"]), []).append((float(res.sae.d_sae), float(value)))
    return out


def write_leaderboard(paths: list[str | Path], out: str | Path, title: str = "saebench leaderboard",
                      plots: bool = True, validity: str | Path | None = None,
                      reliability: str | Path | None = None) -> Path:  # fmt: skip
    """Render results found under ``paths`` to ``out`` (atomically), with PNG plots beside it and the
    validity rows of the file ``validity`` (:func:`load_validity`) and the seed-reliability verdicts of
    the file ``reliability`` (``saebench reliability -o``) when given."""
    validity_rows = load_validity(validity) if validity is not None else None
    reliability_rows = load_reliability(reliability) if reliability is not None else None
    results = load_results(list(paths))
    if not results:
        raise SaebenchError(
            f"no saebench results under {', '.join(map(str, paths))}; run `saebench run` first or check the path"
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    groups = group_results(results)
    for rows in groups.values():
        for name, what in sorted(mixed_rows(rows).items()):
            warnings.warn(f"row {name!r} holds results of different SAEs ({what}); it is flagged ⚠ on the board: "
                          "rerun them under distinct --name", stacklevel=2)  # fmt: skip
    names: dict[Group, dict[str, str]] = {}
    if plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            warnings.warn("matplotlib is not installed: no plots written (pip install 'saebench[plots]')", stacklevel=2)
        else:
            for key, files in plot_names(groups, out.stem, results).items():
                model, hook, cfg = key
                evs = evaluator_order({e for row in groups[key].values() for e in row["results"]})
                decl = metric_table(evs, results)
                for ev, m in _plot_metrics(decl, evs):
                    png = plot_frontier(groups[key], ev, m, f"{model} · {hook} · {ev}\n{cfg}")
                    if png is not None:
                        atomic_write_bytes(out.parent / files[f"{ev}.{m.name}"], png)
                        names.setdefault(key, {})[f"{ev}.{m.name}"] = files[f"{ev}.{m.name}"]
                for ev, c in _curve_names(groups[key], evs):
                    png = plot_curve(groups[key], ev, c, f"{model} · {hook} · {ev}: {c}\n{cfg}")
                    if png is not None:
                        atomic_write_bytes(out.parent / files[f"{ev}.curve.{c}"], png)
                        names.setdefault(key, {})[f"{ev}.curve.{c}"] = files[f"{ev}.curve.{c}"]
    atomic_write_bytes(out, render(results, title, names, validity_rows, reliability_rows).encode())
    return out
