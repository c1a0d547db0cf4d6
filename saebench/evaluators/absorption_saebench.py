"""``mode=saebench`` of ``--evals absorption``: SAEBench 0.6.0's first-letter absorption, end to end.

The steps and their order are SAEBench's (``run_k_sparse_probing_experiment`` then
``run_feature_absortion_experiment``); the draws are replayed from ``random.Random(seed)`` and a
torch generator seeded with the seed (:mod:`saebench.probes.absorption_saebench`):

1. the vocabulary: every token whose text is ASCII letters after at most one leading space
   (``get_alpha_tokens``), in token-id order (SAEBench iterates ``tokenizer.vocab``, whose order
   a fast tokenizer changes from process to process: its own runs differ by that alone);
2. SAE-independent, once per hook (:func:`prepare`): the 80/20 split and one prompt per word with
   10 in-context examples of its split; the activation at ``prompt_token_pos`` (-6) of every
   prompt (batches of 64, as SAEBench generates them); the 26 letter probes (50 Adam epochs,
   batch 64, lr 1e-2 decayed to 1e-5, weight decay 1e-4, raw inputs); the probe's test scores and
   true positives; then every true positive re-prompted with 10 fresh examples from the whole
   vocabulary (SAEBench does this for all 26 letters) and its activation;
3. per SAE (:func:`score`): the L1 probe on the latents (50 Adam epochs, batch 4096, L1 0.01)
   from the generator's state after the letter probes, sklearn probes on its top-k latents
   (k = 1..10), test F1 per k, the F1-jump rule, and on the re-prompted activations each word's
   absorption with SAEBench's contribution rule ``a_i · cos(d_i, p̂)``; letters with probe F1 >
   0.6 averaged; fewer than 20 such letters and SAEBench stops (no number).

Every step's draws and every latent encode happen in SAEBench's batches, so the numbers equal
SAEBench's on the same vocabulary order and seeds (``tests/test_absorption.py`` runs its code).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from saebench.errors import SaebenchError
from saebench.pipeline import ActivationPipeline

LETTERS = "abcdefghijklmnopqrstuvwxyz"
# SAEBench's AbsorptionEvalConfig fields and defaults, and the constants of its probe training
SB_DEFAULTS: dict[str, Any] = {
    "vocab_size": None,
    "f1_jump_threshold": 0.03,
    "max_k_value": 10,
    "prompt_template": "{word} has the first letter:",
    "prompt_token_pos": -6,
    "k_sparse_probe_l1_decay": 0.01,
    "k_sparse_probe_batch_size": 4096,
    "k_sparse_probe_num_epochs": 50,
    "min_GT_probe_f1": 0.6,
    "min_feats_for_eval": 20,
}
PROBE_BATCH, PROBE_EPOCHS, PROBE_LR, PROBE_END_LR, PROBE_WEIGHT_DECAY = 64, 50, 1e-2, 1e-5, 1e-4
N_ICL, TRAIN_FRAC, L1_L2_DECAY = 10, 0.8, 1e-6


def saebench_vocab(tokenizer: Any, d_vocab: int) -> list[str]:
    """SAEBench's ``get_alpha_tokens`` texts, in token-id order."""
    from saebench.evaluators.absorption import alpha_vocab

    return [text for _, text in alpha_vocab(tokenizer, d_vocab)]


@dataclass
class SbTask:
    """The SAE-independent part of a SAEBench-mode run."""

    data: Any  # ProbeData
    train_acts: torch.Tensor
    test_acts: torch.Tensor
    probe: torch.nn.Linear
    test_scores: torch.Tensor  # [n_test, 26] float32
    probe_f1: list[float]
    true_positives: dict[int, list[int]]  # letter -> test indices, in test order
    reprompt_acts: dict[int, torch.Tensor]  # letter -> [n_tp, d]
    gen_state: torch.Tensor
    n_vocab: int
    key: str
    forward_batches: int
    timing: dict[str, float]


def prepare(pipe: ActivationPipeline, cfg: Any, seed: int) -> SbTask:
    """Once per pipeline (memoised): see module doc, step 2."""
    settings = {k: getattr(cfg, k) for k in (*SB_DEFAULTS, "llm_batch_size", "eval_k_sparse_probe_batch_size")}
    key = "absorption-saebench:" + json.dumps([settings, seed], default=str, sort_keys=True)
    return pipe.shared(key, lambda: _prepare(pipe, cfg, seed))


def _prepare(pipe: ActivationPipeline, cfg: Any, seed: int) -> SbTask:
    from saebench.pipeline.fixed_rows import prompt_activations
    from saebench.probes.absorption_saebench import f1_score, icl_prompt, probe_dataset, train_multi_probe
    from saebench.probes.saebench_probes import generator

    t0 = time.perf_counter()
    vocab = saebench_vocab(pipe.model.tokenizer, pipe.model.d_vocab)
    if cfg.vocab_size is not None and cfg.vocab_size < len(vocab):
        keep = sorted(random.Random(f"absorption-vocab:{seed}").sample(range(len(vocab)), cfg.vocab_size))
        vocab = [vocab[i] for i in keep]
    rng, gen = random.Random(seed), generator(seed)
    data = probe_dataset(vocab, cfg.prompt_template, rng, N_ICL, TRAIN_FRAC)
    t_prompts = time.perf_counter() - t0
    before = pipe.counters.position_forward_batches
    t0 = time.perf_counter()
    pos = cfg.prompt_token_pos
    train_acts = prompt_activations(pipe, data.train_prompts, pos, PROBE_BATCH, "absorption-sb-train")
    test_acts = prompt_activations(pipe, data.test_prompts, pos, PROBE_BATCH, "absorption-sb-test")
    t_acts = time.perf_counter() - t0
    t0 = time.perf_counter()
    y_train, y_test = data.labels("train"), data.labels("test")
    probe = train_multi_probe(train_acts, F.one_hot(y_train, 26), gen, PROBE_BATCH, PROBE_EPOCHS, PROBE_LR,
                              PROBE_END_LR, PROBE_WEIGHT_DECAY)  # fmt: skip
    state = gen.get_state()
    with torch.no_grad():
        bs = cfg.eval_k_sparse_probe_batch_size
        scores = torch.cat([probe(test_acts[s : s + bs]) for s in range(0, len(test_acts), bs)]).float()
    probe_f1 = [f1_score(y_test == c, scores[:, c] > 0.0) for c in range(26)]
    tps = {c: [int(i) for i in torch.nonzero((y_test == c) & (scores[:, c] > 0)).flatten()] for c in range(26)}
    t_probe = time.perf_counter() - t0
    t0 = time.perf_counter()
    reprompts = {
        c: [icl_prompt(data.test[i], vocab, cfg.prompt_template, N_ICL, rng) for i in tps[c]] for c in range(26)
    }
    check_lengths(pipe, reprompts)
    re_acts = {
        c: prompt_activations(pipe, p, pos, cfg.llm_batch_size, f"absorption-sb-{LETTERS[c]}") if p else torch.zeros(0)
        for c, p in reprompts.items()
    }
    t_re = time.perf_counter() - t0
    h = hashlib.sha256(json.dumps([seed, cfg.vocab_size, cfg.prompt_template, pos]).encode())
    h.update("\x1e".join(data.train + ["|"] + data.test).encode())
    timing = {"prompts_s": t_prompts, "activations_s": t_acts, "letter_probe_s": t_probe, "reprompt_s": t_re}
    return SbTask(data, train_acts, test_acts, probe, scores, probe_f1, tps, re_acts, state, len(vocab),
                  h.hexdigest()[:16], pipe.counters.position_forward_batches - before, timing)  # fmt: skip


def check_lengths(pipe: ActivationPipeline, reprompts: dict[int, list[str]]) -> None:
    """SAEBench refuses a letter whose re-prompts differ in token length; so do we (one line)."""
    for c, prompts in reprompts.items():
        lengths = {len(pipe.model.tokenize(p)) for p in prompts}
        if len(lengths) > 1:
            raise SaebenchError(
                f"absorption mode=saebench: letter {LETTERS[c]!r} re-prompts have {len(lengths)} token lengths "
                "(a word that is not one token in context); SAEBench 0.6.0 stops there on this tokenizer: use "
                "mode=variant"
            )


def _encode(sae: Any, x: torch.Tensor, batch: int, device: Any) -> torch.Tensor:
    """Dense latents of ``x`` encoded ``batch`` rows at a time (SAEBench's ``_get_sae_acts``)."""
    with torch.no_grad():
        return torch.cat([sae.encode(x[s : s + batch].to(device)).float().cpu() for s in range(0, len(x), batch)])


def decoder_rows(sae: Any) -> tuple[torch.Tensor, str]:
    """The decoder rows SAEBench reads (``W_dec``), or the decoder's directions in model units."""
    w_dec = getattr(sae, "W_dec", None)
    if isinstance(w_dec, torch.Tensor) and tuple(w_dec.shape) == (int(sae.d_sae), int(sae.d_in)):
        return w_dec.detach().float().cpu(), "W_dec"
    from saebench.probes.geometry import decoder_directions

    rows, source = decoder_directions(sae)
    return rows.float(), source


def score(task: SbTask, sae: Any, label: str, cfg: Any, device: Any = "cpu") -> dict[str, Any]:
    """SAEBench's per-SAE steps (module doc, step 3): per-letter rows and the aggregate."""
    from saebench.probes.absorption import split_features
    from saebench.probes.absorption_saebench import f1_score, k_sparse_probe, train_multi_probe

    t0 = time.perf_counter()
    gen = torch.Generator()
    gen.set_state(task.gen_state)
    y_train, y_test = task.data.labels("train"), task.data.labels("test")
    d_sae, bs = int(sae.d_sae), cfg.k_sparse_probe_batch_size
    if cfg.precalc_k_sparse_probe_sae_acts:
        z_train = _encode(sae, task.train_acts, bs, device)
        rows = None
    else:
        z_train = torch.zeros(0)

        def rows(idx: torch.Tensor) -> torch.Tensor:
            return _encode(sae, task.train_acts[idx], len(idx), device)

    y1h = F.one_hot(y_train)
    l1 = train_multi_probe(z_train, y1h, gen, bs, cfg.k_sparse_probe_num_epochs, 0.01, 1e-5, L1_L2_DECAY,
                           l1=cfg.k_sparse_probe_l1_decay, rows=rows, dim=d_sae)  # fmt: skip
    if not cfg.precalc_k_sparse_probe_sae_acts:
        z_train = _encode(sae, task.train_acts, bs, device)
    t_l1 = time.perf_counter() - t0
    t0 = time.perf_counter()
    eb = cfg.eval_k_sparse_probe_batch_size
    z_test = torch.cat(
        [_encode(sae, task.test_acts[s : s + eb], eb, device) for s in range(0, len(task.test_acts), eb)]
    )
    weights = l1.weight.detach().float()
    letters = []
    for c in range(26):
        row: dict[str, Any] = {"letter": LETTERS[c], "probe_f1": task.probe_f1[c]}
        if c >= weights.shape[0]:
            letters.append(row)
            continue
        f1s, feats = [], []
        for k in range(1, cfg.max_k_value + 1):
            ids = weights[c].topk(k).indices
            w, b = k_sparse_probe(z_train[:, ids], (y_train == c).long())
            f1s.append(f1_score(y_test == c, (z_test[:, ids] @ w + b) > 0.0))
            feats.append([int(i) for i in ids])
        main = split_features(f1s, feats, cfg.f1_jump_threshold)
        row.update({"f1_by_k": [round(v, 6) for v in f1s], "main_latents": main, "num_split_features": len(main)})
        letters.append(row)
    t_k = time.perf_counter() - t0
    t0 = time.perf_counter()
    dec, dec_source = decoder_rows(sae)
    scored, n_good = absorb(task, sae, dec, letters, cfg, device), sum(f > cfg.min_GT_probe_f1 for f in task.probe_f1)
    timing = {"sae_l1_probe_s": t_l1, "sae_k_sparse_s": t_k, "sae_absorption_s": time.perf_counter() - t0}
    from saebench.probes.geometry import decoder_directions

    norms = decoder_directions(sae)[0].double().norm(dim=1)  # in model units: what the rule's meaning depends on
    return {"letters": letters, "scored": scored, "n_good_letters": n_good, "decoder_source": dec_source,
            "decoder_norms": (float(norms.min()), float(norms.max())), "timing": timing}  # fmt: skip


def absorb(task: SbTask, sae: Any, dec: torch.Tensor, letters: list[dict[str, Any]], cfg: Any, device: Any) -> list:
    """SAEBench's ``calculate_absorption`` for every letter over its re-prompted true positives,
    then its aggregation for letters with probe F1 > ``min_GT_probe_f1``; fills ``letters`` rows."""
    from saebench.probes.absorption_saebench import word_absorption

    scored = []
    for c, row in enumerate(letters):
        acts = task.reprompt_acts[c]
        if "main_latents" not in row or task.probe_f1[c] <= cfg.min_GT_probe_f1 or len(acts) == 0:
            continue
        direction = task.probe.weight.detach()[c]
        direction = direction / direction.norm()
        cos = F.cosine_similarity(direction, dec, dim=-1).float()
        results = []
        bs = cfg.llm_batch_size
        for s in range(0, len(acts), bs):
            batch = acts[s : s + bs]
            z = _encode(sae, batch, len(batch), device)
            proj, p = z * cos, batch @ direction
            results += [word_absorption(z[i], proj[i], float(p[i]), cos, row["main_latents"]) for i in range(len(z))]
        fracs = [r.absorption_fraction for r in results]
        full = [int(r.is_full_absorption) for r in results]
        row.update({
            "scored": True, "n_probe_true_positives": len(results), "mean_absorption_fraction": sum(fracs) / len(fracs),
            "full_absorption_rate": sum(full) / len(full), "n_full_absorption": sum(full),
            "absorbed": [{"word": task.data.test[task.true_positives[c][j]], "latent": r.top_latent,
                          "share": round(r.top_projection / r.probe_projection, 4)}
                         for j, r in enumerate(results) if r.is_full_absorption][:20],
        })  # fmt: skip
        scored.append((c, fracs, full))
    return scored


def naming(cfg: Any) -> dict[str, Any]:
    """Which names a result carries: SAEBench's only for its procedure at every default setting."""
    if cfg.mode != "saebench":
        return {"names": "variant", "mode": cfg.mode, "data": "vocabulary", "why": "mode=variant: our procedure"}
    changed = [f"{k}={getattr(cfg, k)!r}" for k, v in SB_DEFAULTS.items() if getattr(cfg, k) != v]
    if changed:
        return {"names": "variant", "mode": cfg.mode, "data": "vocabulary",
                "why": "SAEBench's procedure with other settings: " + ", ".join(changed)}  # fmt: skip
    return {"names": "saebench", "mode": cfg.mode, "data": "vocabulary",
            "why": "SAEBench's procedure and settings on the whole alphabetic vocabulary"}  # fmt: skip


def run(ctx: Any, cfg: Any) -> Any:
    """``mode=saebench`` for one SAE: the result (module doc; names per :func:`naming`)."""
    from saebench.evaluators.absorption import LETTERS, MIN_EFFECT, SB_UNIT, VARIANT_UNIT, rule_entry, word_steps
    from saebench.evaluators.base import EvalOutput, mean_defined
    from saebench.evaluators.scr_tpp_saebench import resolution_entry
    from saebench.stats import Samples

    task = prepare(ctx.pipeline, cfg, ctx.seed)
    out = score(task, ctx.sae, ctx.sae_name, cfg, ctx.model.device)
    names = naming(cfg)
    sb = names["names"] == "saebench"
    unit = SB_UNIT if sb else VARIANT_UNIT
    scored = out["scored"]
    enough = out["n_good_letters"] >= cfg.min_feats_for_eval
    samples: dict[str, Samples] = {}
    if enough and scored:
        ids = [f"{LETTERS[c]}@{task.key}" for c, _, _ in scored]
        cols = {
            "absorption_fraction": [[round(float(v), 8) for v in f] for _, f, _ in scored],
            "full_absorption": [full for _, _, full in scored],
            "num_split_features": [out["letters"][c]["num_split_features"] for c, _, _ in scored],
        }
        samples[unit] = Samples(unit, ids, cols)
    else:
        ctx.notes.append(
            f"absorption: only {out['n_good_letters']} letter(s) reach probe F1 > {cfg.min_GT_probe_f1} (SAEBench "
            f"needs {cfg.min_feats_for_eval} and stops); no score"
        )
    if not sb:
        ctx.notes.append(f"absorption: our names, not SAEBench's: {names['why']}")
    heads = ("mean_absorption_fraction_score", "mean_full_absorption_score") if sb else (
        "absorption_rate", "full_absorption_rate")  # fmt: skip
    steps = word_steps([len(f) for _, f, _ in scored])
    metrics: dict[str, Any] = {
        "probe_f1": mean_defined(task.probe_f1),
        "n_letters_scored": len(scored) if enough else 0,
        "n_probe_true_positives": sum(len(f) for _, f, _ in scored),
        "n_full_absorption": sum(sum(full) for _, _, full in scored),
        "n_words_train": len(task.data.train),
        "n_words_test": len(task.data.test),
    }
    details = {
        "letters": out["letters"],
        "naming": names,
        "resolution": {h: resolution_entry(h, "word", steps, MIN_EFFECT, f"over {len(scored)} letters") for h in heads},
        "contribution_rule": {**rule_entry("saebench", out["decoder_norms"]), "decoder_source": out["decoder_source"]},
        "vocabulary_words": task.n_vocab,
        "example_prompt": task.data.train_prompts[0] if task.data.train_prompts else "",
        "model_forward_batches": task.forward_batches,
    }
    return EvalOutput(metrics, details, samples=samples, timing={**task.timing, **out["timing"]})
