"""LLM-based explanation and scoring of SAE latents through any OpenAI-compatible endpoint.

Imported as ``saebench.autointerp`` (``package-dir`` in pyproject.toml). ``client`` talks to the
endpoint (cache, retries, budget), ``prompts`` builds messages, ``parsing`` reads replies,
``scoring`` holds the detection and simulation math, ``engine`` runs latents concurrently. The
``--evals autointerp`` evaluator that feeds them examples lives in
``saebench/evaluators/autointerp.py``.
"""
