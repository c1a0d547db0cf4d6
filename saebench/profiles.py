"""Run-size profiles and the dtype names: plain data, importable without torch (the CLI's choices).

A profile only sets sizes; every size can be overridden (``--tokens``, ``--ctx-len``,
``--batch-size``, and each evaluator's own ``--set EVAL.KEY=...``).
"""

from __future__ import annotations

PROFILES: dict[str, dict[str, int]] = {
    # CPU, minutes: CI and first contact.
    "quick": {"tokens": 8192, "ctx_len": 128, "batch_size": 8},
    # a few minutes per SAE on a GPU, ~an hour on 2 CPU cores.
    "standard": {"tokens": 131072, "ctx_len": 128, "batch_size": 16},
    # SAEBench's reconstruction sample (200 batches x 16 prompts x 128 tokens), for a GPU.
    "paper": {"tokens": 409600, "ctx_len": 128, "batch_size": 32},
}

DTYPE_NAMES = ("float32", "float16", "bfloat16")
