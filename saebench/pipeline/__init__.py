"""The shared activation pipeline: every model pass an evaluator needs happens here, once.

- :mod:`.states` — :class:`ActivationPipeline`, the hub for one (model, hook, token set): the
  prefix states up to the hook's block (cached on disk), the memo and disk cache every stage
  uses, the pass counters, and streamed SAE encodes;
- :mod:`.splice` — clean, spliced and ablated suffix passes and their per-token statistics
  (the inputs of the core metrics);
- :mod:`.examples` — examples per latent (top / random / importance-sampled positions, windows,
  activations at the end of edited contexts) for n2g, ablation and autointerp;
- :mod:`.tasks` — hook activations of probing-task examples;
- :mod:`.positions` — hook activations at chosen positions of prompt token rows (absorption).

Everything downstream reaches the model through :class:`saebench.models.SubjectModel`.
"""

from saebench.pipeline.states import ActivationPipeline, PassCounters

__all__ = ["ActivationPipeline", "PassCounters"]
