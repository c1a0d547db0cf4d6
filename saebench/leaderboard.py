"""Markdown leaderboard from result JSONs: one table per (model, hook), one row per SAE.

Rows are sorted by SAE name and numbers are formatted with fixed precision, so the same results
always give the same bytes. Results from different models or hooks are grouped, never merged.
Corrupt or foreign JSON files are skipped with a warning naming them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

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


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def render(results: list[Result], title: str = "saebench leaderboard") -> str:
    """The markdown text of the leaderboard."""
    from tabulate import tabulate

    groups: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    configs: dict[tuple[str, str], set[str]] = {}
    for r in results:
        key = (str(r.config.get("model")), str(r.config.get("hook")))
        row = groups.setdefault(key, {}).setdefault(r.sae.name, {"architecture": r.sae.architecture, "d_sae": r.sae.d_sae})
        row.update({k: v for k, v in r.metrics.items() if not isinstance(v, (dict, list))})
        configs.setdefault(key, set()).add(
            f"profile {r.config.get('profile')}, {r.config.get('n_tokens')} tokens, ctx {r.config.get('ctx_len')}, "
            f"seed {r.config.get('seed')}, corpus {r.config.get('corpus')}"
        )
    lines = [f"# {title}", "", "Arrows mark the better direction. BOS position excluded from every average.", ""]
    for (model, hook) in sorted(groups):
        lines += [f"## {model} · `{hook}`", ""]
        lines += [f"Config: {c}" for c in sorted(configs[(model, hook)])] + [""]
        headers = ["SAE", "arch", "d_sae"] + [t + ARROW[d] for _, t, d in HEADLINE]
        rows = [[name, row["architecture"], row["d_sae"]] + [_fmt(row.get(k)) for k, _, _ in HEADLINE]
                for name, row in sorted(groups[(model, hook)].items())]
        lines += [tabulate(rows, headers=headers, tablefmt="github"), ""]
    return "\n".join(lines)


def write_leaderboard(paths: list[str | Path], out: str | Path, title: str = "saebench leaderboard") -> Path:
    """Render results found under ``paths`` to ``out`` (atomically)."""
    text = render(load_results(list(paths)), title)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.tmp-")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)
    return out
