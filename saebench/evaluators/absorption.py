"""``--evals absorption``: feature absorption on first-letter identification (Chanin et al. 2024,
"A is for Absorption: Studying Feature Splitting and Absorption in Sparse Autoencoders";
SAEBench's ``absorption`` eval, whose definitions and constants are kept; its metric names only in
``mode=saebench``, below).

The task is built offline from the tokenizer's vocabulary: every token whose text is ASCII
letters (optionally after one leading space) is a word; ``n_words`` of them are sampled (seeded)
and split into train/test (``train_frac``). Each word gets an in-context prompt in SAEBench's
format, ``icl_examples`` lines of other words of its split followed by the word itself::

    <BOS>\\n tartan has the first letter: T\\n cat has the first letter: C\\n ... \\n river has the first letter:

built at the token level (the word is exactly its vocabulary token; SAEBench rebuilds the text
and reads a fixed offset, -6), and the hook activation at the word's token is taken from the
shared pipeline (:func:`saebench.pipeline.positions.acts_at`: prefix passes only, cached on disk,
so every further SAE at the hook costs SAE encodes only). SAE-independent work — prompts,
activations, the 26 ground-truth letter probes — is done once per hook in ``prepare``.

Per SAE (``saebench.probes.absorption`` has the formulas): encode train and test words, find
each letter's main latents by k-sparse probing (L1 probe ranking, k = 1..``max_k``, F1-jump rule:
``num_split_features`` = their count), then for each letter whose probe reaches test F1 >
``min_probe_f1`` (0.6) and has at least ``min_true_positives`` (5) true positives, score every test
word the probe gets right (a *probe true positive*):

- ``absorption_rate`` — mean over letters of the mean absorption fraction over the
  letter's probe true positives: the share of the probe projection that non-main latents aligned
  with the probe carry instead of the main latents (partial and full absorption);
- ``full_absorption_rate`` — mean over letters of the rate of *full absorption*: the main
  latents are all off, yet one latent aligned with the probe (cos ≥ 0.025) carries ≥ 40% of the
  probe projection;
- ``num_main_latents`` — mean over letters of the number of main latents.

The sampling unit is the letter (``letter@hash`` of the words scored), with its tokens as
sub-units, so the two absorption scores get a two-level bootstrap interval; two SAEs at one hook
are scored on the same tokens and pair exactly. Each letter's absorbed words, with the latent
that absorbed them, are in ``details.letters``.

Two modes (``--set absorption.mode=...``). ``variant`` (default, described here) reports under our
names ``absorption_rate``, ``full_absorption_rate`` and ``num_main_latents`` (unit ``letter``).
``saebench`` runs SAEBench 0.6.0's procedure end to end on the model's vocabulary
(:mod:`saebench.evaluators.absorption_saebench`: its prompts, Adam probes, re-prompting and
``a_i · cos(d_i, p̂)`` contributions); with every SAEBench setting at its default the result carries
SAEBench's names ``mean_absorption_fraction_score``, ``mean_full_absorption_score`` and
``mean_num_split_features`` (unit ``first_letter``). ``details.contribution_rule`` states the rule
used, with the decoder rows' norms.

Deliberate differences from SAEBench 0.6.0 (docs/absorption.md has the reasons and measurements):
the probes' losses are minimised deterministically (L-BFGS, FISTA) instead of by 50 Adam epochs;
absorption is scored on the same test activations the probe was judged on (SAEBench re-prompts
the true positives with fresh in-context examples: another model pass); a latent's contribution along the probe is
``a_i · (d_i · p̂)`` with ``d_i`` in model units (equal to SAEBench's ``a_i · cos(d_i, p̂)`` for
unit-norm decoders); too few well-probed letters (< ``min_letters``) leave the scores undefined
(SAEBench stops); latents beyond the L1 probe's positive weights are ranked in lasso entry order.
"""

from __future__ import annotations

import hashlib
import json
import random
import string
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from saebench.errors import SaebenchError
from saebench.evaluators.base import EvalConfig, EvalContext, EvalOutput, Metric, mean_defined
from saebench.evaluators.scr_tpp_saebench import resolution_entry
from saebench.pipeline import ActivationPipeline
from saebench.stats import MeanOfMeans, Samples, mean_of

LETTERS = string.ascii_lowercase
PROBE_VERSION = "1"  # bump when the letter probe is fit differently (it is cached on disk)
SB_UNIT, VARIANT_UNIT = "first_letter", "letter"
MIN_EFFECT = 0.02
CONTRIBUTION_RULES = {
    "variant": "a_i * (d_i . p) with d_i the decoder row in model units: the reconstruction's component along p",
    "saebench": "a_i * cos(d_i, p) (SAEBench's rule): the reconstruction's component along p only for unit-norm d_i",
}


class AbsorptionConfig(EvalConfig):
    """Settings of ``--evals absorption``; profiles set the variant's sample sizes only. The
    SAEBench-named fields are SAEBench's ``AbsorptionEvalConfig`` for ``mode=saebench``."""

    mode: Literal["variant", "saebench"] = "variant"
    # mode=saebench: SAEBench's settings (its names and defaults; any change gives our names)
    vocab_size: int | None = None  # None: the whole alphabetic vocabulary (SAEBench's)
    f1_jump_threshold: float = 0.03
    max_k_value: int = 10
    prompt_token_pos: int = -6
    k_sparse_probe_l1_decay: float = 0.01
    k_sparse_probe_batch_size: int = 4096
    k_sparse_probe_num_epochs: int = 50
    min_GT_probe_f1: float = 0.6
    min_feats_for_eval: int = 20
    llm_batch_size: int = 10
    eval_k_sparse_probe_batch_size: int = 24
    precalc_k_sparse_probe_sae_acts: bool = True  # SAEBench's default False: the same latents, encoded once
    # mode=variant

    n_words: int | None = 1500  # words sampled from the alphabetic vocabulary (None: all of them)
    train_frac: float = 0.8
    icl_examples: int = 10
    prompt_template: str = "{word} has the first letter:"
    probe_l2: float = 1e-3  # ground-truth probe, on inputs scaled to unit RMS per dimension
    l1: float = 0.01  # SAEBench's k_sparse_probe_l1_decay
    l1_max_iter: int = 1000  # FISTA iterations (docs/absorption.md: vs the converged solution)
    l1_tol: float = 1e-9
    max_k: int = 10
    f1_jump: float = 0.03
    min_probe_f1: float = 0.6
    min_letters: int = 10  # fewer well-probed letters: scores undefined (SAEBench: 20, and stops)
    min_true_positives: int = 5  # a letter with fewer probe true positives is not scored: one word would move
    # the headline by >= 1 / (4 x letters), above the minimum effect (docs/absorption.md, "Resolution")
    token_chunk: int = 1024  # words encoded at once (memory token_chunk x d_sae floats)
    n_absorbed_reported: int = 20  # absorbed words listed per letter

    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": {"n_words": 1500, "icl_examples": 5},
        "standard": {"n_words": 8000, "min_letters": 20},
        "paper": {"mode": "saebench", "n_words": None, "min_letters": 20},  # SAEBench's procedure, its names
    }


def _declare() -> tuple[Metric, ...]:
    out = []
    for sb in (False, True):  # ours first: the board's summary shows an evaluator's first headline
        unit = SB_UNIT if sb else VARIANT_UNIT
        how = "SAEBench's procedure (mode=saebench)" if sb else "our procedure (variant)"
        names = ("mean_absorption_fraction_score", "mean_full_absorption_score", "mean_num_split_features")
        ours = ("absorption_rate", "full_absorption_rate", "num_main_latents")
        n1, n2, n3 = names if sb else ours
        tag = " (SAEBench)" if sb else ""
        out += [
            Metric(n1, "mean over letters of the share of the probe projection carried by non-main latents (probe "
                   f"true positives); {how}", "down", True, "", "absorption" + tag, MIN_EFFECT,
                   MeanOfMeans(unit, "absorption_fraction")),
            Metric(n2, "mean over letters of the rate of full absorption (main latents off, one aligned latent "
                   f"carries the letter); {how}", "down", True, "", "full absorption" + tag, MIN_EFFECT,
                   MeanOfMeans(unit, "full_absorption")),
            Metric(n3, f"mean over letters of the number of main latents the k-sparse probe needs; {how}", "", False,
                   "latents", "split latents" + tag, 0.0, mean_of(unit, "num_split_features")),
        ]  # fmt: skip
    out += [
        Metric(
            "main_latents_f1",
            "mean over scored letters of the test F1 of the probe on the main latents",
            "up",
            False,
            "",
            "",
            0.0,
            mean_of(VARIANT_UNIT, "main_f1"),
        ),  # fmt: skip
        Metric("probe_f1", "mean over letters of the ground-truth residual probe's test F1 (SAE-independent)"),
        Metric("n_letters_scored", "letters whose ground-truth probe reaches min_probe_f1 (scored)"),
        Metric("n_probe_true_positives", "test words scored (probe true positives of scored letters)"),
        Metric("n_full_absorption", "scored words fully absorbed"),
        Metric("n_words_train", "words the probes were trained on"),
        Metric("n_words_test", "words the probes were tested on"),
    ]
    return tuple(out)


METRICS = _declare()


# -- the task: vocabulary, prompts, activations, ground-truth probe (SAE-independent) -------------


def alpha_vocab(tokenizer: Any, d_vocab: int) -> list[tuple[int, str]]:
    """``(token id, text)`` of every token whose text is ASCII letters, optionally after one leading
    space (SAEBench's ``get_alpha_tokens``), in id order."""
    out = []
    for tok, i in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        if i >= d_vocab:
            continue
        text = tokenizer.convert_tokens_to_string([tok])
        word = text[1:] if text.startswith(" ") else text
        if word and all(c in string.ascii_letters for c in word):
            out.append((int(i), text))
    return out


def split_template(template: str) -> tuple[str, str]:
    """The text before and after ``{word}`` in the prompt template (exactly one placeholder)."""
    if template.count("{word}") != 1:
        raise SaebenchError(
            f"absorption.prompt_template {template!r} must contain {{word}} exactly once, "
            "e.g. '{word} has the first letter:'"
        )
    before, after = template.split("{word}")
    return before, after


def answer(text: str) -> str:
    """SAEBench's answer: a space and the word's first letter, upper case."""
    return " " + text.strip()[0].upper()


def build_prompt(
    tokenize: Any, bos: int, word: tuple[int, str], examples: list[tuple[int, str]], before: str, after: str
) -> tuple[list[int], int]:
    """Token row ``BOS + tokens("\\n" + ICL lines + "\\n" + before) + [word] + tokens(after)`` and the
    word's position; an ICL line is ``before + text + after + answer``."""
    icl = "".join(f"{before}{t}{after}{answer(t)}\n" for _, t in examples)
    head = [bos, *tokenize("\n" + icl + before)]
    return [*head, word[0], *tokenize(after)], len(head)


@dataclass
class Task:
    """The SAE-independent part of an absorption run (memoised per pipeline)."""

    words: list[tuple[int, str]]  # (token id, text), train words first
    labels: torch.Tensor  # [N] letter index
    n_train: int
    acts: torch.Tensor  # [N, d] hook activation at the word token
    acts_key: str
    probe: Any  # saebench.probes.absorption.LetterProbe
    test_scores: torch.Tensor  # [n_test, 26]
    probe_f1: list[float]
    example_prompt: str
    forward_batches: int
    n_vocab: int
    timing: dict[str, float]


def prepare_task(pipe: ActivationPipeline, cfg: AbsorptionConfig, seed: int) -> Task:
    """The task of ``cfg`` and ``seed``: words sampled from the vocabulary (memoised per pipeline)."""
    key = "absorption:" + json.dumps(
        [cfg.n_words, cfg.train_frac, cfg.icl_examples, cfg.prompt_template, cfg.probe_l2, seed], default=str
    )
    return pipe.shared(key, lambda: make_task(pipe, cfg, seed))


def make_task(
    pipe: ActivationPipeline,
    cfg: AbsorptionConfig,
    seed: int,
    split: tuple[list[tuple[int, str]], list[tuple[int, str]]] | None = None,
) -> Task:
    """Prompts, activations and letter probes for ``(train, test)`` words given as ``(token id,
    text)`` (``split``), or for ``n_words`` sampled from the vocabulary and split ``train_frac``."""
    from saebench.pipeline.positions import acts_at
    from saebench.probes.absorption import LetterProbe, f1, fit_letter_probes

    t0 = time.perf_counter()
    model = pipe.model
    before, after = split_template(cfg.prompt_template)
    vocab = alpha_vocab(model.tokenizer, model.d_vocab)
    rng = random.Random(f"absorption:{seed}")
    if split is None:
        words = list(vocab) if cfg.n_words is None or cfg.n_words >= len(vocab) else rng.sample(vocab, cfg.n_words)
        rng.shuffle(words)
        n_train = int(len(words) * cfg.train_frac)
        splits = (words[:n_train], words[n_train:])
    else:
        splits = (list(split[0]), list(split[1]))
        words, n_train = splits[0] + splits[1], len(splits[0])
    if min(len(s) for s in splits) < cfg.icl_examples + 2:
        raise SaebenchError(
            f"absorption: {len(words)} words split {len(splits[0])}/{len(splits[1])} leave a split smaller than "
            f"icl_examples + 2 = {cfg.icl_examples + 2}; raise absorption.n_words or lower absorption.icl_examples"
        )
    rows, positions = [], []
    for split in splits:
        for w in split:
            pool = [v for v in split if v[0] != w[0]]
            row, pos = build_prompt(model.tokenize, model.bos_id, w, rng.sample(pool, cfg.icl_examples), before, after)
            rows.append(row)
            positions.append(pos)
    t_prompts = time.perf_counter() - t0
    before_batches = pipe.counters.position_forward_batches
    t0 = time.perf_counter()
    pa = acts_at(pipe, rows, positions, label="absorption")
    t_acts = time.perf_counter() - t0
    labels = torch.tensor([LETTERS.index(t.strip()[0].lower()) for _, t in words])
    t0 = time.perf_counter()

    def fit() -> dict[str, torch.Tensor]:
        p = fit_letter_probes(pa.acts[:n_train], labels[:n_train], len(LETTERS), cfg.probe_l2)
        return {"W": p.W, "b": p.b, "trained": p.trained}

    # the probe is a deterministic function of the activations, the split and the L2: cached with them
    probe_key = pipe.cache_key("letter-probe", pa.key, str(n_train), str(cfg.probe_l2), PROBE_VERSION)
    found, _ = pipe.cached_tensors("letter-probe", probe_key, fit, valid=lambda t: t["W"].shape[0] == len(LETTERS))
    probe = LetterProbe(found["W"], found["b"], found["trained"].bool())
    scores = probe.scores(pa.acts[n_train:])
    y_test = labels[n_train:]
    probe_f1 = [f1(scores[:, c] > 0, y_test == c) for c in range(len(LETTERS))]
    t_probe = time.perf_counter() - t0
    return Task(
        words,
        labels,
        n_train,
        pa.acts,
        pa.key,
        probe,
        scores,
        probe_f1,
        model.tokenizer.decode(rows[n_train][1:]),
        pipe.counters.position_forward_batches - before_batches,
        len(vocab),
        {"prompts_s": t_prompts, "activations_s": t_acts, "letter_probe_s": t_probe},
    )


def output_pipeline(pipe: ActivationPipeline, hook: str) -> ActivationPipeline:
    """A pipeline at a transcoder's output hook on ``pipe``'s model and token set (memoised in ``pipe``):
    its absorption task reads the output activation at the same prompts (prefix passes only)."""
    return pipe.shared(
        f"output-pipeline:{hook}",
        lambda: ActivationPipeline(pipe.model, pipe.tokens, hook, pipe.batch_size, pipe.use_cache, progress=False),
    )


# -- per SAE -----------------------------------------------------------------------------------------


def encode_sparse(sae: Any, label: str, x: torch.Tensor, chunk: int, device: torch.device) -> torch.Tensor:
    """``sae.encode(x)`` as a sparse COO ``[n, d_sae]`` float32 matrix, ``chunk`` rows at a time (the
    dense output never exceeds ``chunk x d_sae`` floats); one-line errors for a bad shape or NaN."""
    d_sae = int(sae.d_sae)
    idx, val = [], []
    for s in range(0, x.shape[0], chunk):
        with torch.no_grad():
            z = sae.encode(x[s : s + chunk].to(device))
        if tuple(z.shape) != (min(chunk, x.shape[0] - s), d_sae):
            raise SaebenchError(f"SAE {label}: encode gave shape {list(z.shape)}; expected [n, {d_sae}]")
        if not bool(torch.isfinite(z).all()):
            raise SaebenchError(f"SAE {label} produced NaN/Inf latents on absorption prompts; check its weights")
        nz = z.float().cpu().nonzero()
        idx.append(nz.T + torch.tensor([[s], [0]]))
        val.append(z.float().cpu()[nz[:, 0], nz[:, 1]])
    shape = (x.shape[0], d_sae)
    return torch.sparse_coo_tensor(torch.cat(idx, 1), torch.cat(val), shape, check_invariants=True).coalesce()


def dense_rows(z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return z.index_select(0, rows).to_dense()


def word_steps(n_tps: list[int]) -> list[float]:
    """How much one scored word moves a mean over letters of per-letter means: ``1 / (n_c · L)``."""
    return [1.0 / (n * len(n_tps)) for n in n_tps if n > 0]


def rule_entry(mode: str, norms: tuple[float, float] | None) -> dict[str, Any]:
    """``details.contribution_rule``: the rule used and the decoder rows' norms in model units."""
    entry: dict[str, Any] = {"rule": CONTRIBUTION_RULES[mode], "decoder_row_norms": norms}
    if norms is not None and (abs(norms[0] - 1) > 1e-3 or abs(norms[1] - 1) > 1e-3):
        entry["note"] = (
            f"decoder rows are not unit-norm in model units (norms {norms[0]:.3g}-{norms[1]:.3g}): "
            + ("SAEBench's a*cos is applied to the SAE as given, as SAEBench does for a custom SAE object (it folds "
               "the norms into the encoder only for SAELens SAEs); mode=variant uses a*(d.p)"
               if mode == "saebench" else "SAEBench's a*cos would scale each contribution by 1/norm; not used here")
        )  # fmt: skip
    return entry


class AbsorptionEvaluator:
    """``--evals absorption``: see module doc."""

    name = "absorption"
    needs: frozenset[str] = frozenset()
    Config = AbsorptionConfig
    metrics = METRICS

    def preflight(self, cfg: EvalConfig) -> None:
        assert isinstance(cfg, AbsorptionConfig)
        split_template(cfg.prompt_template)
        if not 0 < cfg.train_frac < 1 or cfg.icl_examples < 0 or cfg.max_k < 1 or cfg.token_chunk < 1:
            raise SaebenchError(
                "absorption: need 0 < train_frac < 1, icl_examples >= 0, max_k >= 1 and token_chunk >= 1; "
                "fix the --set values"
            )
        if cfg.n_words is not None and cfg.n_words < 4:
            raise SaebenchError(f"absorption.n_words {cfg.n_words} is too small; use at least a few hundred")
        sizes = (cfg.max_k_value, cfg.k_sparse_probe_batch_size, cfg.k_sparse_probe_num_epochs, cfg.llm_batch_size,
                 cfg.eval_k_sparse_probe_batch_size, cfg.min_feats_for_eval)  # fmt: skip
        if cfg.mode == "saebench" and (min(sizes) < 1 or (cfg.vocab_size is not None and cfg.vocab_size < 100)):
            raise SaebenchError(
                "absorption mode=saebench: max_k_value, batch sizes, epochs and min_feats_for_eval must be >= 1 and "
                "vocab_size >= 100 (or null: the whole vocabulary); fix the --set values"
            )

    def prepare(self, pipe: ActivationPipeline, cfg: EvalConfig, seed: int) -> None:
        """Prompts, activations and the letter probes, once for every SAE at this hook."""
        assert isinstance(cfg, AbsorptionConfig)
        self.preflight(cfg)
        if cfg.mode == "saebench":
            from saebench.evaluators.absorption_saebench import prepare

            prepare(pipe, cfg, seed)
        else:
            prepare_task(pipe, cfg, seed)

    def run(self, ctx: EvalContext, cfg: EvalConfig) -> EvalOutput:
        assert isinstance(cfg, AbsorptionConfig)
        self.preflight(cfg)
        if cfg.mode == "saebench":
            if not ctx.pipeline.target(ctx.sae, ctx.sae_name).is_input:
                raise SaebenchError(
                    f"absorption mode=saebench is SAEBench's procedure for an SAE reconstructing the hook it reads; "
                    f"{ctx.sae_name} is a transcoder: score it with the default mode (drop --set absorption.mode)"
                )
            from saebench.evaluators.absorption_saebench import run

            return run(ctx, cfg)
        from saebench.evaluators.absorption_saebench import naming

        task = prepare_task(ctx.pipeline, cfg, ctx.seed)
        inputs = None
        target = ctx.pipeline.target(ctx.sae, ctx.sae_name)
        if not target.is_input:  # a transcoder: the task at its output hook, latents from its input's task
            task_in, task = task, prepare_task(output_pipeline(ctx.pipeline, target.hook), cfg, ctx.seed)
            if task.words != task_in.words or task.n_train != task_in.n_train:  # same seed, same prompts
                raise SaebenchError("absorption: the output hook's task has other words than the input's; report this")
            inputs = task_in.acts
            ctx.notes.append(
                f"absorption (transcoder): letter probes, probe projections and decoder rows at the output hook "
                f"{target.hook}; latents encoded from {ctx.pipeline.hook} at the same words"
            )
        sc = score_sae(task, ctx.sae, ctx.sae_name, cfg, ctx.model.device, inputs)
        scored = [r for r in sc.letters if r["scored"]]
        metrics: dict[str, Any] = {
            "probe_f1": mean_defined(task.probe_f1),
            "n_letters_scored": len(scored),
            "n_probe_true_positives": sum(r["n_probe_true_positives"] for r in scored),
            "n_full_absorption": sum(r["n_full_absorption"] for r in scored),
            "n_words_train": task.n_train,
            "n_words_test": len(task.words) - task.n_train,
        }
        samples: dict[str, Samples] = {}
        if len(scored) >= cfg.min_letters:
            samples[VARIANT_UNIT] = sc.samples
        else:
            ctx.notes.append(
                f"absorption: only {len(scored)} letter(s) reach probe F1 > {cfg.min_probe_f1} (need "
                f"{cfg.min_letters}); the model's first-letter knowledge at this hook is too weak to score "
                "absorption (raise absorption.n_words, or lower absorption.min_letters)"
            )
        if sc.decoder_source.startswith("W_dec (normalised"):
            ctx.notes.append("absorption: decode is not affine in the latents; contributions use W_dec's units")
        steps = word_steps([r["n_probe_true_positives"] for r in scored])
        details = {
            "letters": sc.letters,
            "naming": naming(cfg),
            "resolution": {
                h: resolution_entry(h, "word", steps, MIN_EFFECT, f"over {len(scored)} letters")
                for h in ("absorption_rate", "full_absorption_rate")
            },  # fmt: skip
            "contribution_rule": {**rule_entry("variant", sc.decoder_norms), "decoder_source": sc.decoder_source},
            "vocabulary_words": task.n_vocab,
            "example_prompt": task.example_prompt,
            "decoder_source": sc.decoder_source,
            "l1_iterations": sc.l1_iterations,
            "model_forward_batches": task.forward_batches,
        }
        return EvalOutput(metrics, details, samples=samples, timing={**task.timing, **sc.timing})


@dataclass
class Scored:
    """One SAE's absorption results: per-letter rows, the per-letter samples, and bookkeeping."""

    letters: list[dict[str, Any]]
    samples: Samples
    decoder_source: str
    l1_iterations: int
    timing: dict[str, float]
    decoder_norms: tuple[float, float] | None = None


def score_sae(
    task: Task, sae: Any, label: str, cfg: AbsorptionConfig, device: Any = "cpu", inputs: torch.Tensor | None = None
) -> Scored:
    """Main latents, splitting and absorption of one SAE on a prepared task (module doc). ``inputs``:
    what the SAE encodes at the task's words when that is not ``task.acts`` (a transcoder: the task,
    its probe and the decoder rows at the output hook, the latents from the input hook's activations
    at the same words)."""
    enc_in = task.acts if inputs is None else inputs
    from saebench.probes.absorption import absorption_scores, k_sparse_f1, l1_probe, rank_latents, split_features
    from saebench.probes.geometry import decoder_directions

    n_train = task.n_train
    t0 = time.perf_counter()
    dec, dec_source = decoder_directions(sae)
    directions = task.probe.directions()  # [26, d] float64
    dec_proj = dec.double() @ directions.T  # [d_sae, 26]: d_i · p̂
    dec_cos = dec_proj / dec.double().norm(dim=1).clamp_min(1e-12)[:, None]
    z_train = encode_sparse(sae, label, enc_in[:n_train], cfg.token_chunk, device)
    z_test = encode_sparse(sae, label, enc_in[n_train:], cfg.token_chunk, device)
    t_encode = time.perf_counter() - t0
    t0 = time.perf_counter()
    y_train, y_test = task.labels[:n_train], task.labels[n_train:]
    W, G, l1_iters = l1_probe(z_train, y_train, len(LETTERS), cfg.l1, cfg.l1_max_iter, cfg.l1_tol)
    t_l1 = time.perf_counter() - t0
    t0 = time.perf_counter()
    letters: list[dict[str, Any]] = []
    for c, letter in enumerate(LETTERS):
        row: dict[str, Any] = {
            "letter": letter,
            "probe_f1": task.probe_f1[c],
            "n_train": int((y_train == c).sum()),
            "n_test": int((y_test == c).sum()),
            "scored": False,
        }
        letters.append(row)
        if row["n_train"] == 0 or row["n_test"] == 0:
            continue
        ranked = rank_latents(W[c], G[c], cfg.max_k)
        f1s, idxs = k_sparse_f1(z_train, y_train == c, z_test, y_test == c, ranked)
        main = split_features(f1s, idxs, cfg.f1_jump)
        row.update(
            {
                "main_latents": main,
                "num_split_features": len(main),
                "main_f1": f1s[len(main) - 1] if main else None,
                "f1_by_k": [round(v, 6) for v in f1s],
                "ranked_latents": ranked,
                "l1_weights": [round(float(W[c, i]), 6) for i in ranked],
            }
        )
    t_ksparse = time.perf_counter() - t0

    t0 = time.perf_counter()
    ids, frac_col, full_col, split_col, f1_col = [], [], [], [], []
    test_words = task.words[n_train:]
    for c, row in enumerate(letters):
        if task.probe_f1[c] <= cfg.min_probe_f1 or "main_latents" not in row:
            continue
        tp = ((y_test == c) & (task.test_scores[:, c] > 0)).nonzero().squeeze(1)
        row["n_probe_true_positives"] = int(tp.numel())
        if tp.numel() == 0 or tp.numel() < cfg.min_true_positives:
            row["not_scored"] = f"{tp.numel()} probe true positive(s), fewer than min_true_positives"
            continue
        res = absorption_scores(
            task.acts[n_train:][tp],
            dense_rows(z_test, tp),
            directions[c],
            dec_proj[:, c],
            dec_cos[:, c],
            row["main_latents"],
        )
        full = res.full.nonzero().squeeze(1)
        row.update(
            {
                "scored": True,
                "mean_absorption_fraction": float(res.fraction.mean()),
                "full_absorption_rate": float(res.full.double().mean()),
                "n_full_absorption": int(res.full.sum()),
                "n_partial_absorption": int(((res.fraction > 0) & ~res.full).sum()),
                "absorbed": [
                    {
                        "word": test_words[int(tp[j])][1],
                        "token_id": test_words[int(tp[j])][0],
                        "latent": int(res.top_latent[j]),
                        "share": round(float(res.top_proj[j] / res.probe_proj[j]), 4),
                    }
                    for j in full[: cfg.n_absorbed_reported].tolist()
                ],
            }
        )
        tokens = ",".join(str(test_words[int(j)][0]) for j in tp)
        ids.append(f"{LETTERS[c]}@{hashlib.sha256(f'{task.acts_key}|{tokens}'.encode()).hexdigest()[:12]}")
        frac_col.append([round(float(v), 8) for v in res.fraction])
        full_col.append([int(v) for v in res.full])
        split_col.append(row["num_split_features"])
        f1_col.append(row.get("main_f1"))
    t_absorb = time.perf_counter() - t0

    samples = Samples(
        VARIANT_UNIT,
        ids,
        {
            "absorption_fraction": frac_col,
            "full_absorption": full_col,
            "num_split_features": split_col,
            "main_f1": f1_col,
        },
    )
    timing = {"sae_encode_s": t_encode, "l1_probe_s": t_l1, "k_sparse_s": t_ksparse, "absorption_s": t_absorb}
    norms = dec.double().norm(dim=1)
    return Scored(letters, samples, dec_source, l1_iters, timing, (float(norms.min()), float(norms.max())))
