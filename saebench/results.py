"""Versioned result files: one JSON per (SAE, evaluator), written atomically.

Layout: ``OUT/<sae name>/<evaluator>.json`` (both names made safe path components). A result is
*complete* for a request when the file parses, has this schema version, and its ``run_key`` (a
hash of the SAE fingerprint, the evaluator and its config, the run config and the token set)
equals the request's; complete
results are skipped on rerun unless ``--force``. An interrupted run resumes at the first
(SAE, evaluator) pair without a complete file; nothing partial is ever left behind
(temp file + ``os.replace``).

``load_results(paths)`` reads files or folders back into a list of :class:`Result`, and
``results_frame`` flattens them into a pandas DataFrame (one row per result).

Schema 2 (current) keeps numbers apart from everything else: ``metrics`` holds numbers only,
``details`` the per-latent / per-task tables and echoed settings, ``samples`` the per-unit
statistics behind sampled metrics, ``uncertainty`` each sampled metric's standard error and
interval, ``timing`` seconds per stage, ``declarations`` the evaluator's metric declarations
(direction, headline, meaning, unit) so results of a plugin describe themselves. Schema 1 files
(everything in ``metrics``) are read and converted on load; they are never "complete" for a new
request (the run recomputes them).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
import warnings
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError, model_validator

from saebench.errors import SaebenchError
from saebench.io import atomic_write_json, read_json, slug

SCHEMA_VERSION = 2
TRACKED_PACKAGES = ("saebench", "torch", "transformer-lens", "transformers", "numpy", "sae-lens", "sae-probes")


class SAERecord(BaseModel):
    name: str
    source: str
    architecture: str
    d_in: int
    d_sae: int
    fingerprint: str


class Result(BaseModel):
    schema_version: int = SCHEMA_VERSION
    evaluator: str
    run_key: str
    sae: SAERecord
    config: dict[str, Any]
    metrics: dict[str, float | int | bool | None]
    uncertainty: dict[str, dict[str, Any]] = {}
    details: dict[str, Any] = {}
    samples: dict[str, Any] = {}
    declarations: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    env: dict[str, Any] = {}
    timing: dict[str, float] = {}
    created_at: str = ""

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: Any) -> Any:
        """Schema 1 kept lists, dicts and strings in ``metrics``: move them to ``details``."""
        if isinstance(data, dict) and data.get("schema_version") == 1 and isinstance(data.get("metrics"), dict):
            m = data["metrics"]
            numbers = {k: v for k, v in m.items() if v is None or isinstance(v, (int, float))}
            data = {**data, "metrics": numbers, "details": {k: v for k, v in m.items() if k not in numbers}}
        return data


def run_key(sae_fp: str, evaluator: str, config: dict[str, Any]) -> str:
    """Identity of a requested computation (device and timing excluded: they do not change it)."""
    stable = {k: v for k, v in config.items() if k != "device"}
    raw = json.dumps([sae_fp, evaluator, stable], sort_keys=True, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:20]


def result_path(out: Path, sae_name: str, evaluator: str) -> Path:
    """``OUT/<sae>/<evaluator>.json``; both names become safe path components (no ``..``, no
    separators), so no name can write outside ``out``."""
    return out / slug(sae_name) / f"{slug(evaluator)}.json"


def check_writable(out: Path) -> None:
    """Fail before any work when the output folder cannot be written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise SaebenchError(f"output folder {out} is not writable ({exc.strerror}); pass a writable --out") from exc


def write_result(result: Result, path: Path) -> None:
    """Write atomically: a reader sees the old file or the whole new one, never a part."""
    atomic_write_json(path, result.model_dump())


def read_result(path: Path) -> Result:
    """Parse one result file; a corrupt or foreign file raises SaebenchError naming it."""
    data = read_json(path, "result")
    try:
        return Result.model_validate(data)
    except (ValidationError, TypeError) as exc:
        raise SaebenchError(f"{path} is not a saebench result ({type(exc).__name__})") from exc


def complete_result(path: Path, key: str) -> Result | None:
    """The existing result at ``path`` when it is complete for ``key``, else None."""
    if not path.is_file():
        return None
    try:
        res = read_result(path)
    except SaebenchError:
        return None
    return res if res.schema_version == SCHEMA_VERSION and res.run_key == key else None


def result_files(paths: list[str | Path], what: str = "results path") -> list[Path]:
    """The JSON files named by ``paths`` (files as given, folders searched recursively)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(p.rglob("*.json")))
        elif p.is_file():
            files.append(p)
        else:
            raise SaebenchError(f"{what} {p} does not exist; pass result files or folders")
    return files


def load_results(paths: list[str | Path]) -> list[Result]:
    """Results from files and folders (recursively); unreadable files are skipped with a warning."""
    out = []
    for f in result_files(paths):
        try:
            out.append(read_result(f))
        except SaebenchError as exc:
            warnings.warn(f"skipping {exc}", stacklevel=2)
    return out


def results_frame(results: list[Result]) -> Any:
    """One row per result: sae.*, config.*, metrics (scalars only), evaluator."""
    import pandas as pd

    rows = []
    for r in results:
        row: dict[str, Any] = {"evaluator": r.evaluator}
        row.update({f"sae.{k}": v for k, v in r.sae.model_dump().items()})
        row.update({f"config.{k}": v for k, v in r.config.items() if not isinstance(v, (dict, list))})
        row.update({k: v for k, v in r.metrics.items() if not isinstance(v, (dict, list))})
        rows.append(row)
    return pd.DataFrame(rows)


def environment() -> dict[str, Any]:
    """Package versions, Python, platform, torch threads and the saebench git commit."""
    import torch

    pkgs = {}
    for name in TRACKED_PACKAGES:
        try:
            pkgs[name] = version(name)
        except PackageNotFoundError:
            pkgs[name] = None
    return {
        "packages": pkgs,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "git_commit": git_commit(),
    }


def git_commit() -> str | None:
    """HEAD of the checkout saebench runs from (None when installed from a wheel)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
