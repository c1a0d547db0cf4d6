"""Versioned result files: one JSON per (SAE, evaluator), written atomically.

Layout: ``OUT/<sae name>/<evaluator>.json`` (both names made safe path components). A result is
*complete* for a request when the file parses, has this schema version, and its ``run_key`` (a
hash of the SAE fingerprint, the evaluator and its config, the run config and the token set)
equals the request's; complete
results are skipped on rerun unless ``--force``. An interrupted run resumes at the first
(SAE, evaluator) pair without a complete file; nothing partial is ever left behind
(temp file + ``os.replace``).

Integrity: every file carries ``checksum``, the SHA-256 of its canonical JSON without that field
(:func:`content_checksum`). A file that fails it (bit-flipped, truncated, edited) is never
"complete": the run says so in one line and recomputes it; readers (leaderboard, compare) refuse
it by name. Files without the field (written before it existed) are read as they are; delete the
field of a hand-edited file to accept the edit.

Out of space: when ``OUT`` cannot take a result, nothing computed is lost: the result is written
to a fallback folder (the system temp folder, else the home or working folder, else printed on
stdout) and the one-line error names the folder, the bytes needed and the ``mv`` that puts the
file in place (after which a rerun finds it complete).

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
from saebench.io import (
    WRITE_PROBE,
    atomic_write_text,
    free_bytes,
    human_bytes,
    is_out_of_space,
    log,
    read_json,
    slug,
    writing_in,
)

SCHEMA_VERSION = 2
#: the numbers of a metric's uncertainty record that the data frames carry
UNCERTAINTY_FIELDS = ("se", "ci_low", "ci_high", "n")
TRACKED_PACKAGES = ("saebench", "torch", "transformer-lens", "transformers", "numpy", "sae-lens", "sae-probes")


#: names of the zoo's floors (random init, PCA and neuron bases; :mod:`saebench.baselines`)
BASELINE_PREFIX = "baseline-"


def is_baseline(sae_name: str) -> bool:
    """A floor row, not an SAE under test: the board draws it apart and never marks it best, the
    gate skips it (named ``baseline-…`` by ``saebench zoo build --baselines``)."""
    return sae_name.startswith(BASELINE_PREFIX)


class SAERecord(BaseModel):
    name: str
    source: str
    architecture: str
    d_in: int
    d_sae: int
    fingerprint: str

    @classmethod
    def of(cls, ls: Any) -> SAERecord:
        """The record of a loaded SAE (:class:`saebench.loading.LoadedSAE`)."""
        return cls(
            name=ls.name,
            source=ls.source,
            architecture=ls.architecture,
            d_in=int(ls.sae.d_in),
            d_sae=int(ls.sae.d_sae),
            fingerprint=ls.fingerprint,
        )


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
        with writing_in(out):  # a concurrent run's stale-temp cleanup leaves this probe alone
            fd, probe = tempfile.mkstemp(dir=out, prefix=WRITE_PROBE)
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise SaebenchError(f"output folder {out} is not writable ({exc.strerror}); pass a writable --out") from exc


def content_checksum(data: dict[str, Any]) -> str:
    """SHA-256 of a result's JSON object without its ``checksum`` field, keys sorted, compact."""
    body = {k: v for k, v in data.items() if k != "checksum"}
    raw = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def result_text(result: Result) -> str:
    """The JSON text of a result file, its checksum filled in."""
    data = json.loads(json.dumps(result.model_dump()))  # exactly what a reader will parse
    data["checksum"] = content_checksum(data)
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def write_result(result: Result, path: Path) -> None:
    """Write atomically: a reader sees the old file or the whole new one, never a part.

    A filesystem error (a full disk above all) loses nothing: the result goes to a fallback
    file and the one-line :class:`SaebenchError` names it (see the module docstring)."""
    text = result_text(result)
    try:
        atomic_write_text(path, text)
    except OSError as exc:
        raise _unsaved(result, path, text, exc) from exc


def _unsaved(result: Result, path: Path, text: str, exc: OSError) -> SaebenchError:
    """Keep a result that could not be written to ``path``; the error that says where it went."""
    need = len(text.encode("utf-8"))
    folder = path.parent
    if is_out_of_space(exc):
        free = free_bytes(folder)
        problem = (
            f"out of space: writing {path} needs {need} bytes ({human_bytes(need)}) but {folder} has "
            f"{free if free is not None else 'an unknown number of'} bytes free"
        )
        fix = "free space there"
    else:
        problem = f"cannot write {path} ({exc.strerror or type(exc).__name__}; {need} bytes)"
        fix = "fix the folder"
    name = f"{slug(result.sae.name)}--{slug(result.evaluator)}-{result.run_key}.json"
    for base in _fallback_folders():
        target = base / name
        try:
            atomic_write_text(target, text)
        except OSError:
            continue
        return SaebenchError(
            f"{problem}; the computed result is kept in {target}: {fix}, then `mv {target} {path}` (or rerun with "
            "another --out); the rerun skips what is complete"
        )
    print(json.dumps(json.loads(text), separators=(",", ":")), flush=True)
    return SaebenchError(
        f"{problem}, and no fallback folder could be written either; the computed result was printed on stdout "
        f"(save it as {path}): {fix}"
    )


def _fallback_folders() -> list[Path]:
    """Where an unwritable result goes: the temp folder, then the home and working folders."""
    candidates = [Path(tempfile.gettempdir()) / "saebench-unsaved", Path.home() / "saebench-unsaved", Path.cwd()]
    return list(dict.fromkeys(candidates))


def read_result(path: Path) -> Result:
    """Parse one result file; a corrupt, foreign or modified file raises SaebenchError naming it."""
    data = read_json(path, "result")
    if isinstance(data, dict) and "checksum" in data:
        if data.pop("checksum") != content_checksum(data):
            raise SaebenchError(
                f"{path} fails its checksum: it was damaged or edited after saebench wrote it; regenerate it (or "
                'delete its "checksum" field to accept an edit)'
            )
    try:
        return Result.model_validate(data)
    except (ValidationError, TypeError) as exc:
        raise SaebenchError(f"{path} is not a saebench result ({type(exc).__name__})") from exc


def complete_result(path: Path, key: str, report: bool = True) -> Result | None:
    """The existing result at ``path`` when it is complete for ``key``, else None (a damaged file
    is reported in one line, unless ``report`` is off, and recomputed by the caller)."""
    if not path.is_file():
        return None
    try:
        res = read_result(path)
    except SaebenchError as exc:
        if report:
            log.warning(f"{str(exc).split(';')[0]}; recomputing it")
        return None
    return res if res.schema_version == SCHEMA_VERSION and res.run_key == key else None


def results_of_other_saes(folder: Path, fingerprint: str) -> list[Result]:
    """The readable results in one SAE's results folder whose SAE has another fingerprint (a
    different SAE that was given the same name). Damaged files are not counted: a run recomputes them."""
    if not folder.is_dir():
        return []
    found = []
    for f in sorted(folder.glob("*.json")):
        try:
            res = read_result(f)
        except SaebenchError:
            continue
        if res.sae.fingerprint != fingerprint:
            found.append(res)
    return found


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


def read_results(paths: list[str | Path], what: str = "results path") -> list[tuple[Path, Result]]:
    """Every readable result under ``paths`` with its file. A damaged or foreign file is named in one
    warning beside readable ones; when it is all there is, the error names it (and the fix) instead
    of claiming the folder holds no results."""
    found, damaged = [], []
    for f in result_files(paths, what):
        try:
            found.append((f, read_result(f)))
        except SaebenchError as exc:
            damaged.append(str(exc))
    if damaged and not found:
        more = f" (and {len(damaged) - 1} more damaged file(s))" if len(damaged) > 1 else ""
        raise SaebenchError(f"no readable saebench results under {', '.join(map(str, paths))}: {damaged[0]}{more}")
    for why in damaged:
        warnings.warn(f"skipping {why}", stacklevel=3)
    return found


def load_results(paths: list[str | Path]) -> list[Result]:
    """Results from files and folders (recursively); damaged files are skipped with a warning naming
    them (an error naming them when nothing else is readable)."""
    return [res for _, res in read_results(paths)]


def results_frame(results: list[Result]) -> Any:
    """One row per result: ``evaluator``, ``sae.*``, ``config.*``, every scalar metric, and each sampled
    metric's uncertainty as ``METRIC.se``, ``METRIC.ci_low``, ``METRIC.ci_high`` and ``METRIC.n``."""
    import pandas as pd

    rows = []
    for r in results:
        row: dict[str, Any] = {"evaluator": r.evaluator}
        row.update({f"sae.{k}": v for k, v in r.sae.model_dump().items()})
        row.update({f"config.{k}": v for k, v in r.config.items() if not isinstance(v, (dict, list))})
        row.update({k: v for k, v in r.metrics.items() if not isinstance(v, (dict, list))})
        for k, u in r.uncertainty.items():
            row.update({f"{k}.{f}": u.get(f) for f in UNCERTAINTY_FIELDS})
        rows.append(row)
    return pd.DataFrame(rows)


def metrics_frame(results: list[Result]) -> Any:
    """The long form: one row per (result, metric) with ``sae``, ``evaluator``, ``metric``, ``value``,
    its ``se``, ``ci_low``, ``ci_high``, ``n`` and ``unit`` (empty where not sampled) and the SAE's
    fingerprint: what a notebook filters, groups and plots."""
    import pandas as pd

    rows = []
    for r in results:
        for k, v in r.metrics.items():
            u = r.uncertainty.get(k) or {}
            rows.append(
                {
                    "sae": r.sae.name,
                    "evaluator": r.evaluator,
                    "metric": k,
                    "value": v,
                    **{f: u.get(f) for f in UNCERTAINTY_FIELDS},
                    "unit": u.get("unit"),
                    "fingerprint": r.sae.fingerprint,
                    "profile": r.config.get("profile"),
                    "seed": r.config.get("seed"),
                }
            )
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
