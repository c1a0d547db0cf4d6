"""SAEBench 0.6.0's classification datasets: where they are read from, and how SAEBench samples them.

Used by ``mode=saebench`` of ``--evals scr``, ``tpp`` and ``sparse_probing``. Every dataset is
read from a **local layout** when the user has the files, else (``use_hub=true``) from the hub
with ``datasets.load_dataset`` exactly as SAEBench loads it. The layout, under ``data_dir``
(``--set EVAL.data_dir=DIR`` or ``$SAEBENCH_DATA_DIR``): one folder per hub dataset, one file per
split, ``.parquet``, ``.csv`` or ``.jsonl``, rows in the hub's order, the hub's columns::

    DIR/LabHC/bias_in_bios/train.parquet, test.parquet        hard_text, profession (int), gender (int)
    DIR/canrager/amazon_reviews_mcauley_1and5/train.*, test.*  text, category (int), rating (1.0 / 5.0)
    DIR/fancyzhx/ag_news/train.*, test.*                       text, label (int)
    DIR/codeparrot/github-code/train.*                         code, language ("C", "Python", ...)
    DIR/Helsinki-NLP/europarl/<pair>/train.*                   translation ({lang: text}) or one column
                                                               per language; pairs en-fr fr-it de-en es-fr nl-pt

(``datasets.load_dataset(NAME).save_to_disk`` is not this layout; ``ds[split].to_parquet(
f"DIR/{NAME}/{split}.parquet")`` is.) The samplers below are SAEBench's ``dataset_creation`` and
``dataset_utils`` functions re-implemented from their code: the same rows, the same seeded
``numpy``/``pandas``/``random`` draws, the same keys, so the texts equal SAEBench's own.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

from saebench.errors import SaebenchError

SUFFIXES = (".parquet", ".csv", ".jsonl")
ENV_DATA_DIR = "SAEBENCH_DATA_DIR"
LAYOUT_DOC = "docs/saebench_mode.md#data"

# SAEBench's sae_bench_utils/dataset_info.py
PROFESSIONS = {
    "accountant": 0, "architect": 1, "attorney": 2, "chiropractor": 3, "comedian": 4, "composer": 5, "dentist": 6,
    "dietitian": 7, "dj": 8, "filmmaker": 9, "interior_designer": 10, "journalist": 11, "model": 12, "nurse": 13,
    "painter": 14, "paralegal": 15, "pastor": 16, "personal_trainer": 17, "photographer": 18, "physician": 19,
    "poet": 20, "professor": 21, "psychologist": 22, "rapper": 23, "software_engineer": 24, "surgeon": 25,
    "teacher": 26, "yoga_teacher": 27,
}  # fmt: skip
AMAZON_CATEGORIES = {
    "All_Beauty": 0, "Toys_and_Games": 1, "Cell_Phones_and_Accessories": 2, "Industrial_and_Scientific": 3,
    "Gift_Cards": 4, "Musical_Instruments": 5, "Electronics": 6, "Handmade_Products": 7, "Arts_Crafts_and_Sewing": 8,
    "Baby_Products": 9, "Health_and_Household": 10, "Office_Products": 11, "Digital_Music": 12,
    "Grocery_and_Gourmet_Food": 13, "Sports_and_Outdoors": 14, "Home_and_Kitchen": 15, "Subscription_Boxes": 16,
    "Tools_and_Home_Improvement": 17, "Pet_Supplies": 18, "Video_Games": 19, "Kindle_Store": 20,
    "Clothing_Shoes_and_Jewelry": 21, "Patio_Lawn_and_Garden": 22, "Unknown": 23, "Books": 24, "Automotive": 25,
    "CDs_and_Vinyl": 26, "Beauty_and_Personal_Care": 27, "Amazon_Fashion": 28, "Magazine_Subscriptions": 29,
    "Software": 30, "Health_and_Personal_Care": 31, "Appliances": 32, "Movies_and_TV": 33,
}  # fmt: skip
BIB, AMAZON = "LabHC/bias_in_bios", "canrager/amazon_reviews_mcauley_1and5"
METADATA = {  # text column, column1 (name -> id), column2 (value -> id)
    BIB: ("hard_text", "profession", PROFESSIONS, "gender", {"male": 0, "female": 1}),
    AMAZON: ("text", "category", AMAZON_CATEGORIES, "rating", {1.0: 1.0, 5.0: 5.0}),
}
CHOSEN_CLASSES = {
    "LabHC/bias_in_bios_class_set1": ["0", "1", "2", "6", "9"],
    "LabHC/bias_in_bios_class_set2": ["11", "13", "14", "18", "19"],
    "LabHC/bias_in_bios_class_set3": ["20", "21", "22", "25", "26"],
    "canrager/amazon_reviews_mcauley_1and5": ["1", "2", "3", "5", "6"],
    "canrager/amazon_reviews_mcauley_1and5_sentiment": ["1.0", "5.0"],
    "codeparrot/github-code": ["C", "Python", "HTML", "Java", "PHP"],
    "fancyzhx/ag_news": ["0", "1", "2", "3"],
    "Helsinki-NLP/europarl": ["en", "fr", "de", "es", "nl"],
}
SCR_COLUMN2 = {"LabHC/bias_in_bios_class_set1": ("male", "female"), AMAZON: (1.0, 5.0)}
SCR_PAIRS = {  # SAEBench's ScrAndTppEvalConfig.column1_vals_lookup
    "LabHC/bias_in_bios_class_set1": [
        ("professor", "nurse"), ("architect", "journalist"), ("surgeon", "psychologist"), ("attorney", "teacher"),
    ],
    AMAZON: [
        ("Books", "CDs_and_Vinyl"), ("Software", "Electronics"), ("Pet_Supplies", "Office_Products"),
        ("Industrial_and_Scientific", "Toys_and_Games"),
    ],
}  # fmt: skip
EUROPARL_PAIRS = {"en": "en-fr", "fr": "fr-it", "de": "de-en", "es": "es-fr", "nl": "nl-pt"}


def hub_name(dataset: str) -> str:
    """The hub dataset behind one of SAEBench's dataset names."""
    return dataset.split("_class_set")[0].split("_sentiment")[0]


def needed_files(dataset: str) -> list[str]:
    """Relative paths (without suffix) the local layout needs for ``dataset``."""
    hub = hub_name(dataset)
    if hub == "codeparrot/github-code":
        return [f"{hub}/train"]
    if hub == "Helsinki-NLP/europarl":
        return [f"{hub}/{p}/train" for p in EUROPARL_PAIRS.values()]
    return [f"{hub}/train", f"{hub}/test"]


def data_root(data_dir: str | None) -> Path | None:
    where = data_dir or os.environ.get(ENV_DATA_DIR)
    return Path(where).expanduser() if where else None


def _find(root: Path, rel: str) -> Path | None:
    for suffix in SUFFIXES:
        if (root / f"{rel}{suffix}").is_file():
            return root / f"{rel}{suffix}"
    return None


def missing_files(datasets: list[str], data_dir: str | None) -> list[str]:
    """The layout files ``datasets`` need that are not under the data root (all, without one)."""
    root = data_root(data_dir)
    need = sorted({rel for d in datasets for rel in needed_files(d)})
    if root is None:
        return need
    return [rel for rel in need if _find(root, rel) is None]


def require(evaluator: str, datasets: list[str], data_dir: str | None, use_hub: bool) -> None:
    """A one-line :class:`SaebenchError` (exit 2) naming the missing files and the layout, unless
    every file is there or the hub is allowed."""
    if use_hub:
        return
    missing = missing_files(datasets, data_dir)
    if not missing:
        return
    root = data_root(data_dir)
    where = f"under {root}" if root else f"(no data_dir: --set {evaluator}.data_dir=DIR or ${ENV_DATA_DIR})"
    raise SaebenchError(
        f"{evaluator} mode=saebench needs SAEBench's datasets; missing {compact(missing)} {where} (one file per "
        f"split, .parquet/.csv/.jsonl with the hub's columns: {LAYOUT_DOC}); or pass --set {evaluator}.use_hub=true "
        "with network"
    )


def compact(paths: list[str]) -> str:
    """``a/b/{train,test}.parquet`` for files sharing a folder: every missing file, one line."""
    groups: dict[str, list[str]] = {}
    for p in paths:
        folder, _, name = p.rpartition("/")
        groups.setdefault(folder, []).append(name)
    if any("/" in f for f in groups):  # europarl's per-pair folders: group once more by their parent
        parents: dict[str, list[str]] = {}
        for folder, names in groups.items():
            parent, _, leaf = folder.rpartition("/")
            key = f"{parent}|{','.join(names)}"
            parents.setdefault(key, []).append(leaf)
        out = []
        for key, leaves in parents.items():
            parent, names = key.split("|")
            mid = leaves[0] if len(leaves) == 1 else "{" + ",".join(leaves) + "}"
            files = names if "," not in names else "{" + names + "}"
            out.append(f"{parent}/{mid}/{files}.parquet" if parent else f"{mid}/{files}.parquet")
        return ", ".join(out)
    return ", ".join(f"{f}/{n[0] if len(n) == 1 else '{' + ','.join(n) + '}'}.parquet" for f, n in groups.items())


def _read(path: Path) -> Any:
    import pandas as pd

    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        if path.suffix == ".csv":
            return pd.read_csv(path, keep_default_na=False)
        return pd.read_json(path, lines=True)
    except Exception as exc:  # noqa: BLE001 - any reader error is the user's file
        why = f"{type(exc).__name__}: {str(exc)[:100]}"
        raise SaebenchError(f"cannot read {path} ({why}); fix or replace the file") from exc


def load_split(hub: str, split: str, data_dir: str | None, use_hub: bool, config: str | None = None) -> Any:
    """One split of a hub dataset as a DataFrame in the hub's row order: the local file when
    present, else ``datasets.load_dataset`` (only with ``use_hub``)."""
    import pandas as pd

    root = data_root(data_dir)
    rel = f"{hub}/{config}/{split}" if config else f"{hub}/{split}"
    path = _find(root, rel) if root else None
    if path is not None:
        return _read(path)
    if not use_hub:
        raise SaebenchError(f"missing {rel}.parquet under {root}; see {LAYOUT_DOC} or pass use_hub=true")
    try:
        import datasets

        ds = datasets.load_dataset(hub, config, split=split) if config else datasets.load_dataset(hub, split=split)
    except Exception as exc:  # noqa: BLE001 - the hub's errors are many; one line for all
        why = type(exc).__name__
        raise SaebenchError(f"hub dataset {hub} unavailable ({why}); put it under data_dir instead") from exc
    return pd.DataFrame(ds)


def _column(df: Any, name: str, where: str) -> Any:
    if name not in df.columns:
        raise SaebenchError(
            f"{where}: column {name!r} missing (has {', '.join(map(str, df.columns))}); see {LAYOUT_DOC}"
        )
    return df[name]


# -- SAEBench's samplers --------------------------------------------------------------------------


def spurious_corr_data(
    df: Any, dataset: str, column1_vals: tuple[str, str], column2_vals: tuple[Any, Any], m: int, seed: int
) -> dict[str, list[str]]:
    """SAEBench's ``get_spurious_corr_data``: the six SCR keys, ``2m`` texts each."""
    import numpy as np

    text, c1, map1, c2, map2 = METADATA[hub_name(dataset)]
    col1, col2, texts = _column(df, c1, dataset), _column(df, c2, dataset), _column(df, text, dataset)
    p1, n1 = map1[column1_vals[0]], map1[column1_vals[1]]
    p2, n2 = map2[column2_vals[0]], map2[column2_vals[1]]
    pos_neg = texts[(col1 == n1) & (col2 == p2)].tolist()
    neg_neg = texts[(col1 == n1) & (col2 == n2)].tolist()
    pos_pos = texts[(col1 == p1) & (col2 == p2)].tolist()
    neg_pos = texts[(col1 == p1) & (col2 == n2)].tolist()
    smallest = min(len(pos_neg), len(neg_neg), len(pos_pos), len(neg_pos))
    if smallest < m or len(pos_pos) <= 2 * m or len(neg_neg) <= 2 * m:
        raise SaebenchError(
            f"{dataset} {column1_vals[0]}/{column1_vals[1]}: quadrants of {len(pos_pos)}, {len(pos_neg)}, "
            f"{len(neg_pos)}, {len(neg_neg)} texts cannot give {m} per quadrant and more than {2 * m} on the "
            "diagonal (SAEBench asserts this); lower the set sizes or use the full dataset"
        )
    keys = {
        "male / female": pos_pos[:m] + pos_neg[:m],
        "female_data_only": neg_pos[:m] + neg_neg[:m],
        "professor / nurse": pos_pos[:m] + neg_pos[:m],
        "nurse_data_only": pos_neg[:m] + neg_neg[:m],
        "male_professor / female_nurse": pos_pos[: 2 * m],
        "female_nurse_data_only": neg_neg[: 2 * m],
    }
    rng = np.random.default_rng(seed)
    for v in keys.values():
        rng.shuffle(v)
    return {k: v[: 2 * m] for k, v in keys.items()}


def balanced_data(df: Any, dataset: str, m: int, seed: int) -> dict[str, list[str]]:
    """SAEBench's ``get_balanced_dataset``: per column-1 value with ``m`` texts in each of its
    column-2 groups, ``m`` sampled from each group (pandas, ``random_state=seed``)."""
    text, c1, _, c2, _ = METADATA[hub_name(dataset)]
    _column(df, text, dataset), _column(df, c1, dataset), _column(df, c2, dataset)
    out: dict[str, list[str]] = {}
    for value in df[c1].unique():
        sub = df[df[c1] == value]
        if len(sub[c2].unique()) < 2 or sub[c2].value_counts().min() < m:
            continue
        texts: list[str] = []
        for _, group in sub.groupby(c2):
            texts.extend(group.sample(n=m, random_state=seed)[text].tolist())
        out[str(value)] = texts
    return out


def _sample_per_value(df: Any, column: str, text: str, values: list[Any], n: int, seed: int, where: str) -> dict:
    out = {}
    for v in values:
        sub = df[_column(df, column, where) == v]
        if len(sub) < n:
            raise SaebenchError(f"{where}: {column}={v!r} has {len(sub)} rows, SAEBench samples {n}")
        out[str(v)] = sub[text].sample(n=n, random_state=seed).tolist()
    return out


def stream_rows(
    hub: str, split: str, data_dir: str | None, use_hub: bool, config: str | None = None, **hub_kwargs: Any
) -> Any:
    """Rows (dicts) of one split in order, for SAEBench's streamed datasets: the local file when
    present, else ``datasets.load_dataset(..., streaming=True)`` (only with ``use_hub``)."""
    root = data_root(data_dir)
    rel = f"{hub}/{config}/{split}" if config else f"{hub}/{split}"
    path = _find(root, rel) if root else None
    if path is not None:
        yield from _read(path).to_dict(orient="records")
        return
    if not use_hub:
        raise SaebenchError(f"missing {rel}.parquet under {root}; see {LAYOUT_DOC} or pass use_hub=true")
    try:
        import datasets

        args = (hub, config) if config else (hub,)
        ds = datasets.load_dataset(*args, split=split, streaming=True, **hub_kwargs)
    except Exception as exc:  # noqa: BLE001 - the hub's errors are many; one line for all
        why = type(exc).__name__
        raise SaebenchError(f"hub dataset {hub} unavailable ({why}); put it under data_dir instead") from exc
    yield from ds


def _github(rows: Any, chosen: list[str], train: int, test: int, seed: int) -> tuple[dict, dict]:
    """SAEBench's ``get_github_code_dataset``: files longer than 534 characters, their first 150
    skipped, collected in order until every language has more than ``train + test``."""
    skip, need = 50 * 3, 128 * 3 + 50 * 3
    total = train + test
    samples: dict[str, list[str]] = {c: [] for c in chosen}
    for row in rows:
        code, lang = row.get("code"), row.get("language")
        if code is None or lang is None:
            raise SaebenchError(f"codeparrot/github-code rows need 'code' and 'language' columns; see {LAYOUT_DOC}")
        if lang in samples and len(code) > need:
            samples[lang].append(code[skip:])
        if all(len(samples[c]) > total for c in chosen):
            break
    rng = random.Random(seed)
    tr, te = {}, {}
    for c in chosen:
        rng.shuffle(samples[c])
        tr[c], te[c] = samples[c][:train], samples[c][train : train + test]
        if len(tr[c]) != train or len(te[c]) != test:
            raise SaebenchError(f"github-code: {c} has {len(samples[c])} long-enough files, SAEBench needs {total}")
    return tr, te


def _europarl(data_dir: str | None, use_hub: bool, chosen: list[str], train: int, test: int, seed: int) -> tuple:
    """SAEBench's ``get_europarl_dataset``: the first ``train + test + 1`` sentences of each
    language from its pair, shuffled (``random.seed(seed)``), cut into train then test."""
    per = train + test
    samples: dict[str, list[str]] = {}
    for lang, pair in EUROPARL_PAIRS.items():
        samples[lang] = []
        for row in stream_rows("Helsinki-NLP/europarl", "train", data_dir, use_hub, config=pair):
            t = row.get("translation")
            text = t.get(lang) if isinstance(t, dict) else row.get(lang)
            if text is None:
                raise SaebenchError(f"europarl {pair}: rows need 'translation' ({{lang: text}}) or a {lang!r} column")
            samples[lang].append(text)
            if len(samples[lang]) > per:
                break
    rng = random.Random(seed)
    tr, te = {}, {}
    for lang in chosen:
        rng.shuffle(samples[lang])
        tr[lang], te[lang] = samples[lang][:train], samples[lang][train : train + test]
        if len(tr[lang]) != train or len(te[lang]) != test:
            raise SaebenchError(f"europarl: {lang} has {len(samples[lang])} sentences, SAEBench needs {per + 1}")
    return tr, te


def _shared(train: dict, test: dict) -> tuple[dict, dict]:
    """SAEBench's ``ensure_shared_keys``."""
    keep = set(train) & set(test)
    return {k: v for k, v in train.items() if k in keep}, {k: v for k, v in test.items() if k in keep}


def multi_label_data(
    dataset: str, train_size: int, test_size: int, seed: int, data_dir: str | None, use_hub: bool
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """SAEBench's ``get_multi_label_train_test_data`` then ``filter_dataset`` to its chosen classes."""
    if dataset not in CHOSEN_CLASSES:
        raise SaebenchError(f"unknown SAEBench dataset {dataset!r}; known: {', '.join(CHOSEN_CLASSES)}")
    hub, chosen = hub_name(dataset), CHOSEN_CLASSES[dataset]
    if "bias_in_bios" in dataset or dataset == AMAZON:
        tr = balanced_data(load_split(hub, "train", data_dir, use_hub), dataset, train_size // 4, seed)
        te = balanced_data(load_split(hub, "test", data_dir, use_hub), dataset, test_size // 4, seed)
    elif dataset.endswith("_sentiment"):
        frames = [load_split(hub, s, data_dir, use_hub) for s in ("train", "test")]
        tr, te = (
            _sample_per_value(f, "rating", "text", list(f["rating"].unique()), n // 2, seed, dataset)
            for f, n in zip(frames, (train_size, test_size), strict=True)
        )
    elif hub == "fancyzhx/ag_news":
        tr, te = (
            _sample_per_value(load_split(hub, s, data_dir, use_hub), "label", "text", [int(c) for c in chosen],
                              n // 2, seed, dataset)
            for s, n in (("train", train_size), ("test", test_size))
        )  # fmt: skip
    elif hub == "codeparrot/github-code":
        rows = stream_rows(hub, "train", data_dir, use_hub, trust_remote_code=True, languages=chosen)
        tr, te = _github(rows, chosen, train_size // 2, test_size // 2, seed)
    else:
        tr, te = _europarl(data_dir, use_hub, chosen, train_size // 2, test_size // 2, seed)
    tr, te = _shared(tr, te)
    missing = [c for c in chosen if c not in tr]
    if missing:
        raise SaebenchError(
            f"{dataset}: class(es) {', '.join(missing)} lack enough texts at these set sizes (SAEBench fails here)"
        )
    return {c: tr[c] for c in chosen}, {c: te[c] for c in chosen}


def scr_data(
    dataset: str, pair: tuple[str, str], train_size: int, test_size: int, seed: int, data_dir: str | None, use_hub: bool
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """SAEBench's ``get_train_test_data`` for SCR: the six keys per split for one class pair."""
    hub = hub_name(dataset)
    col2 = SCR_COLUMN2[dataset]
    tr = spurious_corr_data(load_split(hub, "train", data_dir, use_hub), dataset, pair, col2, train_size // 4, seed)
    te = spurious_corr_data(load_split(hub, "test", data_dir, use_hub), dataset, pair, col2, test_size // 4, seed)
    return _shared(tr, te)
