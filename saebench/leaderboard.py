"""Markdown leaderboard from result JSONs: one table per (model, hook, config), one row per SAE,
and the sparsity-fidelity frontier as PNG plots beside it.

Rows are sorted by SAE name and numbers are formatted with fixed precision, so the same results
always give the same bytes (the PNGs too, with one matplotlib version: no timestamps or software
tag are written). Results from different models, hooks or run configs (profile, tokens, context,
seed, corpus) are grouped, never merged. Corrupt or foreign JSON files are skipped with a warning
naming them.

:data:`DIRECTIONS` is the one table of which way each metric is better; ``saebench compare``
uses it too.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

from saebench.errors import SaebenchError
from saebench.results import Result, load_results

# (metric key, column title, better direction: "up", "down" or "" for descriptive)
HEADLINE: tuple[tuple[str, str, str], ...] = (
    ("l0", "L0", ""),
    ("fvu", "FVU", "down"),
    ("mse", "MSE", "down"),
    ("cossim", "cos", "up"),
    ("delta_ce", "ΔCE", "down"),
    ("kl", "KL", "down"),
    ("ce_loss_score", "CE score", "up"),
    ("dead_frac", "dead", "down"),
    ("dense_frac", "dense", "down"),
)
ARROW = {"up": " ↑", "down": " ↓", "": ""}
# Headline metrics of the other evaluators: a column appears when some row of the table has it.
OPTIONAL_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("probe_loss", "probe loss", "down"),
    ("top_1_accuracy", "top-1 acc", "up"),
    ("n2g_f1", "N2G F1", "up"),
    ("ablation_sparsity", "ablation sparsity", "down"),
    ("detection_balanced_accuracy", "detection", "up"),
    ("simulation_r", "simulation r", "up"),
)


def columns_for(rows: list[dict[str, Any]]) -> tuple[tuple[str, str, str], ...]:
    """HEADLINE columns plus the optional ones that some row actually has."""
    core = HEADLINE if any(k in r for r in rows for k, _, _ in HEADLINE) else ()
    return core + tuple(c for c in OPTIONAL_COLUMNS if any(c[0] in r for r in rows))

# Every other metric an evaluator reports, with its better direction ("" = descriptive: a change
# is reported, never called worse). Metrics missing here are treated as descriptive.
DIRECTIONS: dict[str, str] = {
    **{key: d for key, _, d in HEADLINE + OPTIONAL_COLUMNS},
    "l1": "",
    "explained_variance": "up",
    "ce_clean": "",
    "ce_spliced": "down",
    "ce_zero_ablation": "",
    "ce_mean_ablation": "",
    "ce_loss_score_zero": "up",
    "ce_loss_score_mean": "up",
    "l2_ratio": "",
    "relative_reconstruction_bias": "",
    "d_sae_live": "up",
    "probe_loss": "down",
    "prior_loss": "",
    "baseline_resid_1d_loss": "",
    "baseline_resid_full_loss": "",
    "baseline_resid_full_accuracy": "",
    "n2g_precision": "up",
    "n2g_recall": "up",
    "ablation_sparsity_median": "down",
    "detection_accuracy": "up",
    "detection_precision": "up",
    "detection_recall": "up",
}
for _k in (1, 2, 5, 10, 20, 50):
    DIRECTIONS[f"top_{_k}_accuracy"] = "up"

PLOTS = (("fvu", "FVU", "l0-fvu"), ("delta_ce", "ΔCE (nats)", "l0-dce"))


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def _config_label(r: Result) -> str:
    c = r.config
    return (f"profile {c.get('profile')}, {c.get('tokens', c.get('n_tokens'))} tokens, ctx {c.get('ctx_len')}, "
            f"seed {c.get('seed')}, corpus {c.get('corpus')}")


Group = tuple[str, str, str]


def group_results(results: list[Result]) -> dict[Group, dict[str, dict[str, Any]]]:
    """``{(model, hook, config label): {sae name: row}}``; a row holds the SAE's architecture,
    width and the scalar metrics of every evaluator run on it with that config."""
    groups: dict[Group, dict[str, dict[str, Any]]] = {}
    for r in results:
        key = (str(r.config.get("model")), str(r.config.get("hook")), _config_label(r))
        row = groups.setdefault(key, {}).setdefault(r.sae.name, {"architecture": r.sae.architecture, "d_sae": r.sae.d_sae})
        row.update({k: v for k, v in r.metrics.items() if not isinstance(v, (dict, list))})
    return groups


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")


def plot_names(groups: dict[Group, Any], stem: str) -> dict[Group, dict[str, str]]:
    """File names of each group's plots (stable: derived from model, hook and config order)."""
    names: dict[Group, dict[str, str]] = {}
    seen: dict[tuple[str, str], int] = {}
    for key in sorted(groups):
        model, hook, _ = key
        n = seen.get((model, hook), 0)
        seen[(model, hook)] = n + 1
        base = f"{stem}-{_slug(model)}-{_slug(hook)}" + (f"-c{n + 1}" if n else "")
        names[key] = {metric: f"{base}-{suffix}.png" for metric, _, suffix in PLOTS}
    return names


def render(results: list[Result], title: str = "saebench leaderboard", plots: dict[Group, dict[str, str]] | None = None) -> str:
    """The markdown text of the leaderboard (``plots``: image file names per group to link)."""
    from tabulate import tabulate

    groups = group_results(results)
    n_files = len(results)
    evaluators = sorted({r.evaluator for r in results})
    lines = [
        f"# {title}", "",
        f"Built by `saebench leaderboard` from {n_files} result file(s); evaluators: {', '.join(evaluators) or 'none'}.",
        "Arrows mark the better direction. BOS position excluded from every average.", "",
    ]
    configs = sorted({key[2] for key in groups})
    if configs:
        lines += ["Run configs (the numbers below were produced with):", ""]
        lines += [f"- {c}" for c in configs] + [""]
    for key in sorted(groups):
        model, hook, cfg = key
        lines += [f"## {model} · `{hook}`", "", f"Config: {cfg}", ""]
        cols = columns_for(list(groups[key].values()))
        headers = ["SAE", "arch", "d_sae"] + [t + ARROW[d] for _, t, d in cols]
        rows = [[name, row["architecture"], row["d_sae"]] + [_fmt(row.get(k)) for k, _, _ in cols]
                for name, row in sorted(groups[key].items())]
        lines += [tabulate(rows, headers=headers, tablefmt="github"), ""]
        if plots and key in plots:
            lines += [" ".join(f"![L0 vs {label}]({plots[key][metric]})" for metric, label, _ in PLOTS if metric in plots[key]), ""]
    return "\n".join(lines)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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


def write_leaderboard(paths: list[str | Path], out: str | Path, title: str = "saebench leaderboard", plots: bool = True) -> Path:
    """Render results found under ``paths`` to ``out`` (atomically), with PNG plots beside it."""
    results = load_results(list(paths))
    if not results:
        raise SaebenchError(f"no saebench results under {', '.join(map(str, paths))}; run `saebench run` first or check the path")
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
                        _atomic_write(out.parent / files[metric], png)
                        names.setdefault(key, {})[metric] = files[metric]
    _atomic_write(out, render(results, title, names).encode())
    return out
