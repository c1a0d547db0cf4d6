"""Token sets record each context's source document (the independent unit of core's intervals).
A toy tokenizer whose ids name their document, a local corpus file: no model."""

from __future__ import annotations

import hashlib
from collections import Counter

from saebench.data import build_token_set

BOS = 0


def _tokenize(text: str) -> list[int]:
    """``docN w w w ...`` -> ids N*1000 + 1, N*1000 + 2, ... (one per word; the id names the doc)."""
    words = text.split()
    n = int(words[0][3:])
    return [n * 1000 + i + 1 for i in range(len(words))]


def test_each_context_is_labelled_with_the_document_holding_most_of_its_tokens(tmp_path):
    lengths = [5, 40, 3, 17, 60, 8, 25, 2, 33, 12] * 3
    texts = [f"doc{i} " + " ".join(["w"] * (n - 1)) for i, n in enumerate(lengths)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(texts) + "\n")
    ts = build_token_set(_tokenize, BOS, 256, 16, seed=3, corpus=str(path))
    assert ts.doc_ids is not None and len(ts.doc_ids) == ts.tokens.shape[0] == 16
    hashes = {i: hashlib.sha256(t.encode()).hexdigest()[:12] for i, t in enumerate(texts)}
    owner_of_bos = None
    for row, label in zip(ts.tokens.tolist(), ts.doc_ids, strict=True):
        owners = []
        for tok in row[1:]:  # position 0 is the context's own BOS
            if tok == BOS:
                owners.append(owner_of_bos)  # a separator counts with the document it ends
            else:
                owner_of_bos = tok // 1000
                owners.append(owner_of_bos)
        counts = Counter(owners)
        top = max(counts.values())
        first_top = next(o for o in owners if counts[o] == top)  # ties: the earlier document
        assert label == hashes[first_top]
    assert ts.meta()["n_docs"] == len(set(ts.doc_ids)) < 16  # long documents fill several contexts


def test_same_corpus_and_seed_give_the_same_document_ids(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(f"doc{i} " + "w " * (i % 7 + 3) for i in range(200)))
    a = build_token_set(_tokenize, BOS, 128, 8, seed=1, corpus=str(path))
    b = build_token_set(_tokenize, BOS, 128, 8, seed=1, corpus=str(path))
    assert a.doc_ids == b.doc_ids and a.fingerprint() == b.fingerprint()
