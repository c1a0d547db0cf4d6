"""The probing-task registry: one declarative TOML spec per task family, read with ``tomllib``.

Adding a task is adding (or extending) a spec file, never code. A spec names the family, its
source and citation, default sizes and pooling, where the data comes from and how an example's
text and binary label are built::

    family = "glue"
    source = "GLUE"
    citation = "Wang et al. 2018, GLUE: A multi-task benchmark ..."
    n_train = 1024                # default sizes (the paper profile); profiles cap them
    n_test = 1024
    pooling = "mean"              # "mean" over non-BOS tokens, or "last" token ("auto" uses this)

    [offline]                     # the offline source (what the embedded default runs on)
    format = "sae-probes"         # csv.zst shipped in the sae-probes package | "tsv" | "csv"
    text = "{prompt}"             # str.format template over the row's columns
    label = "target"              # label column
    positive = ["1"]              # values (compared as lower-cased strings) that mean y = 1
    # negative = [...]            # optional: other values are dropped (default: all others y = 0)

    [hub]                         # the same task for users online (datasets.load_dataset)
    dataset = "nyu-mll/glue"
    split = "validation"

    [[task]]                      # one entry per task; its tables are merged over the family's
    name = "glue_cola"
    offline = { file = "87_glue_cola" }
    hub = { config = "cola", text = "{sentence}", label = "label", positive = ["1"] }

Offline formats: ``sae-probes`` reads ``<file>.csv.zst`` from the installed package's
``data/cleaned_data`` folder; ``tsv``/``csv`` read ``file`` from the folder (or file) named by the
environment variable ``env`` or by the evaluator's ``data_paths[family]`` (Europarl:
``SAEBENCH_EUROPARL``), with ``columns`` naming a headerless TSV's columns. A task whose data is
missing is *unavailable* (skipped with a one-line reason), never a crash; a spec that names a
column its data lacks is a :class:`~saebench.errors.SaebenchError` naming column and file.

Sampling is seeded per task; ``balance = true`` (the default) draws equally many positives and
negatives, split stratified into train and test. Duplicate texts are dropped first so no example
is in both splits.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import random
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saebench.errors import SaebenchError

SPEC_DIR = Path(__file__).parent
POOLINGS = ("mean", "last")
_FAMILY_KEYS = {
    "family",
    "source",
    "citation",
    "description",
    "n_train",
    "n_test",
    "pooling",
    "balance",
    "offline",
    "hub",
    "task",
}
_TASK_KEYS = {"name", "description", "n_train", "n_test", "pooling", "balance", "offline", "hub"}


class TaskUnavailable(Exception):
    """A task that cannot run here (data missing, a single class): skipped with this reason."""


@dataclass(frozen=True)
class TaskSpec:
    """One binary task, resolved from its family spec (family fields merged under the task's)."""

    name: str
    family: str
    source: str
    citation: str
    description: str
    n_train: int
    n_test: int
    pooling: str
    balance: bool
    offline: dict[str, Any]
    hub: dict[str, Any] | None
    spec_file: str


@dataclass
class TaskData:
    """A task's sampled examples: ``texts[:n_train]`` are train, the rest test; ``labels`` 0/1."""

    spec: TaskSpec
    texts: list[str]
    labels: list[int]
    n_train: int
    origin: str
    notes: list[str] = field(default_factory=list)

    @property
    def n_test(self) -> int:
        return len(self.texts) - self.n_train


def _spec_error(path: Path, msg: str) -> SaebenchError:
    return SaebenchError(f"task spec {path}: {msg}")


def _parse_spec(path: Path) -> list[TaskSpec]:
    import tomllib  # stdlib from Python 3.11 (requires-python >= 3.11)

    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise _spec_error(path, f"cannot be read ({exc}); check the path") from exc
    except tomllib.TOMLDecodeError as exc:
        raise _spec_error(path, f"is not valid TOML ({exc}); fix its syntax") from exc
    unknown = set(raw) - _FAMILY_KEYS
    if unknown:
        raise _spec_error(
            path, f"unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_FAMILY_KEYS))}"
        )
    for key in ("family", "source", "citation"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise _spec_error(path, f"needs a string {key!r}")
    tasks = raw.get("task")
    if not isinstance(tasks, list) or not tasks:
        raise _spec_error(path, "declares no [[task]] entries; add at least one")
    out = []
    for entry in tasks:
        extra = set(entry) - _TASK_KEYS
        if extra:
            raise _spec_error(path, f"task {entry.get('name')!r} has unknown key(s) {', '.join(sorted(extra))}")
        if not isinstance(entry.get("name"), str) or not entry["name"]:
            raise _spec_error(path, "a [[task]] entry has no 'name'")
        offline = {**raw.get("offline", {}), **entry.get("offline", {})}
        hub = {**raw.get("hub", {}), **entry.get("hub", {})} if ("hub" in raw or "hub" in entry) else None
        pooling = entry.get("pooling", raw.get("pooling", "mean"))
        if pooling not in POOLINGS:
            raise _spec_error(path, f"task {entry['name']!r}: pooling {pooling!r} must be one of {', '.join(POOLINGS)}")
        for where, table in (("offline", offline), ("hub", hub or {"text": "-", "label": "-", "positive": ["-"]})):
            for key in ("text", "label", "positive"):
                if key not in table:
                    raise _spec_error(path, f"task {entry['name']!r}: [{where}] lacks {key!r}")
        if "format" not in offline:
            raise _spec_error(path, f"task {entry['name']!r}: [offline] lacks 'format' (sae-probes, tsv or csv)")
        out.append(
            TaskSpec(
                name=entry["name"],
                family=raw["family"],
                source=raw["source"],
                citation=raw["citation"],
                description=entry.get("description", raw.get("description", "")),
                n_train=int(entry.get("n_train", raw.get("n_train", 1024))),
                n_test=int(entry.get("n_test", raw.get("n_test", 1024))),
                pooling=pooling,
                balance=bool(entry.get("balance", raw.get("balance", True))),
                offline=offline,
                hub=hub,
                spec_file=str(path),
            )
        )
    return out


def load_specs(extra: list[str] | tuple[str, ...] = ()) -> dict[str, TaskSpec]:
    """Every task: the shipped specs (``tasks/*.toml``) plus user spec files, by task name."""
    paths = sorted(SPEC_DIR.glob("*.toml"))
    for p in extra:
        path = Path(p)
        if not path.is_file():
            raise SaebenchError(f"task spec {p} does not exist; pass an existing .toml file")
        paths.append(path)
    specs: dict[str, TaskSpec] = {}
    for path in paths:
        for spec in _parse_spec(path):
            if spec.name in specs:
                raise _spec_error(
                    path, f"task {spec.name!r} is already defined in {specs[spec.name].spec_file}; rename it"
                )
            specs[spec.name] = spec
    return specs


def select(specs: dict[str, TaskSpec], patterns: list[str] | None) -> list[TaskSpec]:
    """Tasks matching any name or glob in ``patterns`` (all when None), in registry order."""
    if not patterns:
        return list(specs.values())
    chosen = [s for s in specs.values() if any(fnmatch.fnmatchcase(s.name, p) or s.family == p for p in patterns)]
    missing = [p for p in patterns if not any(fnmatch.fnmatchcase(s.name, p) or s.family == p for s in specs.values())]
    if missing:
        raise SaebenchError(f"no task matches {', '.join(missing)}; `saebench tasks` lists the task names")
    return chosen


# -- offline sources -----------------------------------------------------------------------------


def _offline_path(spec: TaskSpec, data_paths: dict[str, str] | None) -> Path:
    """Where the offline data file should be (it may not exist), or TaskUnavailable."""
    off = spec.offline
    fmt = off["format"]
    if fmt == "sae-probes":
        from saebench.data import sae_probes_data_dir

        return sae_probes_data_dir() / f"{off['file']}.csv.zst"
    if fmt in ("tsv", "csv"):
        root = (data_paths or {}).get(spec.family) or (os.environ.get(off["env"]) if off.get("env") else None)
        if not root:
            how = f"set ${off['env']} or " if off.get("env") else ""
            raise TaskUnavailable(f"no local copy of {spec.source} ({how}pass data_paths.{spec.family}=PATH)")
        path = Path(root)
        return path / off["file"] if path.is_dir() else path
    raise SaebenchError(f"task spec {spec.spec_file}: unknown offline format {fmt!r}; use sae-probes, tsv or csv")


def offline_status(spec: TaskSpec, data_paths: dict[str, str] | None = None) -> tuple[bool, str]:
    """(available offline here, reason when not) without reading the data."""
    try:
        path = _offline_path(spec, data_paths)
    except TaskUnavailable as exc:
        return False, str(exc)
    except SaebenchError as exc:
        return False, str(exc)
    return (True, "") if path.is_file() else (False, f"{path} is missing")


def _read_offline(spec: TaskSpec, data_paths: dict[str, str] | None) -> tuple[Any, str]:
    import pandas as pd

    path = _offline_path(spec, data_paths)
    if not path.is_file():
        raise TaskUnavailable(f"offline data {path} is missing")
    fmt = spec.offline["format"]
    if fmt == "tsv":
        cols = spec.offline.get("columns")
        if not cols:
            raise _spec_error(Path(spec.spec_file), f"task {spec.name!r}: a tsv source needs 'columns'")
        rows = []
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                parts = line.rstrip("\n").split("\t", len(cols) - 1)
                if len(parts) == len(cols):
                    rows.append(parts)
        return pd.DataFrame(rows, columns=cols), str(path)
    return pd.read_csv(path), str(path)


def _read_hub(spec: TaskSpec) -> tuple[Any, str]:
    """The task's hub dataset as a DataFrame (needs network; ``explode`` unpacks dict columns)."""
    import pandas as pd

    hub = spec.hub or {}
    try:
        import datasets

        ds = datasets.load_dataset(hub["dataset"], hub.get("config"), split=hub.get("split", "train"))
    except Exception as exc:
        raise TaskUnavailable(f"hub dataset {hub.get('dataset')} unavailable ({type(exc).__name__})") from exc
    df = ds.to_pandas()
    if hub.get("explode"):
        col = hub["explode"]
        if col not in df.columns:
            raise SaebenchError(
                f"task spec {spec.spec_file}: column {col!r} not in hub dataset {hub['dataset']} (columns: "
                f"{', '.join(map(str, df.columns))})"
            )
        rows = [{"lang": k, "text": v} for d in df[col] for k, v in d.items()]
        df = pd.DataFrame(rows)
    return df, f"hf:{hub['dataset']}" + (f":{hub['config']}" if hub.get("config") else "")


def _norm(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).strip().lower()


def _build(spec: TaskSpec, df: Any, where: dict[str, Any], origin: str) -> tuple[list[str], list[int]]:
    """Texts and 0/1 labels from a frame, by the spec's template and label rule."""
    fields = [f for _, f, _, _ in string.Formatter().parse(where["text"]) if f]
    for col in [*fields, where["label"]]:
        if col not in df.columns:
            raise SaebenchError(
                f"task spec {spec.spec_file}: column {col!r} (task {spec.name}) not in {origin} "
                f"(columns: {', '.join(map(str, df.columns))}); fix the spec's text/label"
            )
    pos = {_norm(v) for v in where["positive"]}
    neg = {_norm(v) for v in where["negative"]} if "negative" in where else None
    texts, labels, seen = [], [], set()
    for row in df[[*dict.fromkeys([*fields, where["label"]])]].itertuples(index=False):
        rec = dict(zip(dict.fromkeys([*fields, where["label"]]), row, strict=True))
        if any(v is None or (isinstance(v, float) and v != v) for v in rec.values()):
            continue
        lab = _norm(rec[where["label"]])
        if neg is not None and lab not in pos and lab not in neg:
            continue
        text = where["text"].format(**{k: str(v) for k, v in rec.items()}).strip()
        if not text or text in seen:
            continue
        seen.add(text)
        texts.append(text)
        labels.append(int(lab in pos))
    return texts, labels


def load_task(
    spec: TaskSpec,
    n_train: int,
    n_test: int,
    seed: int,
    data_paths: dict[str, str] | None = None,
    use_hub: bool = False,
) -> TaskData:
    """Sample a task's train/test examples, or raise TaskUnavailable with a one-line reason."""
    notes: list[str] = []
    ok, why = offline_status(spec, data_paths)
    if ok:
        df, origin = _read_offline(spec, data_paths)
        where = spec.offline
    elif use_hub and spec.hub:
        df, origin = _read_hub(spec)
        where = spec.hub
    else:
        hint = "; with network pass use_hub=true" if spec.hub else ""
        raise TaskUnavailable(f"not available offline ({why}){hint}")
    texts, labels = _build(spec, df, where, origin)
    n_pos = sum(labels)
    if n_pos < 2 or len(labels) - n_pos < 2:
        raise TaskUnavailable(
            f"single class after filtering ({n_pos} positive, {len(labels) - n_pos} negative in {origin})"
        )
    rng = random.Random(f"{seed}:{spec.name}")
    order = list(range(len(texts)))
    rng.shuffle(order)
    pos = [i for i in order if labels[i]]
    neg = [i for i in order if not labels[i]]
    frac = 0.5 if spec.balance else len(pos) / len(order)
    want = n_train + n_test
    # largest total the classes can supply at this class ratio
    cap = min(want, int(len(pos) / frac) if frac > 0 else want, int(len(neg) / (1 - frac)) if frac < 1 else want)
    if cap < want:
        n_train, n_test = max(2, round(n_train * cap / want)), max(2, cap - round(n_train * cap / want))
        notes.append(f"{spec.name}: only {len(pos)}+{len(neg)} usable examples; sizes shrunk to {n_train}/{n_test}")
    tr_pos = max(1, round(n_train * frac))
    te_pos = max(1, round(n_test * frac))
    tr_neg, te_neg = max(1, n_train - tr_pos), max(1, n_test - te_pos)
    if tr_pos + te_pos > len(pos) or tr_neg + te_neg > len(neg):
        raise TaskUnavailable(f"too few examples per class ({len(pos)} positive, {len(neg)} negative)")
    train = pos[:tr_pos] + neg[:tr_neg]
    test = pos[tr_pos : tr_pos + te_pos] + neg[tr_neg : tr_neg + te_neg]
    rng.shuffle(train)
    rng.shuffle(test)
    idx = train + test
    return TaskData(spec, [texts[i] for i in idx], [labels[i] for i in idx], len(train), origin, notes)


def content_hash(task: TaskData) -> str:
    """Identity of a sampled task (texts and labels): part of every cache key built on it."""
    h = hashlib.sha256()
    for t, y in zip(task.texts, task.labels, strict=True):
        h.update(f"{y}\x1f{t}\x1e".encode())
    h.update(str(task.n_train).encode())
    return h.hexdigest()[:20]


def listing(
    extra: list[str] | tuple[str, ...] = (), data_paths: dict[str, str] | None = None, patterns: list[str] | None = None
) -> str:
    """The ``saebench tasks`` table: every task, its source, default sizes, pooling and whether
    its data is available offline on this machine (with the reason when not)."""
    from tabulate import tabulate

    specs = select(load_specs(extra), patterns)
    rows, n_off = [], 0
    for s in specs:
        ok, why = offline_status(s, data_paths)
        n_off += ok
        rows.append(
            [s.name, s.source, s.n_train, s.n_test, s.pooling, "yes" if ok else f"no: {why}", "yes" if s.hub else "-"]
        )
    out = tabulate(
        rows, headers=["task", "source", "n_train", "n_test", "pooling", "offline here", "hub"], tablefmt="github"
    )
    n_src = len({s.source for s in specs})
    return (
        f"{out}\n\n{len(specs)} tasks from {n_src} sources; {n_off} available offline here. "
        "Profiles cap the sizes (quick 32/32, standard 256/256, paper: as listed)."
    )
