"""Shared set-up for the benchmarks (not part of the package)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def empty_activation_cache() -> Iterator[Path]:
    """A temporary ``$SAEBENCH_CACHE`` with no activations (cold runs) that still shares the
    converted model folder, restored on exit."""
    from saebench.io import cache_dir

    models = cache_dir() / "models"
    previous = os.environ.get("SAEBENCH_CACHE")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cache"
        root.mkdir()
        if models.exists():
            (root / "models").symlink_to(models)
        os.environ["SAEBENCH_CACHE"] = str(root)
        try:
            yield root
        finally:
            if previous is None:
                os.environ.pop("SAEBENCH_CACHE", None)
            else:
                os.environ["SAEBENCH_CACHE"] = previous
