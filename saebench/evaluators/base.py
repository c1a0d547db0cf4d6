"""The evaluator interface: what an evaluator declares, what it is given, what it returns.

An evaluator is a small object (a class instance; built-ins and plugins alike) with

- ``name``: what ``--evals`` calls it; its results file is ``<name>.json``;
- ``needs``: the shared inputs the runner prepares before any evaluator runs, once per hook for
  all pending SAEs there, timed as shared work (:data:`NEEDS` lists them);
- ``Config``: a pydantic model (subclass :class:`EvalConfig`) with profile defaults;
- ``metrics``: its metric declarations (:class:`Metric`): which way is better, which are
  headline, what they mean, their unit and, for sampled metrics, how they follow from per-unit
  samples (for intervals and paired comparisons). The leaderboard and the gate read these;
- ``run(ctx, cfg) -> EvalOutput``.

Optional: ``preflight(cfg)`` refuses bad settings before the model is loaded (e.g. an
unreachable LLM endpoint); ``check_hook(hook, sae_name)`` refuses a hook the evaluator cannot use,
also before the model is loaded (RAVEL patches residual hooks only); ``prepare(pipeline, cfg)``
computes SAE-independent inputs of this evaluator once per hook (e.g. probing-task activations),
timed as shared work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from saebench.data import TokenSet
from saebench.models import SubjectModel
from saebench.pipeline import ActivationPipeline
from saebench.pipeline.splice import SpliceStats

#: shared inputs an evaluator may declare in ``needs``
NEEDS: dict[str, str] = {
    "states": "prefix states of the token set up to the hook's block (cached on disk)",
    "splice": "clean, spliced and ablation-baseline statistics of every SAE at the hook (one batched loop)",
}

Direction = Literal["up", "down", ""]


@dataclass(frozen=True)
class Metric:
    """One metric an evaluator reports.

    ``direction``: "up" / "down" is better, "" descriptive (a change is reported, never a
    failure). ``headline`` metrics are the board's columns. ``min_effect`` is the smallest
    absolute change the gate treats as real (a regression must also be outside the noise).
    ``estimator`` (see :mod:`saebench.stats`) says how the value follows from the per-unit
    samples the evaluator returns: metrics with one get a standard error and a 95% interval.
    ``optional``: computed only when asked (its sample columns are present); otherwise absent
    from the result rather than null (core's ablation variants).
    """

    name: str
    meaning: str
    direction: Direction = ""
    headline: bool = False
    unit: str = ""
    title: str = ""
    min_effect: float = 0.0
    estimator: Any = None
    min_rel_effect: float = 0.0
    optional: bool = False

    @property
    def column(self) -> str:
        return self.title or self.name

    def to_dict(self) -> dict[str, Any]:
        """JSON form, stored in every result so a plugin's results describe themselves."""
        from saebench.stats import estimator_to_dict

        return {
            "meaning": self.meaning,
            "direction": self.direction,
            "headline": self.headline,
            "unit": self.unit,
            "title": self.title,
            "min_effect": self.min_effect,
            "min_rel_effect": self.min_rel_effect,
            "estimator": estimator_to_dict(self.estimator),
            **({"optional": True} if self.optional else {}),
        }

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> Metric:
        from saebench.stats import estimator_from_dict

        return cls(
            name,
            str(data.get("meaning", "")),
            data.get("direction", "") or "",
            bool(data.get("headline")),
            str(data.get("unit", "")),
            str(data.get("title", "")),
            float(data.get("min_effect") or 0.0),
            estimator_from_dict(data.get("estimator")),
            float(data.get("min_rel_effect") or 0.0),
            bool(data.get("optional", False)),
        )


class EvalConfig(BaseModel):
    """Base of evaluator configs: forbids unknown keys, knows profile defaults."""

    model_config = ConfigDict(extra="forbid")
    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def for_profile(cls, profile: str, **overrides: Any) -> EvalConfig:
        return cls(**{**cls.PROFILE_DEFAULTS.get(profile, {}), **overrides})


@dataclass
class EvalContext:
    """What an evaluator is given for one SAE at one hook.

    ``splice`` holds the SAE's splice statistics when the evaluator needs ``"splice"``; ``notes``
    collects one-line remarks that end up in the result. ``latent_id(i)`` is the sample id of
    latent ``i`` (unique to this SAE's weights, so only the same SAE's latents ever pair).
    """

    pipeline: ActivationPipeline
    sae: Any
    sae_name: str
    fingerprint: str  # content hash of the SAE: sample ids of per-latent units start with it
    seed: int
    profile: str
    splice: SpliceStats | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def model(self) -> SubjectModel:
        """The subject model."""
        return self.pipeline.model

    @property
    def tokens(self) -> TokenSet:
        """The evaluation token set."""
        return self.pipeline.tokens

    def latent_id(self, latent: int) -> str:
        return f"{self.fingerprint}:{int(latent)}"


@dataclass
class EvalOutput:
    """What ``run`` returns.

    ``metrics``: numbers only (float, int, bool or None where undefined: never NaN);
    ``details``: per-latent / per-task tables, histograms, settings echoed, strings;
    ``samples``: per-unit statistics behind the sampled metrics (:class:`saebench.stats.Samples`,
    keyed by unit name), from which the runner computes each declared estimator's value, its
    interval, and later paired comparisons (a metric with an estimator may be left out of
    ``metrics``: the runner fills it in; one it gives must agree with the estimator);
    ``uncertainty``: intervals an evaluator computed itself for metrics no estimator describes
    (:class:`saebench.stats.Interval`);
    ``timing``: seconds per stage (kept out of metrics so reruns give identical metrics).
    """

    metrics: dict[str, float | int | bool | None]
    details: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, Any] = field(default_factory=dict)
    uncertainty: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)


class Evaluator(Protocol):
    name: str
    needs: frozenset[str]
    Config: type[EvalConfig]
    metrics: tuple[Metric, ...]

    def run(self, ctx: EvalContext, cfg: EvalConfig) -> EvalOutput: ...


def mean_defined(values: Any) -> float | None:
    """Mean of the defined (non-None, finite) values; None when there are none (never NaN)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(vals) / len(vals) if vals else None


def ratio(num: float, den: float) -> float | None:
    """num/den, or None where the denominator vanishes (reported as undefined, never NaN)."""
    return num / den if den != 0 and math.isfinite(den) else None
