"""saebench: evaluate sparse autoencoders on language-model activations.

>>> import saebench
>>> run = saebench.evaluate("reference", evals=["core"], profile="quick")
>>> run.metrics["core"]["fvu"]          # {evaluator: {metric: value}} of the run's one SAE
"""

from saebench.errors import SaebenchError
from saebench.loading import LoadedSAE, load_sae
from saebench.profiles import PROFILES
from saebench.runner import RunResults, evaluate
from saebench.sae import NativeSAE, SAEConfig, SAEProtocol, save_native

__version__ = "0.1.0"
__all__ = [
    "evaluate",
    "RunResults",
    "PROFILES",
    "load_sae",
    "LoadedSAE",
    "save_native",
    "NativeSAE",
    "SAEConfig",
    "SAEProtocol",
    "SaebenchError",
    "__version__",
]
