"""``RunSpec``: what a run is asked to do, as one typed value.

The CLI builds one from its flags, :func:`saebench.evaluate` from its keyword options, and the Ray
driver ships it to its workers, so a new run option is one field here (with its default and its
meaning) rather than one more keyword threaded through every function between the CLI and the
pipeline. Sizes left ``None`` come from the profile (:mod:`saebench.profiles`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saebench.errors import SaebenchError


@dataclass(frozen=True)
class RunSpec:
    """The options of one run (every field has the CLI's default)."""

    #: transformer-lens model name, or a :class:`~saebench.models.SubjectModel` object; None: the SAE's
    #: ``model_name``, else the embedded SmolLM2-135M-Instruct
    model: Any = None
    #: transformer-lens hook name; None: the SAE's ``hook_name``
    hook: str | None = None
    #: evaluate at ``hook`` even when it differs from the hook the SAE names (refused otherwise)
    force_hook: bool = False
    evals: tuple[str, ...] = ("core",)
    profile: str = "quick"
    tokens: int | None = None
    ctx_len: int | None = None
    batch_size: int | None = None
    seed: int = 0
    corpus: str = "sae-probes"
    #: evaluate on exactly these token ids (a :class:`~saebench.data.TokenSet`): overrides tokens/ctx_len/corpus
    token_set: Any = None
    #: results folder (None: results are returned, not written)
    out: str | Path | None = None
    device: str = "cpu"
    dtype: str = "float32"
    #: recompute complete results, and replace results of a different SAE under the same name
    force: bool = False
    progress: bool = True
    #: per-evaluator settings, ``{evaluator: {key: value}}`` (``--set EVAL.KEY=VALUE``)
    eval_config: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: result names, one per SAE (None: each SAE's own name, made distinct where two coincide)
    name: str | list[str] | None = None
    trust_pickle: bool = False
    use_cache: bool = True
    #: peak memory budget (bytes or e.g. "8GB"): SAEs are spliced in groups that fit
    max_memory: int | str | None = None

    def __post_init__(self) -> None:
        evals = (self.evals,) if isinstance(self.evals, str) else tuple(self.evals)
        object.__setattr__(self, "evals", evals)
        object.__setattr__(self, "eval_config", dict(self.eval_config or {}))

    @classmethod
    def build(cls, spec: RunSpec | None = None, **options: Any) -> RunSpec:
        """``spec`` (default: all defaults) with ``options`` replacing its fields; an unknown option
        is a one-line error listing the valid ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise SaebenchError(f"unknown run option(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        return dataclasses.replace(spec or cls(), **options)

    def replace(self, **options: Any) -> RunSpec:
        """A copy with ``options`` changed (validated as in :meth:`build`)."""
        return RunSpec.build(self, **options)
