"""Cross-check saebench's core metrics against SAELens's reference implementation, same inputs.

    python benchmarks/crosscheck_saelens.py [--sae reference] [--tokens 8192] [--threads 2]

The SAE is rebuilt as a SAELens ``TopKSAE`` (``act_scale`` folded into the weights), and both
libraries measure it on the same token ids, through the same transformer-lens model:

- reconstruction: SAELens's streaming ``ExplainedVarianceCalculator`` (pooled, float64; the
  SAELens 6.54 formula DESIGN.md calls right) vs our ``explained_variance``; SAELens's ``mse`` is
  the per-token sum over dimensions, ours the per-element mean, so we compare ours x d_in;
- spliced loss: SAELens's ``get_recons_loss`` (full forward passes with a replacement hook;
  ``ignore_tokens=[BOS]`` keeps position 0 clean, as we do) vs ours (split passes restarting at the
  hook's block): CE clean, CE spliced over the predictions made at positions 1..T-2, and
  KL(clean || spliced) over positions 1..T-1.

For an exact comparison, BOS ids inside contexts (our document separator) are replaced by a
newline token, so the only BOS is at position 0 in both protocols. The zero-ablation scores are
cross-checked against SAEBench (``crosscheck_saebench.py``), whose convention SAELens shares.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch


def saelens_topk(sae: Any) -> Any:
    """Our native TopK SAE as a SAELens TopKSAE with the activation scale folded in."""
    from sae_lens import TopKSAE, TopKSAEConfig

    s = float(sae.cfg.act_scale)
    cfg = TopKSAEConfig(
        d_in=sae.d_in, d_sae=sae.d_sae, k=int(sae.cfg.k), apply_b_dec_to_input=sae.cfg.apply_b_dec_to_input
    )
    theirs = TopKSAE(cfg)
    with torch.no_grad():
        theirs.W_enc.copy_(sae.W_enc * s)
        theirs.b_enc.copy_(sae.b_enc)
        theirs.W_dec.copy_(sae.W_dec / s)
        theirs.b_dec.copy_(sae.b_dec / s)
    return theirs.eval()


def crosscheck(
    model: Any, sae: Any, hook: str, tokens: torch.Tensor, batch_size: int
) -> dict[str, tuple[float, float]]:
    """``{metric: (saebench, sae_lens)}`` on the same tokens (see module doc)."""
    from sae_lens.evals import ExplainedVarianceCalculator, get_recons_loss
    from sae_lens.training.activation_scaler import ActivationScaler

    from saebench import evaluate
    from saebench.data import TokenSet

    newline = model.tokenize("\n")[-1]
    tokens = tokens.clone()
    body = tokens[:, 1:]
    body[body == model.bos_id] = newline
    ts = TokenSet(tokens, "crosscheck", "-", 0)

    ours_metrics = _ours(model, sae, hook, ts, batch_size, evaluate)
    theirs = saelens_topk(sae)
    scaler = ActivationScaler()
    ev = ExplainedVarianceCalculator()
    mse_sum, n_tok = 0.0, 0
    ce_clean, ce_spliced, kl = [], [], []
    for s in range(0, tokens.shape[0], batch_size):
        batch = tokens[s : s + batch_size]
        with torch.no_grad():
            _, cache = model.model.run_with_cache(batch, names_filter=[hook])
            x = cache[hook][:, 1:].reshape(-1, sae.d_in)
            xhat = theirs.decode(theirs.encode(x))
        ev.add_batch(sae_output=xhat, hidden_acts=x)
        mse_sum += float((x - xhat).pow(2).sum(-1).double().sum())
        n_tok += x.shape[0]
        m = get_recons_loss(
            theirs,
            model.model,
            scaler,
            batch,
            compute_kl=True,
            compute_ce_loss=True,
            ignore_tokens=[model.bos_id],
            hook_name=hook,
        )
        ce_clean.append(m["ce_loss_without_sae"][:, 1:].double())
        ce_spliced.append(m["ce_loss_with_sae"][:, 1:].double())
        kl.append(m["kl_div_with_sae"][:, 1:].double())
    return {
        "explained_variance": (ours_metrics["explained_variance"], ev.compute()),
        "mse_per_token_sum": (ours_metrics["mse"] * sae.d_in, mse_sum / n_tok),
        "ce_loss_without_sae": (ours_metrics["ce_loss_without_sae"], float(torch.cat(ce_clean).mean())),
        "ce_loss_with_sae": (ours_metrics["ce_loss_with_sae"], float(torch.cat(ce_spliced).mean())),
        "kl": (ours_metrics["kl"], float(torch.cat(kl).mean())),
    }


def _ours(model: Any, sae: Any, hook: str, ts: Any, batch_size: int, evaluate: Any) -> dict[str, Any]:
    """Our core metrics on exactly these token ids."""
    run = evaluate(sae, model=model, hook=hook, token_set=ts, batch_size=batch_size, progress=False, use_cache=False)
    return run.metrics["core"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sae", default="reference")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--ctx-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from saebench.data import build_token_set
    from saebench.loading import load_sae
    from saebench.models import load_model

    model = load_model()
    loaded = load_sae(args.sae)
    ts = build_token_set(model.tokenize, model.bos_id, args.tokens, args.ctx_len, seed=0)
    rows = crosscheck(model, loaded.sae, loaded.hook_name, ts.tokens, args.batch_size)
    print(f"SAE {loaded.name}, {ts.n_tokens} tokens, ctx {args.ctx_len}, threads {torch.get_num_threads()}")
    print(f"{'metric':22s} {'saebench':>14s} {'sae_lens':>14s} {'abs diff':>10s}")
    for k, (a, b) in rows.items():
        print(f"{k:22s} {a:14.8f} {b:14.8f} {abs(a - b):10.2e}")


if __name__ == "__main__":
    main()
