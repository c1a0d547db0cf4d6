"""Token sets: fixed shape, BOS first, seeded, train/eval disjoint, local files via datasets."""

from __future__ import annotations

import pytest

from saebench.data import _in_split, _sae_probes_docs, build_token_set
from saebench.errors import SaebenchError


def test_token_set_shape_bos_and_seed(model):
    a = build_token_set(model.tokenize, model.bos_id, 300, 32, seed=1)
    b = build_token_set(model.tokenize, model.bos_id, 300, 32, seed=1)
    c = build_token_set(model.tokenize, model.bos_id, 300, 32, seed=2)
    assert a.tokens.shape == (10, 32)  # ceil(300 / 32) contexts
    assert (a.tokens[:, 0] == model.bos_id).all()
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    meta = a.meta()
    assert meta["corpus"] == "sae-probes" and meta["seed"] == 1 and meta["n_tokens"] == 320


def test_train_and_eval_documents_are_disjoint():
    eval_docs = set(_sae_probes_docs("eval", 0))
    train_docs = _sae_probes_docs("train", 0)
    assert len(eval_docs) > 1000 and len(train_docs) > 8 * len(eval_docs)
    assert not eval_docs.intersection(train_docs[:5000])
    assert all(_in_split(d, "eval") for d in list(eval_docs)[:100])


def test_local_text_file_corpus(model, tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(f"Document number {i} talks about apples and pears." for i in range(50)))
    ts = build_token_set(model.tokenize, model.bos_id, 64, 16, seed=0, corpus=str(path))
    assert ts.tokens.shape == (4, 16) and ts.corpus == str(path)


def test_too_small_corpus_and_bad_corpus(model, tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("just a few words\n")
    with pytest.raises(SaebenchError, match="lower --tokens"):
        build_token_set(model.tokenize, model.bos_id, 10_000, 32, seed=0, corpus=str(path))
    with pytest.raises(SaebenchError, match="neither 'sae-probes'"):
        build_token_set(model.tokenize, model.bos_id, 64, 32, seed=0, corpus=str(tmp_path / "nope.txt"))
