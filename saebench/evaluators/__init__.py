"""Evaluator plugins.

An evaluator is a small object with

- ``name``: what ``--evals`` calls it and the results file is named after;
- ``needs``: the shared inputs it reads from the context (``"splice"`` for the clean, spliced
  and ablated passes of :class:`saebench.pipeline.ActivationPipeline`);
- ``Config``: a pydantic model of its own settings; ``Config.for_profile(profile)`` gives the
  profile's defaults, and every field can be overridden;
- ``run(ctx, cfg) -> dict``: plain metrics (numbers, lists, small dicts). An optional
  ``"_timing"`` entry (stage name -> seconds) is moved into the result's ``timing``, so metrics
  stay identical between reruns.

Built-ins register through the ``saebench.evaluators`` entry-point group exactly like a third
party's plugin does; ``--evals python:FILE.py:CLASS`` loads one from a file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

from saebench.errors import SaebenchError

ENTRY_POINT_GROUP = "saebench.evaluators"


class EvalConfig(BaseModel):
    """Base of evaluator configs: forbids unknown keys, knows profile defaults."""

    model_config = ConfigDict(extra="forbid")
    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def for_profile(cls, profile: str, **overrides: Any) -> EvalConfig:
        return cls(**{**cls.PROFILE_DEFAULTS.get(profile, {}), **overrides})


@dataclass
class EvalContext:
    """Everything an evaluator may read; shared inputs are filled by the runner once."""

    model: Any
    tokens: Any
    hook: str
    sae: Any
    pipeline: Any
    run_config: dict[str, Any]
    splice: Any = None
    notes: list[str] = field(default_factory=list)


class Evaluator(Protocol):
    name: str
    needs: frozenset[str]
    Config: type[EvalConfig]

    def run(self, ctx: EvalContext, cfg: EvalConfig) -> dict[str, Any]: ...


def mean_defined(values: Any) -> float | None:
    """Mean of the defined (non-None, finite) values; None when there are none (never NaN)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(vals) / len(vals) if vals else None


def available() -> dict[str, Any]:
    """Evaluators registered under the ``saebench.evaluators`` entry-point group."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def get_evaluator(spec: str) -> Evaluator:
    """Instantiate an evaluator by registered name or ``python:FILE.py:CLASS``."""
    if spec.startswith("python:") or (":" in spec and spec not in available()):
        from saebench.sae import _call_factory, _from_python_file, _import_module

        if spec.startswith("python:"):
            obj, _ = _from_python_file(spec[len("python:"):])
        else:
            module, _, attr = spec.partition(":")
            obj = _call_factory(_import_module(module), attr, spec)
    else:
        eps = available()
        if spec not in eps:
            raise SaebenchError(
                f"unknown evaluator {spec!r}; registered: {', '.join(sorted(eps)) or 'none'} "
                "(or pass python:FILE.py:CLASS)"
            )
        obj = eps[spec].load()()
    for attr in ("name", "needs", "Config", "run"):
        if not hasattr(obj, attr):
            raise SaebenchError(f"evaluator {spec!r} lacks {attr!r}; see saebench.evaluators for the interface")
    return obj
