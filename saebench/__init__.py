"""saebench: evaluate sparse autoencoders on language-model activations.

    >>> import saebench
    >>> run = saebench.evaluate("reference", evals=["core"], profile="quick")
    >>> run.metrics["core"]["fvu"]
"""

from saebench.errors import SaebenchError
from saebench.runner import PROFILES, RunResults, evaluate
from saebench.sae import NativeSAE, SAEConfig, SAEProtocol, load_sae, save_native

__version__ = "0.1.0"
__all__ = ["evaluate", "RunResults", "PROFILES", "load_sae", "save_native", "NativeSAE", "SAEConfig",
           "SAEProtocol", "SaebenchError", "__version__"]
