"""The split pass on every transformer-lens family we claim, without the hub.

Small random-weight ``HookedTransformer`` models are built from configs for GPT-2 (LayerNorm,
learned positions), GPT-NeoX / Pythia (parallel attention + MLP, partial rotary), Gemma-2 (RMS
norm before and after each sublayer, attention-score and logit soft-capping, alternating local /
global attention, GQA) and a GQA Qwen2 (Llama-style RMS, rotary, gated SiLU MLP, q/k/v biases).
At each supported hook kind:

- prefix + suffix equals the model's own full forward with the same hook (identity, and an edit
  of the activation) to 1e-5 in the logits;
- the core oracles hold end to end through ``evaluate``: an identity SAE gives ΔCE 0 and KL 0,
  FVU 0 and a CE-loss score of 1.

Soft caps are set small and weights drawn large enough that the caps bind (a cap applied in the
wrong place would move the logits far beyond 1e-5); the local window (8) is shorter than the
context (24), so local and global layers differ.
"""

from __future__ import annotations

import pytest
import torch
from conftest import Identity

from saebench import evaluate
from saebench.data import TokenSet
from saebench.models import SubjectModel

HOOK_KINDS = ("hook_resid_pre", "hook_resid_post", "hook_mlp_out", "attn.hook_z", "hook_attn_out")
COMMON = dict(d_model=32, d_head=8, n_heads=4, n_layers=3, n_ctx=64, d_vocab=97, d_mlp=64, seed=0)


def _cfg(family: str):
    from transformer_lens import HookedTransformerConfig

    if family == "gpt2":
        extra = dict(
            act_fn="gelu_new",
            normalization_type="LN",
            positional_embedding_type="standard",
            original_architecture="GPT2LMHeadModel",
        )
    elif family == "neox":
        extra = dict(
            act_fn="gelu",
            normalization_type="LN",
            positional_embedding_type="rotary",
            rotary_dim=2,  # Pythia rotates a quarter of each head (here 2 of 8 dims)
            parallel_attn_mlp=True,
            original_architecture="GPTNeoXForCausalLM",
        )
    elif family == "gemma2":
        extra = dict(
            act_fn="gelu_pytorch_tanh",
            normalization_type="RMS",
            positional_embedding_type="rotary",
            rotary_dim=8,
            gated_mlp=True,
            n_key_value_heads=2,
            use_normalization_before_and_after=True,
            attn_scores_soft_cap=2.0,
            output_logits_soft_cap=3.0,
            attn_types=["global", "local", "global"],
            window_size=8,
            final_rms=True,
            original_architecture="Gemma2ForCausalLM",
        )
    elif family == "qwen2":
        extra = dict(
            act_fn="silu",
            normalization_type="RMS",
            positional_embedding_type="rotary",
            rotary_dim=8,
            rotary_base=1e6,
            gated_mlp=True,
            n_key_value_heads=2,
            final_rms=True,
            original_architecture="Qwen2ForCausalLM",
        )
    else:
        raise ValueError(family)
    return HookedTransformerConfig(**COMMON, **extra, device="cpu", dtype=torch.float32)


def build_model(family: str, dtype: torch.dtype = torch.float32) -> SubjectModel:
    """A random-weight ``HookedTransformer`` of ``family`` wrapped as a tokenizer-less SubjectModel."""
    import warnings

    from transformer_lens import HookedTransformer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(_cfg(family), tokenizer=None, move_to_device=False)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            elif name.endswith(".w"):  # norm scales
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    if dtype != torch.float32:
        model = model.to(dtype, print_details=False)
    return SubjectModel(f"random-{family}", model, tokenizer=None, bos_id=0)


def random_tokens(n_seq: int = 8, ctx_len: int = 24, vocab: int = 97, seed: int = 0) -> TokenSet:
    g = torch.Generator().manual_seed(seed)
    toks = torch.randint(1, vocab, (n_seq, ctx_len), generator=g)
    toks[:, 0] = 0  # BOS first, as in every token set
    toks[:, ctx_len // 2] = 0  # and a document separator mid-context
    return TokenSet(toks, "random", "-", seed)


FAMILIES = ("gpt2", "neox", "gemma2", "qwen2")


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request):
    return build_model(request.param)


@pytest.mark.parametrize("kind", HOOK_KINDS)
def test_prefix_plus_suffix_equals_full_forward(family_model, kind):
    m = family_model
    hook = f"blocks.1.{kind}"
    site = m.hook_site(hook)
    toks = random_tokens().tokens[:3]
    with torch.no_grad():
        full = m.model.run_with_hooks(toks, fwd_hooks=[(hook, lambda a, hook: a)])
        edited_full = m.model.run_with_hooks(toks, fwd_hooks=[(hook, lambda a, hook: 0.5 * a + 0.25)])
    state = m.prefix(toks, site)
    acts = m.hook_acts(state, site)
    assert acts.ndim == 3  # per-head hooks arrive flattened
    if kind == "attn.hook_z":
        assert acts.shape[-1] == m.model.cfg.n_heads * m.model.cfg.d_head
    assert (m.suffix(state, site) - full).abs().max().item() < 1e-5
    assert (m.suffix(state, site, acts.clone()) - full).abs().max().item() < 1e-5
    edited = m.suffix(state, site, 0.5 * acts + 0.25)
    assert (edited - edited_full).abs().max().item() < 1e-5
    assert (edited_full - full).abs().max().item() > 1e-2  # the edit matters: the comparison has teeth
    # final_resid + unembed (used by the ablation evaluator) reproduces the logits, soft cap included
    resid = m.final_resid(state, site, acts.clone())
    assert (m.unembed(resid) - full).abs().max().item() < 1e-5


def test_soft_caps_bind_on_gemma2():
    m = build_model("gemma2")
    with torch.no_grad():
        logits = m.model(random_tokens().tokens[:2])
    assert logits.abs().max().item() > 2.0  # near the cap of 3: the cap is active, not a no-op
    assert logits.abs().max().item() < 3.0


@pytest.mark.parametrize("kind", HOOK_KINDS)
def test_identity_sae_oracles_at_each_hook_kind(family_model, kind, tmp_path):
    m = family_model
    hook = f"blocks.1.{kind}"
    width = m.model.cfg.n_heads * m.model.cfg.d_head if kind == "attn.hook_z" else m.d_model
    run = evaluate(
        Identity(width), model=m, hook=hook, token_set=random_tokens(), batch_size=4, progress=False, use_cache=False
    )
    core = run.metrics["core"]
    assert core["delta_ce"] == 0.0 and core["kl"] == 0.0
    assert core["fvu"] == 0.0 and core["ce_loss_score"] == pytest.approx(1.0, abs=1e-12)
    assert core["ce_loss_with_ablation"] != core["ce_loss_without_sae"]  # the ablation really changes the prediction


def test_bfloat16_model_keeps_float64_statistics():
    """--dtype bfloat16 on CPU: a float32 SAE on bf16 activations runs, statistics stay float64 and
    the identity oracle still holds exactly (the splice path is dtype-consistent)."""
    from saebench.pipeline import ActivationPipeline
    from saebench.pipeline.splice import splice_stats
    from saebench.sae import NativeSAE, SAEConfig

    m = build_model("qwen2", dtype=torch.bfloat16)
    pipe = ActivationPipeline(m, random_tokens(), "blocks.1.hook_resid_post", 4, use_cache=False, progress=False)
    sae = NativeSAE(SAEConfig(architecture="topk", d_in=32, d_sae=64, k=4))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)) * 0.2)
    st = splice_stats(pipe, {"topk": sae, "id": Identity(32)})
    top, ident = st["topk"].cols, st["id"].cols
    assert top["sq_err"].dtype == torch.float64 and top["kl_spliced"].dtype == torch.float64
    assert float(ident["kl_spliced"].abs().max()) == 0.0 and torch.equal(ident["ce_spliced"], ident["ce_clean"])
    assert bool(torch.isfinite(top["ce_spliced"]).all()) and float(top["sq_err"].sum()) > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bfloat16_matches_cpu_float32():
    """--device cuda --dtype bfloat16 gives the float32 CPU metrics to bf16 precision."""
    cpu = build_model("gemma2")
    gpu = build_model("gemma2", dtype=torch.bfloat16)
    gpu.model.to("cuda")
    kw = dict(hook="blocks.1.hook_resid_post", token_set=random_tokens(), batch_size=4, progress=False)
    ref = evaluate(Identity(32), model=cpu, use_cache=False, **kw).metrics["core"]
    got = evaluate(Identity(32), model=gpu, device="cuda", dtype="bfloat16", use_cache=False, **kw).metrics["core"]
    assert got["delta_ce"] == 0.0 and got["kl"] == 0.0
    assert got["ce_loss_without_sae"] == pytest.approx(ref["ce_loss_without_sae"], rel=2e-2)


@pytest.mark.parametrize("kind", ("hook_resid_pre", "hook_resid_post"))
def test_zero_ablation_at_a_residual_hook_is_the_same_for_every_context(family_model, kind):
    """The splice loop computes the zero ablation at a residual hook once, on one context of zeros
    (saebench/pipeline/splice.py): exact only if the suffix from a zero state does not depend on the
    tokens. Learned positions (GPT-2), rotary, soft caps, local attention: one context's logits are
    every context's, equal to the per-batch ablation with the real states."""
    m = family_model
    site = m.hook_site(f"blocks.1.{kind}")
    toks = random_tokens().tokens[:3]
    state = m.prefix(toks, site)
    per_batch = m.suffix(state, site, torch.zeros_like(state))
    zeros = torch.zeros(1, *state.shape[1:])
    once = m.suffix(zeros, site, zeros)
    assert (per_batch - once).abs().max().item() < 1e-5
    assert (per_batch[0] - per_batch[1]).abs().max().item() < 1e-5
