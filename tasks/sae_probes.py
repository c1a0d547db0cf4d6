"""The 113 binary datasets of Kantamneni et al. 2025 (``--evals sae_probes``), read from the
``sae-probes`` package (MIT) that ships them, and the samples of its four regimes.

Kantamneni, Engels, Rajamanoharan, Tegmark, Nanda 2025, "Are Sparse Autoencoders Useful? A Case
Study in Sparse Probing". The package's ``data/probing_datasets_MASTER.csv.zst`` lists its
datasets; the 113 whose ``Data type`` is ``Binary Classification`` are the benchmark, each a
``cleaned_data/<number>_<tag>.csv.zst`` with ``prompt`` and ``target`` columns. Labels follow
sklearn's ``LabelEncoder`` as the package does: the larger of the two sorted target values is
class 1. Eight of them ship an out-of-distribution test file (``OOD data/<tag>_OOD.csv.zst``:
fictional characters, misspelt or reordered names, translations, dialogue) for the covariate-shift
regime; the ninth OOD file (``66_living-room_translations``) is a translation table, not a test set.

:func:`sample` draws, per dataset, one balanced test set, one training pool and the OOD rows, so
that every regime's training set is a subset of one pool and every text needs one model pass:

- ``normal``: ``n_train`` balanced (``ceil(n/2)`` positives, as ``get_train_test_indices``);
- ``scarcity``: ``n`` balanced examples for each ``n`` of ``scarcity_sizes``;
- ``imbalance``: ``ceil(f · n_imbalance)`` positives for each fraction ``f``;
- ``label_noise``: the ``normal`` set with ``int(f · n_train)`` training labels flipped
  (``corrupt_ytrain``); the test labels stay clean;
- ``covariate_shift``: the ``normal`` set, tested on the OOD rows.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saebench.errors import SaebenchError
from saebench.tasks import TaskUnavailable

REGIMES = ("normal", "scarcity", "imbalance", "label_noise", "covariate_shift")
#: the datasets with an OOD test file: the quick profile's subset (all four regimes are defined on them)
OOD_DATASETS = (
    "5_hist_fig_ismale",
    "6_hist_fig_isamerican",
    "7_hist_fig_ispolitician",
    "66_living-room",
    "67_social-security",
    "73_control-group",
    "87_glue_cola",
    "90_glue_qnli",
)


def data_root() -> Path:
    """The sae-probes package's ``data`` folder."""
    from saebench.data import sae_probes_data_dir

    return sae_probes_data_dir().parent


def binary_datasets() -> list[str]:
    """The numbered tags (``5_hist_fig_ismale``, ...) of the package's binary datasets, in its order."""
    import pandas as pd

    path = data_root() / "probing_datasets_MASTER.csv.zst"
    if not path.is_file():
        raise SaebenchError(f"{path} is missing; reinstall the sae-probes package (pip install sae-probes)")
    df = pd.read_csv(path)
    names = df[df["Data type"] == "Binary Classification"]["Dataset save name"]
    return [str(n).split("/")[-1].split(".")[0] for n in names]


def ood_path(tag: str) -> Path:
    return data_root() / "OOD data" / f"{tag}_OOD.csv.zst"


def select(patterns: list[str] | None, default: list[str]) -> list[str]:
    """Tags matching any pattern (exact tag, glob, or the tag without its number), or ``default``."""
    import fnmatch

    every = binary_datasets()
    if not patterns:
        return list(default)

    def hit(tag: str, p: str) -> bool:
        return fnmatch.fnmatchcase(tag, p) or fnmatch.fnmatchcase(tag.split("_", 1)[1], p)

    missing = [p for p in patterns if not any(hit(t, p) for t in every)]
    if missing:
        raise SaebenchError(
            f"no sae-probes dataset matches {', '.join(missing)}; names look like 5_hist_fig_ismale (113 in all)"
        )
    return [t for t in every if any(hit(t, p) for p in patterns)]


def _encode(values: Any, where: str) -> tuple[list[int], list[str]]:
    """sklearn LabelEncoder semantics: class 1 is the larger of the two sorted distinct values."""
    import numpy as np

    uniq = sorted(np.unique(np.asarray(values)).tolist(), key=lambda v: (str(type(v)), v))
    if len(uniq) != 2:
        raise TaskUnavailable(f"{where} has {len(uniq)} label values, not 2")
    return [int(v == uniq[1]) for v in values], [str(u) for u in uniq]


def read(tag: str, ood: bool = False) -> tuple[list[str], list[int], list[str]]:
    """Texts, 0/1 labels and the two label values of a dataset (or of its OOD file). Texts are
    stripped of nothing and de-duplicated (a text with two labels is dropped)."""
    import pandas as pd

    path = ood_path(tag) if ood else data_root() / "cleaned_data" / f"{tag}.csv.zst"
    if not path.is_file():
        raise TaskUnavailable(f"{path} is missing")
    df = pd.read_csv(path)
    if "prompt" not in df.columns or "target" not in df.columns:
        raise SaebenchError(f"{path} lacks prompt/target columns; the sae-probes package changed?")
    df = df.dropna(subset=["prompt", "target"])
    y, values = _encode(df["target"].tolist(), str(path))
    texts = [str(t) for t in df["prompt"]]
    seen: dict[str, int] = {}
    clash: set[str] = set()
    for t, lab in zip(texts, y, strict=True):
        if t in seen and seen[t] != lab:
            clash.add(t)
        seen.setdefault(t, lab)
    keep = [(t, lab) for t, lab in seen.items() if t not in clash and t.strip()]
    return [t for t, _ in keep], [lab for _, lab in keep], values


@dataclass
class Setting:
    """One regime point: indices into the sample's ``texts`` and the (possibly noisy) train labels."""

    regime: str
    point: float  # n (scarcity), positive fraction (imbalance), flipped fraction (label_noise), else 0
    train: list[int]
    y_train: list[int]
    test: list[int]
    y_test: list[int]


@dataclass
class Sample:
    """A dataset's texts (test set, training pool, OOD rows) and its regime settings."""

    tag: str
    texts: list[str]
    settings: list[Setting]
    label_values: list[str]
    notes: list[str] = field(default_factory=list)

    def content_hash(self) -> str:
        h = hashlib.sha256()
        for t in self.texts:
            h.update(t.encode() + b"\x1e")
        for s in self.settings:
            h.update(repr((s.regime, s.point, s.train, s.y_train, s.test, s.y_test)).encode())
        return h.hexdigest()[:16]


def sample(
    tag: str,
    n_train: int,
    n_test: int,
    scarcity_sizes: list[int],
    imbalance_fracs: list[float],
    n_imbalance: int,
    noise_fracs: list[float],
    ood_max: int,
    seed: int,
) -> Sample:
    """Draw the dataset's test set, training pool and OOD rows, and every regime's setting."""
    texts, y, values = read(tag)
    rng = random.Random(f"{seed}:sae_probes:{tag}")
    pos = [i for i, v in enumerate(y) if v == 1]
    neg = [i for i, v in enumerate(y) if v == 0]
    rng.shuffle(pos)
    rng.shuffle(neg)
    notes: list[str] = []
    te_pos = math.ceil(n_test / 2)
    te_neg = n_test - te_pos
    if len(pos) < te_pos + 2 or len(neg) < te_neg + 2:
        raise TaskUnavailable(f"{tag}: {len(pos)} positive / {len(neg)} negative texts, too few for the test set")
    test = pos[:te_pos] + neg[:te_neg]
    # one training pool per class, as large as the largest regime needs: every regime draws from it
    need_pos = max(
        [math.ceil(n_train / 2)]
        + [math.ceil(n / 2) for n in scarcity_sizes]
        + [math.ceil(f * n_imbalance) for f in imbalance_fracs]
    )
    need_neg = max(
        [n_train - math.ceil(n_train / 2)]
        + [n - math.ceil(n / 2) for n in scarcity_sizes]
        + [n_imbalance - math.ceil(f * n_imbalance) for f in imbalance_fracs]
    )
    pool_pos, pool_neg = pos[te_pos : te_pos + need_pos], neg[te_neg : te_neg + need_neg]
    avail = min(len(pool_pos), len(pool_neg))
    if math.ceil(n_train / 2) > avail:
        n_new = 2 * avail
        notes.append(f"sae_probes: {tag}: {avail} texts per class left for training; n_train {n_train} -> {n_new}")
        n_train = n_new
    out_texts: list[str] = []
    index: dict[int, int] = {}

    def ids(lst: list[int]) -> list[int]:
        res = []
        for i in lst:
            if i not in index:
                index[i] = len(out_texts)
                out_texts.append(texts[i])
            res.append(index[i])
        return res

    test_ids, y_test = ids(test), [1] * te_pos + [0] * te_neg
    settings: list[Setting] = []

    def balanced(n_pos: int, n_neg: int, key: str) -> tuple[list[int], list[int]] | None:
        if n_pos > len(pool_pos) or n_neg > len(pool_neg) or n_pos < 1 or n_neg < 1:
            return None
        r = random.Random(f"{seed}:{tag}:{key}")
        chosen = [(i, 1) for i in r.sample(pool_pos, n_pos)] + [(i, 0) for i in r.sample(pool_neg, n_neg)]
        r.shuffle(chosen)
        return ids([i for i, _ in chosen]), [lab for _, lab in chosen]

    normal = balanced(math.ceil(n_train / 2), n_train - math.ceil(n_train / 2), "normal")
    if normal is None:
        raise TaskUnavailable(f"{tag}: too few texts for a training set of {n_train}")
    settings.append(Setting("normal", 0.0, normal[0], normal[1], test_ids, y_test))
    for n in scarcity_sizes:
        got = balanced(math.ceil(n / 2), n - math.ceil(n / 2), f"scarcity{n}")
        if got is None:
            notes.append(f"sae_probes: {tag}: scarcity n={n} skipped (too few texts)")
            continue
        settings.append(Setting("scarcity", float(n), got[0], got[1], test_ids, y_test))
    for f in imbalance_fracs:
        n_pos = math.ceil(f * n_imbalance)
        got = balanced(n_pos, n_imbalance - n_pos, f"imbalance{f}")
        if got is None:
            notes.append(f"sae_probes: {tag}: imbalance f={f} skipped (too few texts)")
            continue
        settings.append(Setting("imbalance", float(f), got[0], got[1], test_ids, y_test))
    for f in noise_fracs:
        r = random.Random(f"{seed}:{tag}:noise{f}")
        flip = set(r.sample(range(len(normal[1])), int(len(normal[1]) * f)))
        noisy = [1 - v if j in flip else v for j, v in enumerate(normal[1])]
        settings.append(Setting("label_noise", float(f), normal[0], noisy, test_ids, y_test))
    if ood_path(tag).is_file() and ood_max > 0:
        o_texts, o_y, o_values = read(tag, ood=True)
        if o_values != values:
            notes.append(f"sae_probes: {tag}: OOD labels {o_values} vs {values}: class 1 is the larger of each file's")
        r = random.Random(f"{seed}:{tag}:ood")
        o_pos = [i for i, v in enumerate(o_y) if v == 1]
        o_neg = [i for i, v in enumerate(o_y) if v == 0]
        r.shuffle(o_pos)
        r.shuffle(o_neg)
        half = math.ceil(ood_max / 2)
        take = o_pos[:half] + o_neg[: ood_max - min(half, len(o_pos))]
        o_ids = []
        for i in take:
            o_ids.append(len(out_texts))
            out_texts.append(o_texts[i])
        settings.append(Setting("covariate_shift", 0.0, normal[0], normal[1], o_ids, [o_y[i] for i in take]))
    return Sample(tag, out_texts, settings, values, notes)
