"""saebench: evaluate sparse autoencoders on language-model activations.

>>> import saebench
>>> run = saebench.evaluate("reference", evals=["core"], profile="quick")
>>> run.metrics["core"]["fvu"]          # {evaluator: {metric: value}} of the run's one SAE

The heavy names (``evaluate``, ``load_sae``, ...) are imported on first use, so ``import saebench``
and the command line's start-up (``saebench --help``, a Ctrl-C at start-up) do not wait for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from saebench.errors import SaebenchError
from saebench.profiles import PROFILES

__version__ = "0.1.0"
_LAZY = {
    "evaluate": "saebench.runner",
    "RunResults": "saebench.runner",
    "RunSpec": "saebench.spec",
    "load_sae": "saebench.loading",
    "LoadedSAE": "saebench.loading",
    "save_native": "saebench.sae",
    "NativeSAE": "saebench.sae",
    "SAEConfig": "saebench.sae",
    "SAEProtocol": "saebench.sae",
}
__all__ = ["PROFILES", "SaebenchError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'saebench' has no attribute {name!r}")
