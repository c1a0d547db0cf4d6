"""Data for ``--evals scr`` and ``--evals tpp``: attribute pairs and multi-class datasets.

SAEBench runs SCR on Bias in Bios (profession x gender, De-Arteaga et al. 2019) and Amazon
reviews (product category x 1-vs-5-star sentiment, Hou et al. 2024 / McAuley), and TPP on their
classes. Neither is shipped offline. The ``sae-probes`` package (Kantamneni et al. 2025; MIT)
ships cleaned binary and multi-class files that stand in for them here:

SCR pairs (an *intended* attribute, a *spurious* one; "positive x positive" and "negative x
negative" are the big quadrants that form the biased set):

- ``reviews_yelp_movie``, ``reviews_amazon_yelp``, ``reviews_amazon_movie``: review *domain* x
  *sentiment*, the offline counterpart of SAEBench's Amazon category x rating. Yelp reviews
  (``111_yelp_data``, 1 star vs 5 stars), Amazon reviews (``157_amazon_5star``: 5 stars vs not)
  and movie-review snippets (``113_movie_sent``, positive vs negative);
- ``hist_fig_politician_gender``: historical figures' names joined across ``7_hist_fig_ispolitician``
  and ``5_hist_fig_ismale`` (Gurnee & Tegmark 2023's entities; 573 names carry both labels):
  occupation x gender, the counterpart of Bias in Bios' profession x gender on bare names.

TPP datasets (one-vs-rest classes, four per dataset so the mean over classes equals SAEBench's
mean over datasets of per-dataset means): ``news_class`` (``97_news_class``: news topics, the
counterpart of SAEBench's Amazon categories / AG News), ``twt_emotion`` (``102_twt_emotion``),
``it_tick`` (``103_it_tick``, four of its seven ticket types).

With SAEBench's data (``data=saebench``: its local layout under ``data_dir``, or the hub with
``use_hub=true``; :mod:`saebench.tasks.saebench_data`) the variant also runs on SAEBench's
datasets: ``bias_in_bios_*`` and ``amazon_*`` pairs (SAEBench's ``column1_vals_lookup``) and the
``bias_in_bios_set1`` / ``amazon_categories`` TPP datasets (SAEBench's chosen classes) from
``LabHC/bias_in_bios`` and ``canrager/amazon_reviews_mcauley_1and5``, sampled our way.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

from saebench.errors import SaebenchError
from saebench.tasks import TaskUnavailable

_SP = "Kantamneni et al. 2025, Are Sparse Autoencoders Useful? A Case Study in Sparse Probing (sae-probes data)"
_BIB = "De-Arteaga et al. 2019, Bias in Bios: A Case Study of Semantic Representation Bias in a High-Stakes Setting"
_AMZ = "Hou et al. 2024, Bridging Language and Items for Retrieval and Recommendation (Amazon Reviews 2023)"


@dataclass(frozen=True)
class Source:
    """Rows of one sae-probes ``cleaned_data`` file. ``fixed`` sets an attribute for every row;
    ``mapped[attr]`` maps the lower-cased ``column`` value to the attribute's value (rows whose
    value is not mapped are dropped)."""

    file: str
    fixed: dict[str, str] = field(default_factory=dict)
    mapped: dict[str, dict[str, str]] = field(default_factory=dict)
    column: str = "target"
    text: str = "prompt"


@dataclass(frozen=True)
class HubSource:
    """A hub dataset (``datasets.load_dataset(dataset)``, splits ``train``/``test``): ``columns``
    names each attribute's column, ``values[attr]`` maps its (stringified) raw values to names."""

    dataset: str
    text: str
    columns: dict[str, str]
    values: dict[str, dict[str, str]]


@dataclass(frozen=True)
class ScrPair:
    """Two binary attributes of one set of texts: ``intended`` and ``spurious`` as
    ``(attribute, positive value, negative value)``. Offline ``sources`` are concatenated
    (``combine="concat"``) or inner-joined on the text (``"join"``)."""

    name: str
    description: str
    citation: str
    intended: tuple[str, str, str]
    spurious: tuple[str, str, str]
    sources: tuple[Source, ...] = ()
    combine: str = "concat"
    hub: HubSource | None = None


@dataclass(frozen=True)
class TppDataset:
    """Classes of one dataset: ``classes`` are values of ``label`` (offline: ``source.column``);
    ``hub.values`` maps them for the hub, ``balance_by`` balances each class over a second column."""

    name: str
    description: str
    citation: str
    classes: tuple[str, ...]
    source: Source | None = None
    hub: HubSource | None = None
    balance_by: str | None = None


def _reviews(a: str, b: str) -> ScrPair:
    src = {
        "amazon": Source("157_amazon_5star", {"domain": "amazon"}, {"sentiment": {"1": "positive", "0": "negative"}}),
        "yelp": Source("111_yelp_data", {"domain": "yelp"}, {"sentiment": {"4": "positive", "0": "negative"}}),
        "movie": Source("113_movie_sent", {"domain": "movie"}, {"sentiment": {"1": "positive", "0": "negative"}}),
    }
    return ScrPair(
        f"reviews_{a}_{b}",
        f"review domain ({a} vs {b}) x sentiment (positive vs negative)",
        _SP + "; " + {"amazon": _AMZ, "yelp": "Yelp Open Dataset", "movie": "Pang & Lee 2005 (movie reviews)"}[a],
        ("domain", a, b),
        ("sentiment", "positive", "negative"),
        (src[a], src[b]),
    )


def _bib_pair(a: str, b: str, ids: dict[str, int]) -> ScrPair:
    return ScrPair(
        f"bias_in_bios_{a}_{b}",
        f"Bias in Bios: profession ({a} vs {b}) x gender",
        _BIB,
        ("profession", a, b),
        ("gender", "male", "female"),
        hub=HubSource(
            "LabHC/bias_in_bios",
            "hard_text",
            {"profession": "profession", "gender": "gender"},
            {"profession": {str(ids[a]): a, str(ids[b]): b}, "gender": {"0": "male", "1": "female"}},
        ),
    )


def _amazon_pair(a: str, b: str, ids: dict[str, int]) -> ScrPair:
    return ScrPair(
        f"amazon_{a.lower()}_{b.lower()}",
        f"Amazon reviews: category ({a} vs {b}) x rating (1 vs 5 stars)",
        _AMZ,
        ("category", a, b),
        ("rating", "5", "1"),
        hub=HubSource(
            "canrager/amazon_reviews_mcauley_1and5",
            "text",
            {"category": "category", "rating": "rating"},
            {"category": {str(ids[a]): a, str(ids[b]): b}, "rating": {"1.0": "1", "5.0": "5", "1": "1", "5": "5"}},
        ),
    )


# SAEBench's sae_bench_utils/dataset_info.py ids (profession_dict, amazon_category_dict)
_PROF = {"professor": 21, "nurse": 13, "architect": 1, "journalist": 11, "surgeon": 25, "psychologist": 22}
_PROF |= {"attorney": 2, "teacher": 26, "accountant": 0, "dentist": 6, "filmmaker": 9}
_CAT = {"Books": 24, "CDs_and_Vinyl": 26, "Software": 30, "Electronics": 6, "Pet_Supplies": 18}
_CAT |= {"Office_Products": 11, "Industrial_and_Scientific": 3, "Toys_and_Games": 1}
_CAT |= {"Cell_Phones_and_Accessories": 2, "Musical_Instruments": 5}
_AMZ_TPP = ("Toys_and_Games", "Cell_Phones_and_Accessories", "Industrial_and_Scientific", "Musical_Instruments")
_AMZ_TPP += ("Electronics",)

SCR_PAIRS: dict[str, ScrPair] = {
    p.name: p
    for p in (
        _reviews("yelp", "movie"),
        _reviews("amazon", "yelp"),
        _reviews("amazon", "movie"),
        ScrPair(
            "hist_fig_politician_gender",
            "historical figures' names: politician vs not x female vs male",
            _SP + "; Gurnee & Tegmark 2023, Language Models Represent Space and Time",
            ("occupation", "politician", "other"),
            ("gender", "female", "male"),
            (
                Source("7_hist_fig_ispolitician", mapped={"occupation": {"1": "politician", "0": "other"}}),
                Source("5_hist_fig_ismale", mapped={"gender": {"1": "male", "0": "female"}}),
            ),
            combine="join",
        ),
        _bib_pair("professor", "nurse", _PROF),
        _bib_pair("architect", "journalist", _PROF),
        _bib_pair("surgeon", "psychologist", _PROF),
        _bib_pair("attorney", "teacher", _PROF),
        _amazon_pair("Books", "CDs_and_Vinyl", _CAT),
        _amazon_pair("Software", "Electronics", _CAT),
        _amazon_pair("Pet_Supplies", "Office_Products", _CAT),
        _amazon_pair("Industrial_and_Scientific", "Toys_and_Games", _CAT),
    )
}

TPP_DATASETS: dict[str, TppDataset] = {
    d.name: d
    for d in (
        TppDataset(
            "news_class",
            "news topic: politics / technology / entertainment / sport",
            _SP,
            ("politics", "technology", "entertainment", "sport"),
            Source("97_news_class"),
        ),
        TppDataset(
            "twt_emotion",
            "tweet emotion: worry / happiness / sadness / surprise",
            _SP,
            ("worry", "happiness", "sadness", "surprise"),
            Source("102_twt_emotion"),
        ),
        TppDataset(
            "it_tick",
            "IT ticket type: HR support / hardware / access / purchase",
            _SP,
            ("hr support", "hardware", "access", "purchase"),
            Source("103_it_tick"),
        ),
        TppDataset(
            "bias_in_bios_set1",
            "Bias in Bios professions (SAEBench's class set 1), balanced by gender",
            _BIB,
            ("accountant", "architect", "attorney", "dentist", "filmmaker"),
            hub=HubSource(
                "LabHC/bias_in_bios",
                "hard_text",
                {"label": "profession", "gender": "gender"},
                {"label": {str(_PROF[c]): c for c in ("accountant", "architect", "attorney", "dentist", "filmmaker")}},
            ),
            balance_by="gender",
        ),
        TppDataset(
            "amazon_categories",
            "Amazon review categories (SAEBench's chosen five), balanced by rating",
            _AMZ,
            _AMZ_TPP,
            hub=HubSource(
                "canrager/amazon_reviews_mcauley_1and5",
                "text",
                {"label": "category", "rating": "rating"},
                {"label": {str(_CAT[c]): c for c in _AMZ_TPP}},
            ),
            balance_by="rating",
        ),
    )
}

# the default offline pairs: hist_fig_politician_gender is selectable by name, but its occupation probe on
# bare names barely beats chance (~0.54), so one text moves its score by ~0.25 (docs/scr_tpp.md, "Resolution")
OFFLINE_SCR = [p.name for p in SCR_PAIRS.values() if p.sources and p.name.startswith("reviews_")]
OFFLINE_TPP = [d.name for d in TPP_DATASETS.values() if d.source]


# -- reading ------------------------------------------------------------------------------------


def _norm(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).strip().lower()


def _read_source(src: Source) -> Any:
    """The file's rows as a DataFrame with ``text`` and one column per attribute (unmapped dropped)."""
    import pandas as pd

    from saebench.data import sae_probes_data_dir

    path = sae_probes_data_dir() / f"{src.file}.csv.zst"
    if not path.is_file():
        raise TaskUnavailable(f"offline data {path} is missing")
    df = pd.read_csv(path)
    for col in (src.text, src.column):
        if col not in df.columns:
            raise SaebenchError(f"scr/tpp data: column {col!r} not in {path}; the sae-probes package changed?")
    out = pd.DataFrame({"text": df[src.text].astype(str).str.strip()})
    keep = out["text"].str.len() > 0
    for attr, value in src.fixed.items():
        out[attr] = value
    raw = df[src.column].map(_norm)
    for attr, mapping in src.mapped.items():
        out[attr] = raw.map({k.lower(): v for k, v in mapping.items()})
        keep &= out[attr].notna()
    if not src.mapped and not src.fixed:
        out["label"] = raw
    return _unique(out[keep])


def _unique(df: Any) -> Any:
    """One row per text; a text listed with different attribute values (two people of one name) is dropped."""
    attrs = [c for c in df.columns if c != "text"]
    df = df.drop_duplicates()
    return df[~df.duplicated("text", keep=False)] if attrs else df


def _load_hub(hub: HubSource, data_dir: str | None, use_hub: bool) -> dict[str, Any]:
    """``{split: DataFrame}`` (``train``, ``test``) with ``text`` and the attribute columns mapped,
    read from SAEBench's local layout (:mod:`saebench.tasks.saebench_data`) or, with ``use_hub``,
    the hub."""
    import pandas as pd

    from saebench.tasks.saebench_data import load_split, missing_files

    if not use_hub and missing_files([hub.dataset], data_dir):
        raise TaskUnavailable(
            f"{hub.dataset}: missing {', '.join(missing_files([hub.dataset], data_dir))} (data_dir or use_hub=true)"
        )
    out = {}
    for split in ("train", "test"):
        df = load_split(hub.dataset, split, data_dir, use_hub)
        missing = [c for c in [hub.text, *hub.columns.values()] if c not in df.columns]
        if missing:
            raise SaebenchError(
                f"hub dataset {hub.dataset}: column(s) {', '.join(missing)} missing "
                f"(has {', '.join(map(str, df.columns))})"
            )
        frame = pd.DataFrame({"text": df[hub.text].astype(str).str.strip()})
        keep = frame["text"].str.len() > 0
        for attr, col in hub.columns.items():
            raw = df[col].map(_norm)
            if attr in hub.values:
                frame[attr] = raw.map({k.lower(): v for k, v in hub.values[attr].items()})
                keep &= frame[attr].notna()
            else:
                frame[attr] = raw
        out[split] = _unique(frame[keep])
    return out


# -- sampling -----------------------------------------------------------------------------------


def _samples_hash(texts: list[str], sets: dict[str, dict[str, tuple[list[int], list[int]]]]) -> str:
    """Content hash of a sample: its texts and which of them each probe set trains and tests on."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode() + b"\x1e")
    h.update(repr(sorted((s, k, v) for s, d in sets.items() for k, v in d.items())).encode())
    return h.hexdigest()[:16]


@dataclass
class ScrData:
    """A sampled SCR pair. ``texts`` are unique; ``sets[split][key] = (positive ids, negative ids)``
    for keys ``spurious``, ``intended`` and ``biased`` (indices into ``texts``)."""

    pair: ScrPair
    texts: list[str]
    sets: dict[str, dict[str, tuple[list[int], list[int]]]]
    n_train: int  # per quadrant
    n_test: int
    origin: str
    notes: list[str]

    def content_hash(self) -> str:
        return _samples_hash(self.texts, self.sets)


def _scr_frame(pair: ScrPair) -> Any:
    import pandas as pd

    frames = [_read_source(s) for s in pair.sources]
    if pair.combine == "join":
        df = frames[0]
        for f in frames[1:]:
            df = df.merge(f, on="text", how="inner")
    else:
        df = pd.concat(frames, ignore_index=True)
        df = df[~df.duplicated("text", keep=False)]  # a text in two sources has no single label
    return df


def _quadrants(df: Any, pair: ScrPair, rng: random.Random) -> dict[tuple[int, int], list[str]]:
    (ia, ip, ineg), (sa, sp, sneg) = pair.intended, pair.spurious
    q: dict[tuple[int, int], list[str]] = {}
    for a, av in ((1, ip), (0, ineg)):
        for b, bv in ((1, sp), (0, sneg)):
            texts = sorted(df[(df[ia] == av) & (df[sa] == bv)]["text"].tolist())
            rng.shuffle(texts)
            q[(a, b)] = texts
    return q


def _fit_sizes(n_tr: int, n_te: int, cap: int) -> tuple[int, int]:
    if n_tr + n_te <= cap:
        return n_tr, n_te
    tr = max(1, round(n_tr * cap / (n_tr + n_te)))
    return tr, max(1, cap - tr)


def load_scr(
    pair: ScrPair,
    n_train: int,
    n_test: int,
    seed: int,
    saebench_data: bool = False,
    data_dir: str | None = None,
    use_hub: bool = False,
) -> ScrData:
    """Sample a pair as SAEBench's ``get_spurious_corr_data`` does: per split and quadrant ``n``
    texts (``2n`` for the two diagonal quadrants, whose extra texts fill the biased set); offline
    files have no split, so each quadrant is shuffled once and cut into train then test. Sizes
    shrink (with a note) to what the smallest quadrant allows; TaskUnavailable when data is missing."""
    rng = random.Random(f"{seed}:scr:{pair.name}")
    notes: list[str] = []
    if pair.sources and not saebench_data:
        q = _quadrants(_scr_frame(pair), pair, rng)
        cap = min(len(q[(1, 0)]), len(q[(0, 1)]), len(q[(1, 1)]) // 2, len(q[(0, 0)]) // 2)
        tr, te = _fit_sizes(n_train, n_test, cap)
        if cap < 4:
            raise TaskUnavailable(f"{pair.name}: a quadrant has only {cap} usable examples")
        mult = {k: 2 if k[0] == k[1] else 1 for k in q}
        per_split = {
            "train": {k: v[: mult[k] * tr] for k, v in q.items()},
            "test": {k: v[mult[k] * tr : mult[k] * (tr + te)] for k, v in q.items()},
        }
        origin = "sae-probes:" + "+".join(s.file for s in pair.sources)
    elif saebench_data and pair.hub is not None:
        frames = _load_hub(pair.hub, data_dir, use_hub)
        per_split, sizes = {}, {}
        for split, want in (("train", n_train), ("test", n_test)):
            q = _quadrants(frames[split], pair, rng)
            cap = min(len(q[(1, 0)]), len(q[(0, 1)]), len(q[(1, 1)]) // 2, len(q[(0, 0)]) // 2)
            sizes[split] = min(want, cap)
            if sizes[split] < 2:
                raise TaskUnavailable(f"{pair.name}: the {split} split has a quadrant with {cap} usable examples")
            per_split[split] = {k: v[: (2 if k[0] == k[1] else 1) * sizes[split]] for k, v in q.items()}
        tr, te = sizes["train"], sizes["test"]
        origin = f"saebench-data:{pair.hub.dataset}"
    else:
        hint = "; it is SAEBench's: pass data=saebench (data_dir or use_hub)" if pair.hub else ""
        raise TaskUnavailable(f"{pair.name} has no {'SAEBench' if saebench_data else 'offline'} data{hint}")
    if (tr, te) != (n_train, n_test):
        notes.append(f"scr: {pair.name}: quadrants allow {tr} train / {te} test texts each (asked {n_train}/{n_test})")
    texts: list[str] = []
    index: dict[str, int] = {}

    def ids(lst: list[str]) -> list[int]:
        out = []
        for t in lst:
            if t not in index:
                index[t] = len(texts)
                texts.append(t)
            out.append(index[t])
        return out

    sets: dict[str, dict[str, tuple[list[int], list[int]]]] = {}
    for split, n in (("train", tr), ("test", te)):
        qq = per_split[split]
        sets[split] = {
            "spurious": (ids(qq[(1, 1)][:n] + qq[(0, 1)][:n]), ids(qq[(1, 0)][:n] + qq[(0, 0)][:n])),
            "intended": (ids(qq[(1, 1)][:n] + qq[(1, 0)][:n]), ids(qq[(0, 1)][:n] + qq[(0, 0)][:n])),
            "biased": (ids(qq[(1, 1)][: 2 * n]), ids(qq[(0, 0)][: 2 * n])),
        }
    return ScrData(pair, texts, sets, tr, te, origin, notes)


@dataclass
class TppData:
    """A sampled TPP dataset: ``texts``; ``sets[split][class] = (positive ids, negative ids)``
    where the negatives are drawn evenly from the other classes (same split)."""

    dataset: TppDataset
    texts: list[str]
    sets: dict[str, dict[str, tuple[list[int], list[int]]]]
    n_train: int  # per class
    n_test: int
    origin: str
    notes: list[str]

    def content_hash(self) -> str:
        return _samples_hash(self.texts, self.sets)


def _negatives(by_class: dict[str, list[int]], c: str, n: int, rng: random.Random) -> list[int]:
    """SAEBench's ``prepare_probe_data`` negatives, seeded: ``ceil(n / #others)`` from each other
    class, then ``n`` of those at random."""
    others = [k for k in by_class if k != c]
    per = -(-n // len(others))
    pool: list[int] = []
    for k in others:
        pool += rng.sample(by_class[k], min(per, len(by_class[k])))
    rng.shuffle(pool)
    return sorted(pool[:n])


def _balanced(frame: Any, label: str, value: str, by: str | None, n: int, rng: random.Random) -> list[str]:
    sub = frame[frame[label] == value]
    if by is None:
        texts = sorted(sub["text"].tolist())
        rng.shuffle(texts)
        return texts[:n]
    groups = sorted(sub[by].unique())
    per = n // max(1, len(groups))
    out: list[str] = []
    for g in groups:
        texts = sorted(sub[sub[by] == g]["text"].tolist())
        rng.shuffle(texts)
        out += texts[:per]
    return out


def load_tpp(
    ds: TppDataset,
    n_train: int,
    n_test: int,
    seed: int,
    saebench_data: bool = False,
    data_dir: str | None = None,
    use_hub: bool = False,
) -> TppData:
    """Sample ``n_train + n_test`` texts per class (SAEBench: per class, balanced over the second
    column where the hub data has one), and each class's one-vs-rest negatives."""
    rng = random.Random(f"{seed}:tpp:{ds.name}")
    notes: list[str] = []
    classes = list(ds.classes)
    per_split: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    if ds.source is not None and not saebench_data:
        df = _read_source(ds.source)
        present = set(df["label"])
        missing = [c for c in classes if c not in present]
        if missing:
            raise SaebenchError(f"tpp: {ds.name}: class(es) {', '.join(missing)} not in {ds.source.file}")
        texts = {c: _balanced(df, "label", c, None, n_train + n_test, rng) for c in classes}
        cap = min(len(v) for v in texts.values())
        tr, te = _fit_sizes(n_train, n_test, cap)
        for c in classes:
            per_split["train"][c] = texts[c][:tr]
            per_split["test"][c] = texts[c][tr : tr + te]
        origin = f"sae-probes:{ds.source.file}"
    elif saebench_data and ds.hub is not None:
        frames = _load_hub(ds.hub, data_dir, use_hub)
        sizes = {}
        for split, want in (("train", n_train), ("test", n_test)):
            got = {c: _balanced(frames[split], "label", c, ds.balance_by, want, rng) for c in classes}
            sizes[split] = min(len(v) for v in got.values())
            per_split[split] = {c: v[: sizes[split]] for c, v in got.items()}
        tr, te = sizes["train"], sizes["test"]
        origin = f"saebench-data:{ds.hub.dataset}"
    else:
        hint = "; it is SAEBench's: pass data=saebench (data_dir or use_hub)" if ds.hub else ""
        raise TaskUnavailable(f"{ds.name} has no {'SAEBench' if saebench_data else 'offline'} data{hint}")
    if min(tr, te) < 2:
        raise TaskUnavailable(f"{ds.name}: a class has too few examples ({tr} train / {te} test)")
    if (tr, te) != (n_train, n_test):
        notes.append(f"tpp: {ds.name}: classes allow {tr} train / {te} test texts each (asked {n_train}/{n_test})")
    all_texts: list[str] = []
    sets: dict[str, dict[str, tuple[list[int], list[int]]]] = {}
    for split in ("train", "test"):
        by_class: dict[str, list[int]] = {}
        for c in classes:
            start = len(all_texts)
            all_texts += per_split[split][c]
            by_class[c] = list(range(start, len(all_texts)))
        sets[split] = {c: (by_class[c], _negatives(by_class, c, len(by_class[c]), rng)) for c in classes}
    return TppData(ds, all_texts, sets, tr, te, origin, notes)


def select_names(registry: dict[str, Any], patterns: list[str] | None, default: list[str]) -> list[str]:
    """Names matching any of ``patterns`` (globs), or ``default``; a one-line error for no match."""
    import fnmatch

    if not patterns:
        return list(default)
    chosen = [n for n in registry if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    missing = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in registry)]
    if missing:
        raise SaebenchError(f"no dataset matches {', '.join(missing)}; known: {', '.join(registry)}")
    return chosen
