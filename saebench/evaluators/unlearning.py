"""``--evals unlearning``: SAEBench's clamp intervention, scored by language-model loss on open data.

SAEBench 0.6.0's ``unlearning`` (Farrell et al. 2024) removes a topic from an instruct model by
clamping SAE latents: latents that fire on a *forget* corpus and (almost) never on a *retain* corpus
are set to a negative value wherever they fire, swept over retain thresholds x numbers of latents x
multipliers (:mod:`saebench.probes.unlearning`). Its ``unlearning_score`` is 1 − (the lowest WMDP-bio
accuracy among settings that keep MMLU side-effect accuracy ≥ 0.99), on gated data. Here the same
selection, intervention and sweep are scored on texts that ship offline, by next-token loss:

- **forget**: documents of one topic (default: the cancer research papers of the ``sae-probes``
  dataset ``98_cancer_cat``; or ``forget_file``, a JSONL of texts such as WMDP's bio forget corpus);
- **retain**: general text (default: the ``eval`` split of the offline corpus, without the medical
  abstracts ``101_disease_class`` and the forget dataset; or ``retain_file``);
- each side's documents are ordered by a seeded hash and cut into three disjoint parts:
  ``n_select_docs`` to measure latent sparsity (selection), ``n_tune_docs`` to run the sweep and
  choose one setting, ``n_test_docs`` to measure the chosen setting (the reported numbers);
- the chosen setting is the one with the largest forget-side loss increase among those whose
  retain-side increase is at most ``retain_tolerance`` x the clean retain loss (on the tune part);
- reported on the test part, per document (one row: BOS + its first ``ctx_len - 1`` tokens), paired
  (the same documents with and without the intervention): ``unlearn_forget_loss_increase`` and
  ``unlearn_retain_loss_increase``, mean increase in next-token CE (nats per token), with intervals
  over documents. No setting within the bound: the intervention is "none" and both are 0.

Not SAEBench's number (different data and a loss instead of multiple-choice accuracy): our names,
never exported as SAEBench's ``unlearning`` (docs/unlearning.md).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import field_validator

from saebench.data import MAX_DOC_CHARS, SAE_PROBES_FILES, in_split, sae_probes_data_dir
from saebench.errors import SaebenchError
from saebench.evaluators.base import EvalConfig, EvalContext, EvalOutput, Metric
from saebench.pipeline import ActivationPipeline
from saebench.pipeline.doc_rows import DocRows, clean_losses, doc_rows, row_losses, row_states
from saebench.probes import unlearning as U
from saebench.stats import Ratio, Samples, proportion_of

FORGET_UNIT, RETAIN_UNIT = "forget_doc", "retain_doc"
PARTS = ("select", "tune", "test")
CHARS_PER_TOKEN = 24  # texts are cut to this many characters per row token before tokenizing (a token is ~4)


class UnlearningConfig(EvalConfig):
    """Settings of ``--evals unlearning`` (``--set unlearning.KEY=VALUE``)."""

    forget_dataset: str = "98_cancer_cat"  # a sae-probes cleaned_data dataset: its texts are the forget topic
    forget_file: str | None = None  # JSONL of texts ({"text": ...} per line, or a JSON string): replaces forget_dataset
    retain_file: str | None = None  # JSONL of texts: replaces the offline corpus as the retain set
    retain_exclude: list[str] = ["101_disease_class"]  # corpus files left out of the default retain set
    ctx_len: int = 64  # tokens per document row (BOS included)
    min_doc_tokens: int = 24  # shorter documents are skipped
    n_select_docs: int = 64  # per side: latent sparsity
    n_tune_docs: int = 16  # per side: the sweep
    n_test_docs: int = 32  # per side: the reported numbers
    retain_thresholds: list[float] = [0.001, 0.01]  # SAEBench's
    n_latents: list[int] = [10, 20]  # SAEBench's
    multipliers: list[float] = [5.0, 25.0]  # SAEBench sweeps 25, 50, 100, 200 (tuned on Gemma-2-2B; docs/unlearning.md)
    retain_tolerance: float = 0.01  # retain-side increase allowed, as a fraction of the clean retain loss

    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": {},
        "standard": {
            "ctx_len": 128,
            "min_doc_tokens": 64,
            "n_select_docs": 256,
            "n_tune_docs": 64,
            "n_test_docs": 128,
            "multipliers": [1.0, 5.0, 25.0, 50.0, 100.0, 200.0],
        },
        "paper": {
            "ctx_len": 1024,
            "min_doc_tokens": 256,
            "n_select_docs": 1024,
            "n_tune_docs": 128,
            "n_test_docs": 256,
            "multipliers": [1.0, 5.0, 25.0, 50.0, 100.0, 200.0],
        },
    }

    @field_validator("n_select_docs", "n_tune_docs", "n_test_docs", "min_doc_tokens")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be at least 1")
        return v


def _metric(name: str, meaning: str, direction: str = "", headline: bool = False, **kw: Any) -> Metric:
    return Metric(name, meaning, direction, headline, **kw)  # type: ignore[arg-type]


def _mean(unit: str, col: str) -> Ratio:
    return Ratio(unit, {col: 1.0}, {"n": 1.0})


METRICS = (
    _metric(
        "unlearn_forget_loss_increase",
        "mean rise of next-token CE on held-out forget-topic documents when the chosen setting's latents are "
        "clamped (largest on the tune part with the retain rise within its bound), paired per document",
        "up",
        True,
        unit="nats/token",
        title="unlearn forget ΔCE",
        min_effect=0.01,
        estimator=_mean(FORGET_UNIT, "inc"),
    ),
    _metric(
        "unlearn_retain_loss_increase",
        "the same setting's rise of next-token CE on held-out retain documents (the side effect)",
        "down",
        unit="nats/token",
        min_effect=0.005,
        estimator=_mean(RETAIN_UNIT, "inc"),
    ),
    _metric("unlearn_forget_loss_clean", "clean next-token CE on the forget test documents", unit="nats/token",
            estimator=_mean(FORGET_UNIT, "clean")),
    _metric("unlearn_retain_loss_clean", "clean next-token CE on the retain test documents", unit="nats/token",
            estimator=_mean(RETAIN_UNIT, "clean")),
    _metric("unlearn_forget_docs_touched", "share of forget test documents where a clamped latent fires",
            estimator=proportion_of(FORGET_UNIT, "touched")),
    _metric("unlearn_retain_docs_touched", "share of retain test documents where a clamped latent fires",
            estimator=proportion_of(RETAIN_UNIT, "touched")),
    _metric("unlearn_retain_threshold", "chosen setting: retain sparsity threshold (None: no setting qualified)"),
    _metric("unlearn_n_latents", "chosen setting: latents clamped"),
    _metric("unlearn_multiplier", "chosen setting: latents clamped to -multiplier where they fire"),
    _metric("unlearn_settings", "distinct interventions in the sweep"),
    _metric("unlearn_settings_within_bound", "interventions whose retain rise was within the bound (tune part)"),
    _metric("n_forget_docs", "forget test documents"),
    _metric("n_retain_docs", "retain test documents"),
)  # fmt: skip


def read_texts(path: str, what: str) -> list[str]:
    """Texts of a JSONL file: one JSON object with a ``text`` field, or one JSON string, per line."""
    p = Path(path).expanduser()
    fix = f"pass a JSONL file of texts with --set unlearning.{what}_file=PATH"
    if p.suffix != ".jsonl":
        raise SaebenchError(f"unlearning {what}_file {p} is not a .jsonl file; {fix}")
    if not p.is_file():
        raise SaebenchError(f"unlearning {what}_file {p} does not exist; {fix}")
    texts = []
    try:
        with p.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise SaebenchError(f"unlearning {what}_file {p} line {n} is not JSON ({exc.msg}); {fix}") from None
                text = obj.get("text") if isinstance(obj, dict) else obj
                if not isinstance(text, str):
                    raise SaebenchError(
                        f'unlearning {what}_file {p} line {n} has no text (want {{"text": ...}} or a string); {fix}'
                    )
                if text.strip():
                    texts.append(text.strip())
    except (OSError, UnicodeDecodeError) as exc:
        raise SaebenchError(f"unlearning {what}_file {p} cannot be read ({exc}); {fix}") from None
    if not texts:
        raise SaebenchError(f"unlearning {what}_file {p} holds no text; {fix}")
    return texts


def _dataset_texts(tag: str, split: str | None) -> list[str]:
    import pandas as pd

    path = sae_probes_data_dir() / f"{tag}.csv.zst"
    if not path.is_file():
        raise SaebenchError(
            f"unlearning: sae-probes dataset {tag!r} not found ({path}); pick a name from that folder, "
            "e.g. 98_cancer_cat"
        )
    out = []
    for t in pd.read_csv(path, usecols=["prompt"])["prompt"].dropna().astype(str):
        t = t.strip()[:MAX_DOC_CHARS]
        if t and (split is None or in_split(t, split)):
            out.append(t)
    return sorted(set(out))


def load_texts(cfg: UnlearningConfig) -> tuple[list[str], list[str], dict[str, str]]:
    """``(forget texts, retain texts, where each came from)``."""
    if cfg.forget_file:
        forget, f_src = read_texts(cfg.forget_file, "forget"), f"file {cfg.forget_file}"
    else:
        forget, f_src = _dataset_texts(cfg.forget_dataset, None), f"sae-probes {cfg.forget_dataset}"
    if cfg.retain_file:
        retain, r_src = read_texts(cfg.retain_file, "retain"), f"file {cfg.retain_file}"
    else:
        skip = set(cfg.retain_exclude) | {cfg.forget_dataset}
        files = [f for f in SAE_PROBES_FILES if f not in skip]
        retain = sorted({t for f in files for t in _dataset_texts(f, "eval")})
        r_src = f"offline corpus (eval split) without {', '.join(sorted(skip))}: {', '.join(files)}"
    overlap = set(forget) & set(retain)
    if overlap:
        retain = [t for t in retain if t not in overlap]
    return forget, retain, {"forget": f_src, "retain": r_src, "dropped_from_retain_as_in_forget": str(len(overlap))}


def split_docs(
    tokenize: Any, bos_id: int, texts: list[str], cfg: UnlearningConfig, seed: int, side: str, source: str
) -> dict[str, DocRows]:
    """The three disjoint parts of one side (module doc): texts in seeded-hash order, those with at
    least ``min_doc_tokens`` tokens, the first ``n_select_docs`` / next ``n_tune_docs`` / next ``n_test_docs``."""
    sizes = {"select": cfg.n_select_docs, "tune": cfg.n_tune_docs, "test": cfg.n_test_docs}
    need = sum(sizes.values())
    order = sorted(texts, key=lambda t: hashlib.sha256(f"{seed}:{t}".encode("utf-8", "replace")).hexdigest())
    chosen: list[str] = []
    for t in order:
        head = t[: CHARS_PER_TOKEN * cfg.ctx_len]  # a row holds ctx_len - 1 tokens: no need to tokenize more
        if len(tokenize(head)) >= cfg.min_doc_tokens:
            chosen.append(head)
            if len(chosen) == need:
                break
    if len(chosen) < need:
        raise SaebenchError(
            f"unlearning: the {side} set ({source}) has {len(chosen)} documents of at least "
            f"{cfg.min_doc_tokens} tokens, fewer than the {need} needed (select {sizes['select']} + tune "
            f"{sizes['tune']} + test {sizes['test']}); "
            "add texts or lower --set unlearning.n_select_docs / n_tune_docs / n_test_docs / min_doc_tokens"
        )
    out, s = {}, 0
    for part in PARTS:
        out[part] = doc_rows(tokenize, bos_id, chosen[s : s + sizes[part]], cfg.ctx_len)
        s += sizes[part]
    return out


def _prepared(pipe: ActivationPipeline, cfg: UnlearningConfig, seed: int) -> dict[str, Any]:
    """Texts, rows, prefix states and clean losses of both sides: once per hook for every SAE."""
    key = hashlib.sha256(f"{seed}|{cfg.model_dump_json()}".encode()).hexdigest()[:16]

    def compute() -> dict[str, Any]:
        t0 = time.perf_counter()
        forget, retain, sources = load_texts(cfg)
        tok, bos = pipe.model.tokenize, pipe.model.bos_id
        rows = {
            "forget": split_docs(tok, bos, forget, cfg, seed, "forget", sources["forget"]),
            "retain": split_docs(tok, bos, retain, cfg, seed, "retain", sources["retain"]),
        }
        states = {
            (s, p): row_states(pipe, r, f"unlearn-{s}-{p}") for s, parts in rows.items() for p, r in parts.items()
        }
        clean = {
            (s, p): clean_losses(pipe, rows[s][p], states[(s, p)], f"unlearn-{s}-{p}")
            for s in rows
            for p in ("tune", "test")
        }
        return {"rows": rows, "states": states, "clean": clean, "sources": sources, "prep_s": time.perf_counter() - t0}

    return pipe.shared(f"unlearning:{key}", compute)


@torch.no_grad()
def _frequencies(pipe: ActivationPipeline, sae: Any, rows: DocRows, states: torch.Tensor) -> torch.Tensor:
    """SAEBench's sparsity: fraction of kept tokens where each latent is > 0."""
    counts, n = torch.zeros(int(sae.d_sae), dtype=torch.float64), 0
    keep = rows.keep
    for s in range(0, states.shape[0], pipe.batch_size):
        z = sae.encode(pipe.acts_batch(states[s : s + pipe.batch_size]))
        c, k = U.firing_fraction(z.cpu(), keep[s : s + pipe.batch_size])
        counts += c
        n += k
    return counts / max(n, 1)


@torch.no_grad()
def _edited_losses(
    pipe: ActivationPipeline,
    sae: Any,
    rows: DocRows,
    states: torch.Tensor,
    clean: torch.Tensor,
    settings: list[U.Setting],
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per setting: loss sums of every row with the clamp (rows it does not touch keep their clean
    loss, exactly) and which rows it touched. One encode per batch serves every setting."""
    losses = [clean.clone() for _ in settings]
    touched = [torch.zeros(len(clean), dtype=torch.bool) for _ in settings]
    keep = rows.keep
    for s in range(0, states.shape[0], pipe.batch_size):
        st = states[s : s + pipe.batch_size]
        acts = pipe.acts_batch(st)
        z = sae.encode(acts)
        xhat = sae.decode(z)
        kb = keep[s : s + pipe.batch_size].to(z.device)
        for i, setting in enumerate(settings):
            delta, hit = U.clamp_edit(sae, acts, kb, setting.latents, setting.multiplier, z=z, xhat=xhat)
            rows_hit = hit.any(-1).cpu()
            if not bool(rows_hit.any()):
                continue
            touched[i][s + rows_hit.nonzero().flatten()] = True
            moved = delta.ne(0).flatten(1).any(-1).cpu()  # a zero decoder row changes nothing: no pass
            local = (rows_hit & moved).nonzero().flatten()
            if local.numel():
                which = local + s
                losses[i][which] = row_losses(pipe, rows, states, which, delta[local.to(delta.device)])
    return losses, touched


def _side_increase(losses: torch.Tensor, clean: torch.Tensor, rows: DocRows) -> float:
    return float((losses - clean).sum() / rows.n_targets.sum().clamp_min(1))


class UnlearningEvaluator:
    """``--evals unlearning``: see module doc."""

    name = "unlearning"
    #: refused for a transcoder (reads one hook, writes another) before the model loads (runner)
    transcoder_refusal = (
        "its clamp edits the activation the SAE reads (x - decode(z) + decode(z')), which assumes"
        " the SAE writes the hook it reads"
    )
    needs: frozenset[str] = frozenset()
    Config = UnlearningConfig
    metrics = METRICS

    def preflight(self, cfg: EvalConfig) -> None:
        """Refuse unreadable files and empty sweeps before the model loads."""
        assert isinstance(cfg, UnlearningConfig)
        for what in ("forget", "retain"):
            path = getattr(cfg, f"{what}_file")
            if path:
                read_texts(path, what)
        if not cfg.retain_thresholds or not cfg.n_latents or not cfg.multipliers:
            raise SaebenchError(
                "unlearning: retain_thresholds, n_latents and multipliers must each hold at least one value"
            )
        if cfg.ctx_len < 4 or cfg.min_doc_tokens > cfg.ctx_len:
            raise SaebenchError(
                f"unlearning: ctx_len {cfg.ctx_len} must be >= 4 and >= min_doc_tokens {cfg.min_doc_tokens}"
            )

    def prepare(self, pipe: ActivationPipeline, cfg: EvalConfig, seed: int) -> None:
        """Texts, rows, prefix states and clean losses once for every SAE at this hook."""
        assert isinstance(cfg, UnlearningConfig)
        self.preflight(cfg)
        _prepared(pipe, cfg, seed)

    def run(self, ctx: EvalContext, cfg: EvalConfig) -> EvalOutput:
        assert isinstance(cfg, UnlearningConfig)
        self.preflight(cfg)
        pipe, sae = ctx.pipeline, ctx.sae
        prep = _prepared(pipe, cfg, ctx.seed)
        rows, states, clean = prep["rows"], prep["states"], prep["clean"]
        t0 = time.perf_counter()
        freq = {s: _frequencies(pipe, sae, rows[s]["select"], states[(s, "select")]) for s in ("forget", "retain")}
        grid = U.sweep(freq["forget"], freq["retain"], cfg.retain_thresholds, cfg.n_latents, cfg.multipliers)
        uniq: list[U.Setting] = []
        for g in grid:
            if g.latents and g.key() not in {u.key() for u in uniq}:
                uniq.append(g)
        t_select = time.perf_counter() - t0
        t0 = time.perf_counter()
        tune = {
            s: _edited_losses(pipe, sae, rows[s]["tune"], states[(s, "tune")], clean[(s, "tune")], uniq)
            for s in ("forget", "retain")
        }
        f_inc = [_side_increase(x, clean[("forget", "tune")], rows["forget"]["tune"]) for x in tune["forget"][0]]
        r_inc = [_side_increase(x, clean[("retain", "tune")], rows["retain"]["tune"]) for x in tune["retain"][0]]
        r_clean = float(clean[("retain", "tune")].sum() / rows["retain"]["tune"].n_targets.sum().clamp_min(1))
        best = U.choose(f_inc, r_inc, r_clean, cfg.retain_tolerance)
        t_tune = time.perf_counter() - t0
        t0 = time.perf_counter()
        chosen = [uniq[best]] if best is not None else []
        samples, test_summary = {}, {}
        for side, unit in (("forget", FORGET_UNIT), ("retain", RETAIN_UNIT)):
            r, c = rows[side]["test"], clean[(side, "test")]
            if chosen:
                (edited,), (hit,) = _edited_losses(pipe, sae, r, states[(side, "test")], c, chosen)
            else:
                edited, hit = c.clone(), torch.zeros(len(c), dtype=torch.bool)
            samples[unit] = Samples(
                unit,
                list(r.ids),
                {
                    "inc": (edited - c).tolist(),
                    "n": r.n_targets.double().tolist(),
                    "clean": c.tolist(),
                    "touched": hit.double().tolist(),
                },
            )
            test_summary[side] = {"touched": int(hit.sum()), "docs": len(c)}
        t_test = time.perf_counter() - t0
        if best is None:
            ctx.notes.append(
                "unlearning: no setting raised the forget loss with the retain rise within "
                f"{cfg.retain_tolerance:g} x the clean retain loss; both increases are 0 (no intervention)"
            )
        sweep_rows = []
        for g in grid:
            i = next((j for j, u in enumerate(uniq) if u.key() == g.key()), None)
            sweep_rows.append(
                {
                    "retain_threshold": g.retain_threshold,
                    "n_latents": g.n_latents,
                    "multiplier": g.multiplier,
                    "latents": list(g.latents),
                    "forget_loss_increase": f_inc[i] if i is not None else 0.0,
                    "retain_loss_increase": r_inc[i] if i is not None else 0.0,
                    "within_bound": bool(i is not None and r_inc[i] <= cfg.retain_tolerance * r_clean),
                    "chosen": bool(i is not None and i == best),
                }
            )
        pick = uniq[best] if best is not None else None
        metrics: dict[str, Any] = {
            "unlearn_retain_threshold": pick.retain_threshold if pick else None,
            "unlearn_n_latents": len(pick.latents) if pick else 0,
            "unlearn_multiplier": pick.multiplier if pick else None,
            "unlearn_settings": len(uniq),
            "unlearn_settings_within_bound": sum(
                1 for j in range(len(uniq)) if r_inc[j] <= cfg.retain_tolerance * r_clean
            ),
            "n_forget_docs": len(rows["forget"]["test"].ids),
            "n_retain_docs": len(rows["retain"]["test"].ids),
        }
        top = U.select_latents(freq["forget"], freq["retain"], max(cfg.retain_thresholds))[: max(cfg.n_latents)]
        details = {
            "sources": prep["sources"],
            "sweep": sweep_rows,
            "tune_retain_loss_clean": r_clean,
            "retain_bound": cfg.retain_tolerance * r_clean,
            "candidates": [
                {"latent": i, "forget_sparsity": float(freq["forget"][i]), "retain_sparsity": float(freq["retain"][i])}
                for i in top
            ],
            "test": test_summary,
            "parts": {p: cfg.model_dump()[f"n_{p}_docs"] for p in PARTS},
            "loss": "next-token CE of the predictions at positions 1..len-2 of each document row (BOS excluded)",
            "intervention": "SAEBench's clamp: each chosen latent > 0 set to -multiplier at non-BOS positions; hook "
            "activation + decode(z') - decode(z) (the SAE's error kept)",
            "naming": {"names": "ours", "why": "open data and LM loss, not WMDP/MMLU accuracy: not SAEBench's "
                       "unlearning_score (docs/unlearning.md)"},
        }  # fmt: skip
        return EvalOutput(
            metrics,
            details,
            samples=samples,
            timing={"unlearn_select_s": t_select, "unlearn_tune_s": t_tune, "unlearn_test_s": t_test},
        )
