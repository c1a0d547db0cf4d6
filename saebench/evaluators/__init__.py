"""Evaluator plugins and their registry.

The interface is in :mod:`saebench.evaluators.base`. Built-ins register through the
``saebench.evaluators`` entry-point group exactly like a third party's plugin does (see
``pyproject.toml``); ``--evals python:FILE.py:CLASS`` or ``MODULE:CLASS`` loads one from code.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from saebench import plugins
from saebench.errors import SaebenchError
from saebench.evaluators.base import (
    NEEDS,
    EvalConfig,
    EvalContext,
    EvalOutput,
    Evaluator,
    Metric,
    mean_defined,
    ratio,
)

ENTRY_POINT_GROUP = "saebench.evaluators"
__all__ = [
    "NEEDS",
    "EvalConfig",
    "EvalContext",
    "EvalOutput",
    "Evaluator",
    "Metric",
    "mean_defined",
    "ratio",
    "available",
    "get_evaluator",
    "metric_table",
]


def available() -> dict[str, Any]:
    """Evaluators registered under the ``saebench.evaluators`` entry-point group."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def get_evaluator(spec: str) -> Evaluator:
    """Instantiate an evaluator by registered name, ``python:FILE.py:CLASS`` or ``MODULE:CLASS``."""
    eps = available()
    if spec in eps:
        obj = eps[spec].load()()
    elif plugins.is_python_spec(spec) or ":" in spec:
        obj, _ = plugins.load_object(spec)
    else:
        raise SaebenchError(
            f"unknown evaluator {spec!r}; registered: {', '.join(sorted(eps)) or 'none'} (or pass python:FILE.py:CLASS)"
        )
    for attr in ("name", "needs", "Config", "run"):
        if not hasattr(obj, attr):
            raise SaebenchError(f"evaluator {spec!r} lacks {attr!r}; see saebench.evaluators.base for the interface")
    unknown = sorted(set(obj.needs) - set(NEEDS))
    if unknown:
        raise SaebenchError(
            f"evaluator {spec!r} needs unknown shared input(s) {', '.join(unknown)}; known: {', '.join(NEEDS)}"
        )
    return obj


def metric_table(evaluators: list[str], results: Any = ()) -> dict[str, dict[str, Metric]]:
    """``{evaluator name: {metric name: Metric}}``: a registered evaluator's own declarations, else
    the ones stored in its results (``Result.declarations``: how ``python:FILE:CLASS`` plugins
    reach the board and the gate); an evaluator found in neither has no declared metrics."""
    registered = available()
    stored: dict[str, dict[str, Any]] = {}
    for r in results:
        if r.declarations:
            stored.setdefault(r.evaluator, r.declarations)
    out: dict[str, dict[str, Metric]] = {}
    for name in evaluators:
        table: dict[str, Metric] = {}
        if name in registered:
            try:
                table = {m.name: m for m in getattr(get_evaluator(name), "metrics", ())}
            except SaebenchError:
                table = {}
        if not table and name in stored:
            table = {k: Metric.from_dict(k, v) for k, v in stored[name].items()}
        out[name] = table
    return out
