"""``ravel``: ours against SAEBench 0.6.0's own RAVEL code, same prompts, pairs, SAE and model, timed.

    OMP_NUM_THREADS=1 python benchmarks/ravel.py [--sae /work/zoo/topk-2304-k32] [--entities 60]
        [--pairs 32] [--batch 8] [--epochs 2] [--lr 1e-3]

Needs ``sae-bench==0.6.0`` (``bash setup.sh --crosscheck``). Both sides run in this process on one
thread, on the embedded SmolLM2-135M-Instruct: ours through transformer-lens (our split passes),
SAEBench's through the transformers model the embedded weights are converted from (SAEBench's
RAVEL is written for transformers models). We build the task once (our prompts, knowledge filter
and pairs) and hand SAEBench's functions exactly those token rows, entity positions, first answer
tokens, labels and pair order:

1. **knowledge filter** — SAEBench's ``generate_batched`` (6 greedy tokens, KV cache, left padding)
   + ``evaluate_completion`` on every candidate prompt, against ours (``greedy`` with the early
   verdict): the verdicts must agree prompt by prompt; both timed;
2. **latent selection** — SAEBench's ``train_mdbm`` on dataloaders built by its
   ``create_dataloader_from_pairs`` from our train pairs in our order, against our
   ``train_mask``: the mask logits and the selected latents (logit > 0) are compared;
3. **scores** — SAEBench's ``generate_batched_interventions`` with its trained MDBM on its
   validation loader, against our ``score_pairs`` with our mask: per attribute cause and
   isolation scores; both sides' per-SAE work (2 + 3) is timed.

Two shims, changing no arithmetic: SAEBench's ``get_module`` knows Gemma-2 and GPT-NeoX only (we
return the Llama decoder layer), and its hooks expect a decoder layer to return a tuple, which
transformers 5 no longer does (the hook sees ``(output,)`` and its result is unwrapped). Its
SAE must carry ``cfg.hook_layer`` and ``cfg.d_sae`` (a view of ours). Prints a table row for
docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import torch

HOOK = "blocks.6.hook_resid_post"


class _Handle:
    def __init__(self, h: Any) -> None:
        self.h = h

    def remove(self) -> None:
        self.h.remove()


class _TupleLayer:
    """SAEBench's view of a transformers-5 decoder layer: forward hooks see ``(output,)``."""

    def __init__(self, layer: torch.nn.Module) -> None:
        self.layer = layer

    def register_forward_hook(self, fn: Any) -> _Handle:
        def wrapped(module: Any, inputs: Any, output: Any) -> Any:
            if isinstance(output, tuple):
                return fn(module, inputs, output)
            out = fn(module, inputs, (output,))
            return out[0] if isinstance(out, tuple) else out

        return _Handle(self.layer.register_forward_hook(wrapped))


@contextlib.contextmanager
def saebench_on_llama() -> Iterator[None]:
    """SAEBench's activation helpers pointed at a Llama model's decoder layers (module doc)."""
    import sae_bench.sae_bench_utils.activation_collection as ac

    saved = ac.get_module
    ac.get_module = lambda model, layer: _TupleLayer(model.model.layers[layer])  # type: ignore[assignment]
    try:
        yield
    finally:
        ac.get_module = saved  # type: ignore[assignment]


class _SaeView(torch.nn.Module):
    """Our SAE with the ``cfg`` fields SAEBench's MDBM reads."""

    def __init__(self, sae: Any, layer: int) -> None:
        super().__init__()
        self.sae = sae
        self.cfg = SimpleNamespace(hook_layer=layer, d_sae=int(sae.d_sae))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.sae.encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.sae.decode(z)


def _formatted(task: Any, pairs: list[Any]) -> list[tuple[Any, ...]]:
    """Our pairs as SAEBench's ``create_dataloaders`` formats them (negative positions, labels)."""
    out = []
    for p in pairs:
        b, s = task.prompts[p.base], task.prompts[p.source]
        out.append((list(b.tokens), list(s.tokens), None, None, b.position - len(b.tokens),
                    s.position - len(s.tokens), b.first_token, p.target_token, b.text, p.label))  # fmt: skip
    return out


def saebench_filter(hf: Any, tok: Any, prompts: list[Any], n_new: int, batch: int) -> tuple[list[bool], float]:
    """SAEBench's completions and answer check on our candidate prompts; verdicts and seconds."""
    from sae_bench.evals.ravel.generation import generate_batched
    from sae_bench.evals.ravel.validation import evaluate_completion

    t0 = time.perf_counter()
    texts, _ = generate_batched(hf, tok, [list(p.tokens) for p in prompts], None, n_new, batch, True)
    ok = [bool(evaluate_completion(p.text, p.label, t)) for p, t in zip(prompts, texts, strict=True)]
    return ok, time.perf_counter() - t0


def saebench_sae(hf: Any, tok: Any, folder: str, task: Any, sae: Any, cfg: Any, layer: int) -> dict[str, Any]:
    """SAEBench's MDBM and intervention scores per cause attribute on our pairs; masks and seconds."""
    import sae_bench.evals.ravel.intervention as intervention
    import sae_bench.evals.ravel.main as sb_main
    import sae_bench.evals.ravel.mdbm as mdbm
    from sae_bench.evals.ravel.eval_config import RAVELEvalConfig

    from saebench.evaluators.ravel import scored_val

    sb_cfg = RAVELEvalConfig(model_name=folder, llm_batch_size=cfg.llm_batch_size, learning_rate=cfg.learning_rate,
                             num_epochs=cfg.num_epochs, n_generated_tokens=cfg.n_generated_tokens)  # fmt: skip
    view = _SaeView(sae, layer)
    out: dict[str, Any] = {"masks": {}, "scores": {}}
    torch.set_grad_enabled(True)
    t0 = time.perf_counter()
    with saebench_on_llama(), contextlib.redirect_stdout(sys.stderr):
        for split in task.splits:
            train = sb_main.create_dataloader_from_pairs(_formatted(task, split.train), hf, sb_cfg)
            val = sb_main.create_dataloader_from_pairs(_formatted(task, scored_val(split.val, cfg)), hf, sb_cfg)
            m = mdbm.train_mdbm(hf, tok, sb_cfg, view, train, val, verbose=False)
            iso, cause = intervention.generate_batched_interventions(hf, m, tok, val, cfg.n_generated_tokens)
            out["masks"][split.attribute] = m.binary_mask.detach().float().cpu()
            out["scores"][split.attribute] = {"cause_score": cause, "isolation_score": iso}
    out["seconds"] = time.perf_counter() - t0
    return out


def ours_sae(pipe: Any, task: Any, sae: Any, cfg: Any) -> dict[str, Any]:
    """Our MDBM and scores per cause attribute on the same pairs; masks and seconds."""
    from saebench.evaluators.ravel import score_pairs, scored_val, train_mask

    out: dict[str, Any] = {"masks": {}, "scores": {}}
    t0 = time.perf_counter()
    for split in task.splits:
        mask = train_mask(pipe, task, sae, split.train, cfg)
        val = scored_val(split.val, cfg)
        ok = score_pairs(pipe, task, sae, mask, val, cfg)
        c = [o for p, o in zip(val, ok, strict=True) if p.counted_as == "cause"]
        i = [o for p, o in zip(val, ok, strict=True) if p.counted_as == "isolation"]
        out["masks"][split.attribute] = mask
        out["scores"][split.attribute] = {
            "cause_score": sum(c) / max(1, len(c)),
            "isolation_score": sum(i) / max(1, len(i)),
        }
    out["seconds"] = time.perf_counter() - t0
    return out


def compare_masks(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Agreement of two mask-logit vectors: max |difference|, and the selected sets (logit > 0)."""
    sa, sb = set(torch.nonzero(a > 0).flatten().tolist()), set(torch.nonzero(b > 0).flatten().tolist())
    union = sa | sb
    return {"max_abs_diff": float((a - b).abs().max()), "n_ours": len(sa), "n_theirs": len(sb),
            "jaccard": len(sa & sb) / len(union) if union else 1.0}  # fmt: skip


def run(sae_path: str, entities: int, pairs: int, batch: int, epochs: int, lr: float) -> dict[str, Any]:
    """The whole comparison (module doc); returns every number printed."""
    from saebench.data import build_token_set
    from saebench.evaluators.ravel import RavelConfig, build_prompts, make_task
    from saebench.loading import load_sae
    from saebench.models import load_embedded_hf, load_model
    from saebench.pipeline import ActivationPipeline

    model = load_model()
    sae = load_sae(sae_path).sae.eval()
    layer = int(HOOK.split(".")[1])
    cfg = RavelConfig(n_entities=entities, num_pairs_per_attribute=pairs, llm_batch_size=batch, num_epochs=epochs,
                      learning_rate=lr)  # fmt: skip
    ts = build_token_set(model.tokenize, model.bos_id, 1024, 128, seed=0)  # the quick profile: 8 x 128 tokens a batch
    pipe = ActivationPipeline(model, ts, HOOK, batch_size=8, progress=False)
    t0 = time.perf_counter()
    task = make_task(pipe, cfg, 0)
    t_ours_filter = task.timing["ravel_filter_s"]
    t_task = time.perf_counter() - t0
    hf, tok = load_embedded_hf()
    hf.eval()
    cands = build_prompts(model, cfg)
    sb_ok, t_sb_filter = saebench_filter(hf, tok, cands, cfg.n_generated_tokens, 64)
    # our verdict on every candidate prompt (the filter's own, recomputed: make_task keeps only the survivors)
    from saebench.pipeline.interventions import greedy
    from saebench.probes.ravel import completion_correct, completion_decided

    gen, ver = greedy(pipe, [p.tokens for p in cands], cfg.n_generated_tokens,
                      lambda r, s: completion_decided(cands[r].label, s))  # fmt: skip
    ours_ok = [v if v is not None else completion_correct(p.label, model.tokenizer.decode(g))
               for p, g, v in zip(cands, gen, ver, strict=True)]  # fmt: skip
    theirs = saebench_sae(hf, tok, str(hf.name_or_path), task, sae, cfg, layer)
    ours = ours_sae(pipe, task, sae, cfg)
    res = {
        "prompts": len(cands), "filter_agree": sum(a == b for a, b in zip(ours_ok, sb_ok, strict=True)),
        "kept_ours": sum(ours_ok), "kept_theirs": sum(sb_ok), "t_filter_ours": t_ours_filter,
        "t_filter_theirs": t_sb_filter, "t_task_ours": t_task, "t_sae_ours": ours["seconds"],
        "t_sae_theirs": theirs["seconds"], "entities": task.filter["surviving_entities"],
        "masks": {a: compare_masks(ours["masks"][a], theirs["masks"][a]) for a in ours["masks"]},
        "scores": {a: {"ours": ours["scores"][a], "theirs": theirs["scores"][a]} for a in ours["scores"]},
        "val_pairs": {s.attribute: len(s.val) for s in task.splits},
    }  # fmt: skip
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sae", default="/work/zoo/topk-2304-k32")
    ap.add_argument("--entities", type=int, default=60)
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    r = run(a.sae, a.entities, a.pairs, a.batch, a.epochs, a.lr)
    print(f"knowledge filter: {r['filter_agree']}/{r['prompts']} verdicts agree (kept: ours {r['kept_ours']}, "
          f"SAEBench {r['kept_theirs']}); {r['entities']} entities survive")  # fmt: skip
    for attr, m in r["masks"].items():
        s = r["scores"][attr]
        print(f"{attr}: mask logits max |diff| {m['max_abs_diff']:.2e}, selected ours {m['n_ours']} / SAEBench "
              f"{m['n_theirs']}, Jaccard {m['jaccard']:.4f}; cause ours {s['ours']['cause_score']:.4f} SAEBench "
              f"{s['theirs']['cause_score']:.4f}; isolation ours {s['ours']['isolation_score']:.4f} SAEBench "
              f"{s['theirs']['isolation_score']:.4f}")  # fmt: skip
    fo, ft = r["t_filter_ours"], r["t_filter_theirs"]
    so, st = r["t_sae_ours"], r["t_sae_theirs"]
    print(f"knowledge filter: SAEBench {ft:.1f} s, ours {fo:.1f} s, ratio {ft / fo:.2f}")
    print(f"per SAE (MDBM + scores): SAEBench {st:.1f} s, ours {so:.1f} s, ratio {st / so:.2f}")
    tt = r["t_task_ours"]  # our filter + the pairs (the prompts' states come from the filter's first pass)
    print(f"total: SAEBench {ft + st:.1f} s, ours {tt + so:.1f} s, ratio {(ft + st) / (tt + so):.2f}")


if __name__ == "__main__":
    main()
