"""Markdown leaderboard from result JSONs: one table per (model, hook, config), one row per SAE,
and the sparsity-fidelity frontier as PNG plots beside it.

Rows are sorted by SAE name and numbers are formatted with fixed precision, so the same results
always give the same bytes (the PNGs too, with one matplotlib version: no timestamps or software
tag are written). Results from different models, hooks or run configs (profile, tokens, context,
seed, corpus) are grouped, never merged. Corrupt or foreign JSON files are skipped with a warning
naming them.

Columns are the headline metrics each evaluator declares (``Evaluator.metrics``, see
:mod:`saebench.evaluators.base`): a plugin's headline metrics reach the board with no change here.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from saebench.display import ARROW, fmt
from saebench.errors import SaebenchError
from saebench.evaluators import Metric, metric_table
from saebench.io import atomic_write_bytes, slug
from saebench.results import Result, load_results

BUILTIN_ORDER = ("core", "probing", "n2g", "ablation", "autointerp")


def evaluator_order(names: list[str] | set[str]) -> list[str]:
    """Built-in evaluators first (core, probing, n2g, ablation, autointerp), then others by name."""
    return sorted(names, key=lambda n: (BUILTIN_ORDER.index(n) if n in BUILTIN_ORDER else len(BUILTIN_ORDER), n))


def headline_columns(evaluators: list[str] | set[str], results: Any = ()) -> list[Metric]:
    """The headline metrics the given evaluators declare, in board order (see ``metric_table``)."""
    table = metric_table(evaluator_order(evaluators), results)
    return [m for ev in evaluator_order(list(table)) for m in table[ev].values() if m.headline]


PLOTS = (("fvu", "FVU", "l0-fvu"), ("delta_ce", "ΔCE (nats)", "l0-dce"))


def _config_label(r: Result) -> str:
    c = r.config
    return (
        f"profile {c.get('profile')}, {c.get('tokens', c.get('n_tokens'))} tokens, ctx {c.get('ctx_len')}, "
        f"seed {c.get('seed')}, corpus {c.get('corpus')}"
    )


Group = tuple[str, str, str]


def group_results(results: list[Result]) -> dict[Group, dict[str, dict[str, Any]]]:
    """``{(model, hook, config label): {sae name: row}}``; a row holds the SAE's architecture,
    width, the evaluators run on it with that config and their metrics."""
    groups: dict[Group, dict[str, dict[str, Any]]] = {}
    for r in results:
        key = (str(r.config.get("model")), str(r.config.get("hook")), _config_label(r))
        row = groups.setdefault(key, {}).setdefault(
            r.sae.name, {"architecture": r.sae.architecture, "d_sae": r.sae.d_sae, "evaluators": set()}
        )
        row["evaluators"].add(r.evaluator)
        row.update(r.metrics)
    return groups


def plot_names(groups: dict[Group, Any], stem: str) -> dict[Group, dict[str, str]]:
    """File names of each group's plots (stable: derived from model, hook and config order)."""
    names: dict[Group, dict[str, str]] = {}
    seen: dict[tuple[str, str], int] = {}
    for key in sorted(groups):
        model, hook, _ = key
        n = seen.get((model, hook), 0)
        seen[(model, hook)] = n + 1
        base = f"{stem}-{slug(model)}-{slug(hook)}" + (f"-c{n + 1}" if n else "")
        names[key] = {metric: f"{base}-{suffix}.png" for metric, _, suffix in PLOTS}
    return names


def render(
    results: list[Result], title: str = "saebench leaderboard", plots: dict[Group, dict[str, str]] | None = None
) -> str:
    """The markdown text of the leaderboard (``plots``: image file names per group to link)."""
    from tabulate import tabulate

    groups = group_results(results)
    n_files = len(results)
    evaluators = sorted({r.evaluator for r in results})
    lines = [
        f"# {title}",
        "",
        f"Built by `saebench leaderboard` from {n_files} result file(s); evaluators: "
        f"{', '.join(evaluators) or 'none'}.",
        "Arrows mark the better direction. BOS position excluded from every average.",
        "",
    ]
    configs = sorted({key[2] for key in groups})
    if configs:
        lines += ["Run configs (the numbers below were produced with):", ""]
        lines += [f"- {c}" for c in configs] + [""]
    for key in sorted(groups):
        model, hook, cfg = key
        lines += [f"## {model} · `{hook}`", "", f"Config: {cfg}", ""]
        cols = headline_columns(set().union(*(row["evaluators"] for row in groups[key].values())), results)
        headers = ["SAE", "arch", "d_sae"] + [c.column + ARROW[c.direction] for c in cols]
        rows = [
            [name, row["architecture"], row["d_sae"]] + [fmt(row.get(c.name)) for c in cols]
            for name, row in sorted(groups[key].items())
        ]
        lines += [tabulate(rows, headers=headers, tablefmt="github"), ""]
        if plots and key in plots:
            lines += [
                " ".join(
                    f"![L0 vs {label}]({plots[key][metric]})" for metric, label, _ in PLOTS if metric in plots[key]
                ),
                "",
            ]
    return "\n".join(lines)


def _colour(arch: str) -> str:
    """The same colour for an architecture in every plot."""
    order = ("relu", "topk", "batchtopk", "jumprelu", "gated")
    i = order.index(arch) if arch in order else len(order) + sum(map(ord, arch)) % 5
    return f"C{i}"


def plot_frontier(rows: dict[str, dict[str, Any]], metric: str, label: str, title: str) -> bytes | None:
    """PNG bytes of L0 vs ``metric``, one series per architecture (points joined in L0 order);
    None when no SAE has both numbers."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    series: dict[str, list[tuple[float, float, str]]] = {}
    for name, row in sorted(rows.items()):
        x, y = row.get("l0"), row.get(metric)
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and x > 0:
            series.setdefault(str(row["architecture"]), []).append((float(x), float(y), name))
    if not series:
        return None
    with plt.rc_context({"svg.hashsalt": "saebench", "font.size": 8}):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
        for arch in sorted(series):
            pts = sorted(series[arch])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=arch, color=_colour(arch))
            for x, y, name in pts:
                ax.annotate(name, (x, y), fontsize=5, alpha=0.7, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("L0 (active latents per token)")
        ax.set_ylabel(f"{label} (lower is better)")
        ax.set_title(title, fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.legend(title="architecture")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": None})
        plt.close(fig)
    return buf.getvalue()


def write_leaderboard(
    paths: list[str | Path], out: str | Path, title: str = "saebench leaderboard", plots: bool = True
) -> Path:
    """Render results found under ``paths`` to ``out`` (atomically), with PNG plots beside it."""
    results = load_results(list(paths))
    if not results:
        raise SaebenchError(
            f"no saebench results under {', '.join(map(str, paths))}; run `saebench run` first or check the path"
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    groups = group_results(results)
    names: dict[Group, dict[str, str]] = {}
    if plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            warnings.warn("matplotlib is not installed: no plots written (pip install 'saebench[plots]')", stacklevel=2)
        else:
            for key, files in plot_names(groups, out.stem).items():
                model, hook, cfg = key
                for metric, label, _ in PLOTS:
                    png = plot_frontier(groups[key], metric, label, f"{model} · {hook}\n{cfg}")
                    if png is not None:
                        atomic_write_bytes(out.parent / files[metric], png)
                        names.setdefault(key, {})[metric] = files[metric]
    atomic_write_bytes(out, render(results, title, names).encode())
    return out
