"""Token sets: fixed shape, BOS first, seeded, train/eval disjoint, local files via datasets."""

from __future__ import annotations

import pytest

from saebench.data import _in_split, _sae_probes_docs, build_token_set, check_corpus
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


def _char_tokens(text: str) -> list[int]:
    """A model-free tokenizer (one id per character) for tests of corpus handling."""
    return [ord(c) % 1000 + 1 for c in text]


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("junk.txt", bytes(range(256)) * 64, "looks binary"),
        ("empty.txt", b"", "is empty"),
        ("latin1.txt", "caf\xe9 cr\xe8me br\xfbl\xe9e\n".encode("latin-1") * 20, "is not UTF-8"),
        ("broken.jsonl", b'{"text": "fine"}\n{"text": unterminated\n', "could not be read as json"),
        ("nulls.jsonl", b'{"text": null}\n{"text": 3}\n', "holds int values, not strings"),
        ("wrong.jsonl", b'{"body": "a document"}\n' * 5, "no 'text' column"),
        ("notparquet.parquet", b"PAR1 but not really", "not a readable parquet file"),
        ("notes.docx", b"whatever", "use .txt"),
    ],
)
def test_every_bad_corpus_is_one_line(tmp_path, name, content, needle):
    """A corpus file that cannot hold documents is refused by a one-line SaebenchError naming it
    and the fix (issue 24: random bytes ended in two tracebacks)."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SaebenchError, match=needle) as exc:
        build_token_set(_char_tokens, 0, 64, 16, seed=0, corpus=str(path))
    assert "\n" not in str(exc.value) and name in str(exc.value)


def test_parquet_without_a_text_column_is_refused_before_any_model(tmp_path):
    pd = pytest.importorskip("pandas")
    path = tmp_path / "docs.parquet"
    pd.DataFrame({"body": ["a document", "another one"]}).to_parquet(path)
    with pytest.raises(SaebenchError, match=r"no 'text' column \(columns: body\)"):
        check_corpus(str(path))
    pd.DataFrame({"text": ["a document about apples " * 5] * 20}).to_parquet(path)
    check_corpus(str(path))  # a good one passes
    assert build_token_set(_char_tokens, 0, 64, 16, seed=0, corpus=str(path)).tokens.shape == (4, 16)
